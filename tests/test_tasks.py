"""Tasks: built-in teachers meet their accuracy, the cache is reused and verified, user tasks load."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import RESULTS, run_cli

from search.errors import UserError
from search.tasks import Task, load_task
from search.tasks.builtin import BUILTIN_TASKS
from search.tasks.teacher import evaluate


def test_digits_teacher_accuracy_and_shape(digits_task: Task):
    assert digits_task.input_shape == (1, 8, 8) and digits_task.num_classes == 10
    x, y = digits_task.val.tensors
    assert len(x) == 360
    acc = evaluate(digits_task.teacher, x, y)
    assert acc >= 0.95, acc
    assert digits_task.teacher_info["val_accuracy"] == pytest.approx(acc)
    convs = [n for n, m in digits_task.teacher.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) >= 8
    assert any(m.groups > 1 for m in digits_task.teacher.modules() if isinstance(m, torch.nn.Conv2d))


def test_cached_teacher_loads_without_retraining(digits_task: Task):
    meta_files = list((RESULTS / "teachers").glob("digits-*.json"))
    assert meta_files
    before = {p: p.stat().st_mtime_ns for p in (RESULTS / "teachers").glob("digits-*")}
    t0 = time.perf_counter()
    again = load_task("digits", results_dir=RESULTS, progress=False)
    assert time.perf_counter() - t0 < 10
    after = {p: p.stat().st_mtime_ns for p in (RESULTS / "teachers").glob("digits-*")}
    assert before == after  # nothing rewritten: no retraining happened
    x = digits_task.val.tensors[0][:16]
    assert torch.equal(again.teacher(x), digits_task.teacher(x))


def test_corrupt_cache_is_detected_and_rebuilt(tmp_path: Path, digits_task: Task, capsys):
    import shutil

    teachers = tmp_path / "teachers"
    teachers.mkdir()
    for p in (RESULTS / "teachers").glob(f"digits-{digits_task.teacher_info['key']}.*"):
        shutil.copy(p, teachers / p.name)
    weights = next(teachers.glob("*.pt"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the tensor data
    weights.write_bytes(bytes(data))
    task = load_task("digits", results_dir=tmp_path, progress=False)
    assert "unusable" in capsys.readouterr().err
    meta = json.loads(next(teachers.glob("*.json")).read_text())
    assert meta["sha256"] != digits_task.teacher_info["sha256"] or meta["created"] > digits_task.teacher_info["created"]
    assert task.teacher_info["val_accuracy"] >= 0.95
    # a half-written file (truncated) is caught too, and never loaded
    from search.tasks.models import DIGITS_SPEC
    from search.tasks.teacher import load_cached

    weights.write_bytes(weights.read_bytes()[:100])
    assert load_cached(weights, weights.with_suffix(".json"), DIGITS_SPEC) is None
    assert "checksum mismatch" in capsys.readouterr().err


USER_TASK = '''
import torch
from torch.utils.data import TensorDataset
from search import Task

def make():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 4, 4, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    return Task(name="toy", teacher=net, train=TensorDataset(x, y), val=TensorDataset(x, y),
                input_shape=(3, 4, 4), num_classes=3)

def not_a_task():
    return {"teacher": None}

def boom():
    raise RuntimeError("dataset server down")
'''


def test_user_task_from_file(tmp_path: Path):
    f = tmp_path / "mytask.py"
    f.write_text(USER_TASK)
    task = load_task(f"{f}:make")
    assert isinstance(task, Task) and task.name == "toy" and task.input_shape == (3, 4, 4)
    with pytest.raises(UserError, match="returned dict, expected search.Task"):
        load_task(f"{f}:not_a_task")
    with pytest.raises(UserError, match="raised RuntimeError: dataset server down"):
        load_task(f"{f}:boom")
    with pytest.raises(UserError, match="has no function 'missing'"):
        load_task(f"{f}:missing")
    with pytest.raises(UserError, match="not found"):
        load_task(f"{tmp_path / 'nope.py'}:make")
    with pytest.raises(UserError, match="expected a built-in"):
        load_task("cifar10")
    with pytest.raises(UserError, match="cannot import module"):
        load_task("no_such_pkg.tasks:make")


def test_user_task_from_module(tmp_path: Path, monkeypatch):
    (tmp_path / "mytasks_pkg").mkdir()
    (tmp_path / "mytasks_pkg" / "__init__.py").write_text(USER_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_task("mytasks_pkg:make").num_classes == 3


def test_fashion_missing_data_is_a_clear_error(tmp_path: Path):
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        load_task("fashion-mnist", data_dir=tmp_path, results_dir=tmp_path)


def test_fashion_idx_reader_on_real_files():
    from search.tasks.data import FASHION_DEFAULT_DIR, load_fashion_mnist

    if not (FASHION_DEFAULT_DIR / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make test installs it as root)")
    d = load_fashion_mnist()
    assert d["train_x"].shape == (60000, 1, 28, 28) and d["val_x"].shape == (10000, 1, 28, 28)
    assert d["train_x"].min() >= 0.0 and d["train_x"].max() <= 1.0
    assert sorted(set(d["val_y"].tolist())) == list(range(10))


def test_tasks_command_lists_builtins(digits_task: Task):
    r = run_cli("tasks", "--results", str(RESULTS))
    assert r.returncode == 0, r.stderr
    for name in BUILTIN_TASKS:
        assert name in r.stdout
    acc = digits_task.teacher_info["val_accuracy"] * 100
    assert f"top-1 {acc:.2f}%" in r.stdout
