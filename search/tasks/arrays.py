"""A task's datasets as numpy arrays, in the dtype the model takes (float32 pixels, int64 token ids).

A model with several inputs gets {name: array} wherever one input gets an array (`search.tasks.inputs`)."""

from __future__ import annotations

import numpy as np
import torch

from search.tasks.inputs import InputsDataset, map_inputs, parts, to_numpy


def _stack(samples: list):
    """One batch from a list of per-sample inputs (tensors, or {name: tensor})."""
    first = samples[0]
    if isinstance(first, dict):
        return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in first}
    return torch.stack([torch.as_tensor(s) for s in samples])


def dataset_arrays(ds, limit: int | None = None):
    """(inputs, labels) of a map-style dataset as numpy arrays, inputs as {name: array} for a model with
    several (TensorDatasets and InputsDatasets without a copy loop)."""
    tensors = getattr(ds, "tensors", None)
    if isinstance(ds, InputsDataset):
        tensors = (ds.inputs, ds.targets)
    if tensors is not None and len(tensors) >= 2:
        x, y = tensors[0], tensors[1]
        if limit is not None:
            x, y = map_inputs(lambda a: a[:limit], x), y[:limit]
        return to_numpy(x), y.numpy()
    n = len(ds) if limit is None else min(limit, len(ds))
    xs, ys = zip(*(ds[i][:2] for i in range(n)), strict=True)
    return to_numpy(_stack(list(xs))), torch.stack([torch.as_tensor(v) for v in ys]).numpy()


def example_batch(ds, n: int = 1):
    """The first `n` inputs of a dataset as one tensor (or {name: tensor}) in the model's dtype: the example
    that traces, exports and checks a model is the task's own data (random floats would index past an
    embedding)."""
    x, _ = dataset_arrays(ds, limit=n)  # fewer rows in a tiny dataset: export_onnx repeats them to its batch
    return map_inputs(lambda a: torch.from_numpy(np.ascontiguousarray(a)), x)


def feed_sample(ds) -> str | None:
    """The measurement feed: the dataset's first input, encoded for the runner and the agent (integer
    inputs must be valid ids). None for a float input too large for the agent's query string: uniform
    [0, 1) values then (a float's value does not change a CPU kernel's speed)."""
    from search.measure.runner import SAMPLE_MAX_CHARS, SAMPLE_SEP, encode_sample

    xs = [a[0].numpy() for a in parts(example_batch(ds, 1))]  # several inputs: one sample each, in order
    text = SAMPLE_SEP.join(encode_sample(x) for x in xs)
    if len(text) <= SAMPLE_MAX_CHARS:
        return text
    if all(np.issubdtype(x.dtype, np.floating) for x in xs):
        return None
    raise ValueError(f"one input sample is {sum(x.nbytes for x in xs)} bytes: too large to send as the "
                     "measurement feed")


def calibration_sample(ds, samples: int, seed: int) -> np.ndarray:
    """A fixed random sample of training inputs for static quantization."""
    n = len(ds)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=min(samples, n), replace=False))
    tensors = getattr(ds, "tensors", None)
    if isinstance(ds, InputsDataset):
        tensors = (ds.inputs,)
    if tensors is not None:
        return to_numpy(map_inputs(lambda a: a[torch.from_numpy(idx)], tensors[0]))
    return to_numpy(_stack([ds[int(i)][0] for i in idx]))


def inputs_digest(ds) -> str:
    """sha256 of a dataset's inputs, in order: a cache keyed by it is recomputed when the data changes,
    even when its size does not."""
    import hashlib

    h = hashlib.sha256()
    tensors = getattr(ds, "tensors", None)
    if isinstance(ds, InputsDataset):
        tensors = (ds.inputs,)
    if tensors is not None:
        for x in parts(tensors[0]):
            x = x.contiguous()
            h.update(f"{tuple(x.shape)}{x.dtype}".encode())
            h.update(x.numpy().tobytes())
    else:
        for i in range(len(ds)):
            for x in parts(ds[i][0]):
                h.update(torch.as_tensor(x).contiguous().numpy().tobytes())
    return h.hexdigest()
