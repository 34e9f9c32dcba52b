"""Top-1 accuracy of an ONNX file with ONNX Runtime: the one function every score goes through.

Fixed session settings (threads, batch, optimisation level) so that re-evaluating the same file
anywhere in this project gives exactly the same number (export --verify relies on that).
"""

from __future__ import annotations

import os

import numpy as np

EVAL_BATCH = 500
EVAL_THREADS = 2


def onnx_predictions(path: str | os.PathLike, x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = EVAL_THREADS
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.ascontiguousarray(x, dtype=np.float32)
    preds = [sess.run(None, {name: x[i : i + batch]})[0].argmax(1) for i in range(0, len(x), batch)]
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def onnx_accuracy(path: str | os.PathLike, x: np.ndarray, y: np.ndarray, batch: int = EVAL_BATCH) -> float:
    """Share of samples whose arg-max class equals the label."""
    y = np.asarray(y)
    if len(y) == 0:
        raise ValueError("accuracy needs at least one sample")
    return float((onnx_predictions(path, x, batch) == y).mean())
