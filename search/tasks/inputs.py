"""A model's inputs, one or several, as every stage passes them.

One input is a bare tensor or array, as before. Several are a dict {input name: batch}, in the order the model's
`forward` takes them (the task's `InputSpec` names): the names become the ONNX file's input names, so the same
dict feeds ONNX Runtime, and its values, in order, call the PyTorch model. A dataset's sample may hold several
inputs as a tuple/list (in that order) or a dict; `named` turns either into the dict form.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Inputs = Any  # a tensor/array, or {name: tensor/array} for a model with several inputs


def parts(x: Inputs) -> tuple:
    """The inputs in the model's order: the positional arguments of its forward."""
    if isinstance(x, Mapping):
        return tuple(x.values())
    if isinstance(x, (tuple, list)):
        return tuple(x)
    return (x,)


def several(x: Inputs) -> bool:
    return isinstance(x, (Mapping, tuple, list))


def named(x: Inputs, names: Sequence[str]) -> Inputs:
    """`x` in the packed form: a bare tensor for one input, else {name: value} in `names`' order. A dict's
    keys must be `names`; a tuple/list must have one value per name."""
    if not several(x):
        return x
    if isinstance(x, Mapping):
        if list(x) != list(names) and set(x) == set(names):
            return {n: x[n] for n in names}
        if list(x) != list(names):
            raise ValueError(f"inputs named {list(x)}, expected {list(names)}")
        return dict(x)
    if len(x) != len(names):
        raise ValueError(f"{len(x)} inputs, expected {len(names)} ({', '.join(names)})")
    return dict(zip(names, x, strict=True))


def map_inputs(fn: Callable[[Any], Any], x: Inputs) -> Inputs:
    """`fn` applied to each input, the structure kept."""
    if isinstance(x, Mapping):
        return {k: fn(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(fn(v) for v in x)
    return fn(x)


def rows(x: Inputs, index) -> Inputs:
    """The samples `index` (a slice, an index array) of every input."""
    return map_inputs(lambda a: a[index], x)


def count(x: Inputs) -> int:
    """How many samples (the batch dimension of the first input)."""
    return len(parts(x)[0])


def call(model, x: Inputs):
    """The model's forward on `x` (several inputs as positional arguments, in order)."""
    return model(*parts(x))


def traceable(x: Inputs):
    """`x` as torch-pruning's `example_inputs` takes it: a tuple of positional inputs for several (a dict would be
    passed as keyword arguments, by names the forward need not use), the tensor for one."""
    return parts(x) if several(x) else x


def feed(session, x: Inputs) -> dict[str, np.ndarray]:
    """An ONNX Runtime feed of numpy `x`: one input under the session's input name (any name), several by
    their names, each in the dtype the session takes."""
    from search.measure.accuracy import ort_dtype

    specs = session.get_inputs()
    if not several(x):
        return {specs[0].name: np.ascontiguousarray(x, dtype=ort_dtype(specs[0].type))}
    by_name = x if isinstance(x, Mapping) else dict(zip([s.name for s in specs], x, strict=False))
    missing = [s.name for s in specs if s.name not in by_name]
    if missing:
        raise ValueError(f"the ONNX file takes {[s.name for s in specs]}; no value for {missing}")
    return {s.name: np.ascontiguousarray(by_name[s.name], dtype=ort_dtype(s.type)) for s in specs}


def to_numpy(x: Inputs) -> Inputs:
    """Tensors as numpy arrays (floats as float32, ONNX Runtime's input type; integers keep theirs)."""

    def one(a):
        a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
        return a.astype(np.float32, copy=False) if np.issubdtype(a.dtype, np.floating) else a

    return map_inputs(one, x)


def to_torch(x: Inputs) -> Inputs:
    import torch

    return map_inputs(lambda a: torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a, x)


class InputsDataset:
    """A dataset of several named inputs and a target per sample, held as tensors: sample i is
    ({name: inputs[name][i]}, targets[i]). The multi-input counterpart of `TensorDataset` (slices fast)."""

    def __init__(self, inputs: Mapping[str, Any], targets) -> None:
        import torch

        self.inputs = {k: torch.as_tensor(v) for k, v in inputs.items()}
        self.targets = torch.as_tensor(targets)
        sizes = {k: len(v) for k, v in self.inputs.items()}
        if not sizes or len(set(sizes.values())) != 1 or len(self.targets) != next(iter(sizes.values())):
            raise ValueError(f"InputsDataset: every input and the targets need the same length, got {sizes} "
                             f"and {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return {k: v[i] for k, v in self.inputs.items()}, self.targets[i]


class NamedInputs:
    """A view of a dataset whose samples hold several inputs as a tuple/list or a dict: each sample's inputs as
    {name: tensor} in `names`' order (what every stage takes)."""

    def __init__(self, base, names: Sequence[str]) -> None:
        self.base, self.names = base, tuple(names)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i][:2]
        return named(x, self.names), y
