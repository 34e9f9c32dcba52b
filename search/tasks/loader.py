"""Resolve `--task`: a built-in name, `path/to/file.py:function` or `package.module:function`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from search.errors import UserError
from search.tasks.base import Task
from search.tasks.builtin import BUILTIN_TASKS, load_builtin


def _load_callable(spec: str):
    target, _, func_name = spec.rpartition(":")
    if not target or not func_name:
        raise UserError(f"--task {spec!r}: expected a built-in ({', '.join(BUILTIN_TASKS)}), "
                        "path/to/file.py:function or package.module:function")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise UserError(f"--task {spec!r}: file {path} not found")
        mod_name = f"hwsearch_user_task_{abs(hash(str(path.resolve())))}"
        mspec = importlib.util.spec_from_file_location(mod_name, path)
        if mspec is None or mspec.loader is None:
            raise UserError(f"--task {spec!r}: {path} is not a Python file")
        module = importlib.util.module_from_spec(mspec)
        sys.modules[mod_name] = module
        try:
            mspec.loader.exec_module(module)
        except Exception as e:
            raise UserError(f"--task {spec!r}: importing {path} failed: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise UserError(f"--task {spec!r}: cannot import module {target}: {type(e).__name__}: {e}") from None
    func = getattr(module, func_name, None)
    if func is None or not callable(func):
        raise UserError(f"--task {spec!r}: {target} has no function {func_name!r}")
    return func


def load_task(spec: str, *, data_dir: str | Path | None = None, results_dir: str | Path = "results",
              train_on: str = "auto", progress: bool = True) -> Task:
    """A Task from a built-in name or a user function returning a Task."""
    if spec in BUILTIN_TASKS:
        return load_builtin(spec, data_dir=data_dir, results_dir=results_dir, train_on=train_on, progress=progress)
    func = _load_callable(spec)
    try:
        task = func()
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"--task {spec!r}: the task function raised {type(e).__name__}: {e}") from None
    if not isinstance(task, Task):
        raise UserError(f"--task {spec!r}: the function returned {type(task).__name__}, expected search.Task")
    return task
