"""Resolve `--task`: a built-in name, `path/to/file.py:function` or `package.module:function`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from search.errors import UserError
from search.tasks.base import Task
from search.tasks.builtin import BUILTIN_TASKS, load_builtin

# The user's module or task function failing in any way, sys.exit() included, is bad input (one line, exit 2);
# only Ctrl-C goes through.
_USER_CODE_ERRORS = (Exception, SystemExit)


def _describe(e: BaseException) -> str:
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r})"
    return f"{type(e).__name__}: {e}"


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
        except _USER_CODE_ERRORS as e:
            sys.modules.pop(mod_name, None)
            raise UserError(f"--task {spec!r}: importing {path} failed: {_describe(e)}") from None
    else:
        try:
            module = importlib.import_module(target)
        except _USER_CODE_ERRORS as e:
            raise UserError(f"--task {spec!r}: cannot import module {target}: {_describe(e)}") from None
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
    except SystemExit as e:
        raise UserError(f"--task {spec!r}: the task function {_describe(e)}") from None
    except Exception as e:
        raise UserError(f"--task {spec!r}: the task function raised {type(e).__name__}: {e}") from None
    if not isinstance(task, Task):
        raise UserError(f"--task {spec!r}: the function returned {type(task).__name__}, expected search.Task")
    _check_task(spec, task)
    _unwrap_outputs(spec, task)
    return task


def _unwrap_outputs(spec: str, task: Task) -> None:
    """A teacher returning a dict or dataclass holding `logits` is hooked to return that tensor; anything else
    that is not a tensor is a one-line error."""
    import torch

    from search.tasks.inputs import map_inputs
    from search.tasks.outputs import unwrap_logits

    sample = map_inputs(lambda a: torch.as_tensor(a).unsqueeze(0), task.train[0][0])
    try:
        other = unwrap_logits(task.teacher, sample)
    except Exception as e:
        raise UserError(f"--task {spec!r}: the teacher fails on train[0]'s input: {type(e).__name__}: {e}") from None
    if other is not None:
        raise UserError(f"--task {spec!r}: the teacher returns {other}; expected a logits tensor, a tuple of "
                        "tensors (the first is the logits), or a dict or dataclass holding one under 'logits'")


def _check_task(spec: str, task: Task) -> None:
    """The fields the search relies on, checked here so a wrong one is named now, not deep inside a trial."""
    from torch import nn

    from search.tasks.inputs import parts

    def bad(field: str, problem: str) -> UserError:
        return UserError(f"--task {spec!r}: the returned Task's {field} {problem}")

    if not isinstance(task.name, str) or not task.name.strip():
        raise bad("name", f"must be a non-empty string, got {task.name!r}")
    if not isinstance(task.teacher, nn.Module):
        raise bad("teacher", f"must be a torch.nn.Module, got {type(task.teacher).__name__}")
    # `test` is not touched here: only the final scoring of the front reads it.
    for field in ("train", "val"):
        data = getattr(task, field)
        try:
            n = len(data)
            sample = data[0] if n else None
        except Exception as e:
            raise bad(field, f"must be a map-style dataset (len() and [i]), got {type(data).__name__} "
                             f"({type(e).__name__}: {e})") from None
        if n == 0:
            raise bad(field, "is empty")
        if not (isinstance(sample, (tuple, list)) and len(sample) == 2):
            raise bad(f"{field}[0]", f"must be an (input, label) pair, got {type(sample).__name__}")
        several = len(task.input_specs) > 1
        for k, (inp, spec_, want) in enumerate(zip(parts(sample[0]), task.input_specs, task.input_shapes,
                                                    strict=True)):
            which = f"input {spec_.name!r}" if several else "input"
            shape = tuple(getattr(inp, "shape", ()))
            if shape and shape != want:
                where = f"input_shape[{k}]" if several else "input_shape"
                raise bad(f"{field}[0]", f"{which} has shape {shape}, but {where} is {want}")
            dtype = str(getattr(inp, "dtype", "")).removeprefix("torch.")
            if dtype and spec_.dtype is not None and dtype != spec_.dtype:
                raise bad("input_spec.dtype", f"is {spec_.dtype!r} but {field}[0]'s {which} is {dtype} (set "
                                              f"InputSpec(dtype={dtype!r}, value_range=...) to what the model takes)")
