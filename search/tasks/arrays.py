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


def example_batch(ds, n: int = 1) -> torch.Tensor:
    """The first `n` inputs of a dataset as one tensor in the model's dtype: the example that traces,
    exports and checks a model is the task's own data (random floats would index past an embedding)."""
    x, _ = dataset_arrays(ds, limit=n)  # fewer rows in a tiny dataset: export_onnx repeats them to its batch
    return torch.from_numpy(np.ascontiguousarray(x))


def feed_sample(ds) -> str | None:
    """The measurement feed: the dataset's first input, encoded for the runner and the agent (integer
    inputs must be valid ids). None for a float input too large for the agent's query string: uniform
    [0, 1) values then (a float's value does not change a CPU kernel's speed)."""
    from search.measure.runner import SAMPLE_MAX_CHARS, encode_sample

    x = example_batch(ds, 1)[0].numpy()
    text = encode_sample(x)
    if len(text) <= SAMPLE_MAX_CHARS:
        return text
    if np.issubdtype(x.dtype, np.floating):
        return None
    raise ValueError(f"one input is {x.nbytes} bytes of {x.dtype}: too large to send as the measurement feed")


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
