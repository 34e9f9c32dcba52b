"""Tasks: built-in teachers meet their accuracy, the cache is reused and verified, user tasks load."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RESULTS, run_cli

from search.errors import UserError
from search.tasks import Task, load_task
from search.tasks.builtin import BUILTIN_TASKS
from search.tasks.data import load_digits_split, stratified_split
from search.tasks.teacher import evaluate
from search.utils.files import sha256_file


def test_digits_teacher_accuracy_and_shape(digits_task: Task):
    assert digits_task.input_shape == (1, 8, 8) and digits_task.num_classes == 10
    x, y = digits_task.val.tensors
    assert len(x) == 270 and len(digits_task.test.tensors[0]) == 359 and len(digits_task.train) == 1168
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
    # rebuilt: from the verified shipped teacher (or retrained), never the flipped bytes
    meta = json.loads(next(teachers.glob("*.json")).read_text())
    assert meta["sha256"] == sha256_file(weights) and weights.read_bytes() != bytes(data)
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


def test_shipped_teacher_is_verified_and_used_on_a_fresh_clone(tmp_path: Path):
    """No cache (a fresh clone): the shipped teacher is checked and copied into the cache, nothing trains."""
    from search.tasks.teacher import SHIPPED_DIR

    t0 = time.perf_counter()
    task = load_task("digits", results_dir=tmp_path, progress=False)
    assert time.perf_counter() - t0 < 30  # no training run (that takes 15 s idle, minutes on a busy box)
    key = task.teacher_info["key"]
    shipped = json.loads((SHIPPED_DIR / f"digits-{key}.json").read_text())
    assert task.teacher_info == shipped
    assert (tmp_path / "teachers" / f"digits-{key}.pt").read_bytes() == (SHIPPED_DIR / f"digits-{key}.pt").read_bytes()


@pytest.mark.slow  # retrains the digits teacher
@pytest.mark.parametrize("tamper", ["weights", "recipe"])
def test_tampered_shipped_teacher_is_retrained_not_used(tmp_path: Path, tamper: str, capsys):
    import shutil

    from search.tasks.builtin import BUILTIN_TASKS
    from search.tasks.data import fingerprint
    from search.tasks.teacher import SHIPPED_DIR, get_teacher

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for f in SHIPPED_DIR.glob("digits-*"):
        shutil.copy(f, shipped / f.name)
    weights, meta = next(shipped.glob("*.pt")), next(shipped.glob("*.json"))
    if tamper == "weights":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:  # a sidecar whose recipe does not hash to the file's key (e.g. edited by hand)
        m = json.loads(meta.read_text())
        m["recipe"]["epochs"] += 1
        meta.write_text(json.dumps(m))
    b = BUILTIN_TASKS["digits"]
    d = b.load_data(None)
    model, info = get_teacher("digits", b.spec, b.recipe, d, data_fp=fingerprint(d), results_dir=tmp_path / "r",
                              progress=False, shipped=shipped, train_on="cpu")
    err = capsys.readouterr().err
    assert ("unusable" in err) if tamper == "weights" else ("does not match its recipe" in err)
    assert "train_seconds" in info and info["created"] > json.loads(meta.read_text()).get("created", 0)
    assert evaluate(model, d["val_x"], d["val_y"]) >= 0.95


def test_fashion_missing_data_is_a_clear_error(tmp_path: Path):
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        load_task("fashion-mnist", data_dir=tmp_path, results_dir=tmp_path)


def test_fashion_idx_reader_on_real_files():
    from search.tasks.data import FASHION_DEFAULT_DIR, load_fashion_mnist

    if not (FASHION_DEFAULT_DIR / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make test installs it as root)")
    d = load_fashion_mnist()
    assert d["train_x"].shape == (55000, 1, 28, 28) and d["val_x"].shape == (5000, 1, 28, 28)
    assert d["test_x"].shape == (10000, 1, 28, 28)
    assert d["train_x"].min() >= 0.0 and d["train_x"].max() <= 1.0
    assert np.bincount(d["val_y"]).tolist() == [500] * 10  # stratified: 500 of each class
    # val is carved from the training files: the two together are exactly those 60,000 images, once each
    from search.tasks.data import _FASHION_FILES, _find, _read_idx, fashion_data_dir

    full = _read_idx(_find(fashion_data_dir(), _FASHION_FILES["train_x"])).reshape(60000, -1)
    test = _read_idx(_find(fashion_data_dir(), _FASHION_FILES["test_x"])).reshape(10000, -1)
    assert np.array_equal((d["test_x"] * 255).round().astype(np.uint8).reshape(10000, -1), test)
    kept, val = stratified_split(_read_idx(_find(fashion_data_dir(), _FASHION_FILES["train_y"])), 5000)
    assert not set(kept) & set(val) and len(set(kept) | set(val)) == 60000
    assert np.array_equal((d["val_x"] * 255).round().astype(np.uint8).reshape(5000, -1), full[val])
    assert np.array_equal((d["train_x"] * 255).round().astype(np.uint8).reshape(55000, -1), full[kept])


def test_digits_splits_are_disjoint_and_stratified():
    from sklearn.datasets import load_digits

    d = load_digits_split()
    images = load_digits().images.reshape(len(load_digits().images), -1)
    # which original image each split holds (digits has a few duplicate images: match by index sets)
    index = {}
    for i, row in enumerate((images / 16.0).astype(np.float32)):
        index.setdefault(row.tobytes(), []).append(i)
    sets = {}
    for split in ("train", "val", "test"):
        rows = d[f"{split}_x"].reshape(len(d[f"{split}_x"]), -1)
        sets[split] = [index[r.tobytes()] for r in rows]
    flat = {split: {i for ids in v for i in ids} for split, v in sets.items()}
    dup_free = {s: {ids[0] for ids in v if len(ids) == 1} for s, v in sets.items()}
    assert not dup_free["train"] & dup_free["val"] and not dup_free["train"] & dup_free["test"]
    assert not dup_free["val"] & dup_free["test"]
    assert len(flat["train"] | flat["val"] | flat["test"]) == 1797
    assert sum(len(d[f"{s}_y"]) for s in ("train", "val", "test")) == 1797
    for s in ("val", "test"):  # every class in every split
        assert sorted(set(d[f"{s}_y"].tolist())) == list(range(10))


def test_tasks_command_lists_builtins(digits_task: Task):
    r = run_cli("tasks", "--results", str(RESULTS))
    assert r.returncode == 0, r.stderr
    for name in BUILTIN_TASKS:
        assert name in r.stdout
    acc = digits_task.teacher_info["val_accuracy"] * 100
    assert f"top-1 {acc:.2f}%" in r.stdout


def test_the_input_spec_left_out_is_read_from_the_data():
    from torch import nn
    from torch.utils.data import TensorDataset

    from search.tasks.base import IMAGE_INPUT, InputSpec

    ids = TensorDataset(torch.randint(3, 50, (64, 6)), torch.randint(0, 2, (64,)))
    bag = nn.Sequential(nn.Embedding(50, 4), nn.Flatten(), nn.Linear(24, 2))
    task = Task(name="ids", teacher=bag, train=ids, val=ids, input_shape=(6,), num_classes=2)
    spec = task.input_spec
    assert spec.dtype == "int64" and spec.normalisation.startswith("none: integer")
    lo, hi = spec.value_range
    assert (lo, hi) == (float(ids.tensors[0].min()), float(ids.tensors[0].max())) and 3 <= lo <= hi <= 49
    # What is given is kept; the rest is still read.
    given = Task(name="ids", teacher=bag, train=ids, val=ids, input_shape=(6,), num_classes=2,
                 input_spec=InputSpec(name="tokens", value_range=(0, 49)))
    assert (given.input_spec.name, given.input_spec.dtype, given.input_spec.value_range) == ("tokens", "int64", (0, 49))
    pixels = TensorDataset(torch.rand(8, 1, 4, 4), torch.randint(0, 2, (8,)))
    img = Task(name="img", teacher=nn.Flatten(), train=pixels, val=pixels, input_shape=(1, 4, 4), num_classes=2)
    assert img.input_spec == IMAGE_INPUT


OUTPUT_TASKS = '''
from dataclasses import dataclass
import torch
from torch import nn
from torch.utils.data import TensorDataset
from search import Task


@dataclass
class Out:
    logits: torch.Tensor
    hidden: torch.Tensor


class Net(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind, self.fc1, self.fc2 = kind, nn.Linear(16, 64), nn.Linear(64, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        z = self.fc2(h)
        return {"dict": {"logits": z, "hidden": h}, "dataclass": Out(z, h), "tuple": (z, h),
                "scores": {"scores": z}, "mixed": (z, "hidden")}[self.kind]


def make(kind):
    d = TensorDataset(torch.rand(64, 16), torch.randint(0, 3, (64,)))
    return Task(name=kind, teacher=Net(kind), train=d, val=d, input_shape=(16,), num_classes=3)


def as_dict():
    return make("dict")


def as_dataclass():
    return make("dataclass")


def as_tuple():
    return make("tuple")


def as_scores():
    return make("scores")


def as_mixed():
    return make("mixed")
'''


@pytest.mark.parametrize("kind", ["as_dict", "as_dataclass"])
def test_a_teacher_returning_a_dict_or_dataclass_with_logits_is_searched_as_it_is(tmp_path: Path, kind: str):
    import copy

    from search.compress import export_onnx, prune

    (tmp_path / "outs.py").write_text(OUTPUT_TASKS)
    task = load_task(f"{tmp_path / 'outs.py'}:{kind}")
    x = torch.rand(2, 16)
    expected = task.teacher.fc2(torch.relu(task.teacher.fc1(x)))
    assert torch.equal(task.teacher(x), expected)  # the logits tensor, through the hook
    assert torch.equal(copy.deepcopy(task.teacher)(x), expected)  # students are deep copies
    student = prune(task.teacher, x[:1], {"fc1": 0.5}).model
    assert student.fc1.out_features == 32 and student(x).shape == (2, 3)
    export_onnx(student, x, tmp_path / "s.onnx")  # verified against PyTorch's outputs


@pytest.mark.parametrize(("kind", "returns"), [("as_scores", "dict with scores"), ("as_mixed", "tuple")])
def test_a_teacher_returning_something_else_is_a_one_line_error(tmp_path: Path, kind, returns):
    (tmp_path / "outs.py").write_text(OUTPUT_TASKS)
    with pytest.raises(UserError, match=rf"the teacher returns {returns}; expected a logits tensor, a tuple of "
                                        r"tensors \(the first is the logits\), or a dict or dataclass holding one"):
        load_task(f"{tmp_path / 'outs.py'}:{kind}")


def test_a_teacher_returning_a_tuple_of_tensors_keeps_every_output(tmp_path: Path):
    """Several outputs are searched as they are (tests/test_coverage_matrix.py's twohead row goes end to end)."""
    (tmp_path / "outs.py").write_text(OUTPUT_TASKS)
    task = load_task(f"{tmp_path / 'outs.py'}:as_tuple")
    out = task.teacher(torch.rand(2, 16))
    assert isinstance(out, tuple) and [o.shape for o in out] == [(2, 3), (2, 64)]


@pytest.mark.slow
def test_hwsearch_init_writes_a_task_that_runs_as_written(tmp_path: Path):
    r = run_cli("init", str(tmp_path / "mine.py"))
    assert r.returncode == 0 and "--task" in r.stdout, r.stderr
    text = (tmp_path / "mine.py").read_text()
    assert "def make_task() -> Task:" in text and "{filename}" not in text
    again = run_cli("init", str(tmp_path / "mine.py"))
    assert again.returncode == 2 and "already exists; not overwritten" in again.stderr
    study = run_cli("run", "--task", f"{tmp_path / 'mine.py'}:make_task", "--space", "default", "--device",
                    "local-1core", "--trials", "2", "--study", "mine", "--results", str(tmp_path / "results"),
                    "--no-progress")
    assert study.returncode == 0, study.stderr[-2000:]
    assert "study 'mine':" in study.stdout and " complete, 0 failed" in study.stdout
