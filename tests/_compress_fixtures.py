"""Helpers shared by the compression tests: digits arrays, memoised ONNX exports, ORT top-1.

Exports cost ~2 s each, so each architecture is exported once per process into a temporary folder
(removed at exit) and shared by every test file that asks for it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import tempfile
from pathlib import Path

import archs
import numpy as np
import onnx
import onnxruntime as ort
import torch

_TMP = Path(tempfile.mkdtemp(prefix="hwsearch-compress-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run torch on `n` threads: on a busy 2-core box, OpenMP workers of tiny ops spin against
    other processes and a 2-second fine-tune can take a minute."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tmp_dir() -> Path:
    return _TMP


@functools.cache
def digits() -> dict[str, np.ndarray]:
    """scikit-learn digits scaled to [0, 1], [N, 1, 8, 8], a fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    tx, vx, ty, vy = train_test_split(x, d.target.astype(np.int64), test_size=0.2, random_state=0,
                                      stratify=d.target)
    return {"train_x": tx, "train_y": ty, "val_x": vx, "val_y": vy}


def example_input() -> torch.Tensor:
    return torch.from_numpy(digits()["train_x"][:1].copy())


@functools.cache
def arch_export(name: str) -> tuple[torch.nn.Module, Path]:
    """(model, fp32 ONNX path) for a test architecture, exported once per process."""
    from search.compress import export_onnx

    model = archs.build(name)
    return model, export_onnx(model, archs.INPUT_SHAPE, _TMP / f"{name}-fp32.onnx")


def ort_logits(path: str | Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]


def ort_top1(path: str | Path, x: np.ndarray, y: np.ndarray) -> float:
    return float((ort_logits(path, x).argmax(1) == y).mean())


def producers(path: str | Path) -> tuple[dict[str, onnx.NodeProto], dict[str, onnx.NodeProto]]:
    """(tensor -> producing node, node name -> node) of an ONNX file."""
    m = onnx.load(str(path))
    return {o: n for n in m.graph.node for o in n.output}, {n.name: n for n in m.graph.node}
