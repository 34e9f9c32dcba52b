"""Accuracy (top-1, or the task's metric) of an ONNX file with ONNX Runtime: every score goes through here.

Fixed session settings (threads, batch, optimisation level) so that re-evaluating the same file
anywhere in this project gives exactly the same number (export --verify relies on that).
"""

from __future__ import annotations

import os

import numpy as np

from search.metrics import TOP1, Metric

EVAL_BATCH = 500
EVAL_THREADS = 2
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
              "tensor(double)": np.float64, "tensor(uint8)": np.uint8}


def ort_dtype(ort_type: str):
    """The numpy dtype of an ONNX Runtime input type ("tensor(int64)" -> int64; unknown: float32)."""
    return _ORT_TYPES.get(ort_type, np.float32)


def eval_session(path: str | os.PathLike):
    """The evaluation session (fixed threads and settings: the same file scores the same everywhere)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = EVAL_THREADS
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) < EVAL_THREADS:
        # More threads than allowed cores take turns: a spinning thread would hold the core its peer waits for.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _batches(path: str | os.PathLike, x, batch: int, every: bool = False):
    """(start, first output) per batch of `x` (one input's array, or {name: array} for several), in order; with
    `every`, (start, tuple of every output) for a file with several. A language model's (N, T, V) outputs over a
    whole split would not fit in memory, so scoring consumes them batch by batch."""
    from search.tasks.inputs import count, feed, rows

    sess = eval_session(path)
    for i in range(0, count(x), batch):
        outs = sess.run(None, feed(sess, rows(x, slice(i, i + batch))))
        yield i, (tuple(outs) if every and len(outs) > 1 else outs[0])


def onnx_outputs(path: str | os.PathLike, x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """The first output of the ONNX file for every sample of `x`, in order."""
    outs = [out for _, out in _batches(path, x, batch)]
    return np.concatenate(outs) if outs else np.zeros((0,), dtype=np.float32)


def onnx_predictions(path: str | os.PathLike, x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """The arg-max class of every sample."""
    out = onnx_outputs(path, x, batch)
    return out.argmax(1) if len(out) else np.zeros(0, dtype=np.int64)


def onnx_correct(path: str | os.PathLike, x: np.ndarray, y: np.ndarray, batch: int = EVAL_BATCH,
                 metric: Metric = TOP1) -> np.ndarray:
    """Per sample: the task's metric (top-1: 1 where the arg-max class equals the label, else 0); paired
    comparisons need the per-sample values."""
    from search.tasks.inputs import count

    y = np.asarray(y)
    if len(y) == 0:
        raise ValueError("accuracy needs at least one sample")
    return np.concatenate([metric(out, y[i : i + count(out)])
                           for i, out in _batches(path, x, batch, metric.every_output)])


def onnx_accuracy(path: str | os.PathLike, x: np.ndarray, y: np.ndarray, batch: int = EVAL_BATCH,
                  metric: Metric = TOP1) -> float:
    """The metric's mean over the samples (top-1: the share whose arg-max class equals the label)."""
    return float(onnx_correct(path, x, y, batch, metric).mean())
