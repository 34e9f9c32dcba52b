"""A task's datasets as numpy arrays, in the dtype the model takes (float32 pixels, int64 token ids)."""

from __future__ import annotations

import numpy as np
import torch


def _model_dtype(a: np.ndarray) -> np.ndarray:
    """Floats as float32 (ONNX Runtime's input type for them); integer inputs (token ids) keep theirs."""
    return a.astype(np.float32, copy=False) if np.issubdtype(a.dtype, np.floating) else a


def dataset_arrays(ds, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) of a map-style dataset as numpy arrays (TensorDatasets without a copy loop)."""
    tensors = getattr(ds, "tensors", None)
    if tensors is not None and len(tensors) >= 2:
        x, y = tensors[0], tensors[1]
        if limit is not None:
            x, y = x[:limit], y[:limit]
        return _model_dtype(x.numpy()), y.numpy()
    n = len(ds) if limit is None else min(limit, len(ds))
    xs, ys = zip(*(ds[i] for i in range(n)), strict=True)
    return _model_dtype(torch.stack(list(xs)).numpy()), torch.as_tensor(ys).numpy()


def calibration_sample(ds, samples: int, seed: int) -> np.ndarray:
    """A fixed random sample of training inputs for static quantization."""
    n = len(ds)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=min(samples, n), replace=False))
    tensors = getattr(ds, "tensors", None)
    if tensors is not None:
        return _model_dtype(tensors[0][torch.from_numpy(idx)].numpy())
    return _model_dtype(torch.stack([ds[int(i)][0] for i in idx]).numpy())


def inputs_digest(ds) -> str:
    """sha256 of a dataset's inputs, in order: a cache keyed by it is recomputed when the data changes,
    even when its size does not."""
    import hashlib

    h = hashlib.sha256()
    tensors = getattr(ds, "tensors", None)
    if tensors is not None:
        x = tensors[0].contiguous()
        h.update(f"{tuple(x.shape)}{x.dtype}".encode())
        h.update(x.numpy().tobytes())
    else:
        for i in range(len(ds)):
            h.update(torch.as_tensor(ds[i][0]).contiguous().numpy().tobytes())
    return h.hexdigest()
