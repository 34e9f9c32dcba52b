"""Top-1 accuracy of an ONNX file with ONNX Runtime: the one function every score goes through.

Fixed session settings (threads, batch, optimisation level) so that re-evaluating the same file
anywhere in this project gives exactly the same number (export --verify relies on that).
"""

from __future__ import annotations

import os

import numpy as np

EVAL_BATCH = 500
EVAL_THREADS = 2
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
              "tensor(double)": np.float64, "tensor(uint8)": np.uint8}


def onnx_predictions(path: str | os.PathLike, x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = EVAL_THREADS
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.ascontiguousarray(x, dtype=_ORT_TYPES.get(inp.type, np.float32))  # token ids stay integers
    name = inp.name
    preds = [sess.run(None, {name: x[i : i + batch]})[0].argmax(1) for i in range(0, len(x), batch)]
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def onnx_correct(path: str | os.PathLike, x: np.ndarray, y: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """Per sample: 1 where the arg-max class equals the label, else 0 (paired comparisons need it)."""
    y = np.asarray(y)
    if len(y) == 0:
        raise ValueError("accuracy needs at least one sample")
    return (onnx_predictions(path, x, batch) == y).astype(np.int8)


def onnx_accuracy(path: str | os.PathLike, x: np.ndarray, y: np.ndarray, batch: int = EVAL_BATCH) -> float:
    """Share of samples whose arg-max class equals the label."""
    return float(onnx_correct(path, x, y, batch).mean())
