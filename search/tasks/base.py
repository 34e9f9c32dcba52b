"""The Task contract: what to compress and the data to judge it on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from search.metrics import DEFAULT_METRIC, OUTPUT_KINDS, Metric, OutputKind

if TYPE_CHECKING:  # torch stays a lazy import so `hwsearch --help` is fast
    import torch
    from torch import nn
    from torch.utils.data import Dataset


@dataclass(frozen=True)
class InputSpec:
    """What a deployer feeds the exported model (normalisation is baked into the graph). A field left at None
    is read from the training data when the Task is made (`resolved`): the first sample's dtype; [0, 1] for
    float inputs, the [min, max] seen in the first samples for integer ones (token ids)."""

    name: str = "input"
    dtype: str | None = None
    value_range: tuple[float, float] | None = None
    normalisation: str | None = None

    def resolved(self, train) -> InputSpec:
        """This spec with its None fields read from `train` (left None when the data cannot be read)."""
        if None not in (self.dtype, self.value_range, self.normalisation):
            return self
        try:
            first = train[0][0]
            dtype = self.dtype or str(getattr(first, "dtype", "float32")).removeprefix("torch.")
        except Exception:  # not a dataset of (input, label): the loader names the problem
            return self
        integer = dtype.startswith(("int", "uint")) or dtype == "bool"
        value_range, normalisation = self.value_range, self.normalisation
        if value_range is None:
            value_range = _observed_range(train) if integer else (0.0, 1.0)
        if normalisation is None:
            normalisation = "none: integer values (token ids) as the model takes them" if integer else RAW_PIXELS
        return InputSpec(self.name, dtype, value_range, normalisation)


RAW_PIXELS = "none: raw pixels scaled to [0, 1]; mean/std are inside the graph"
IMAGE_INPUT = InputSpec(dtype="float32", value_range=(0.0, 1.0), normalisation=RAW_PIXELS)  # the built-ins' input


def _observed_range(train, n: int = 1024) -> tuple[float, float] | None:
    import numpy as np

    try:
        values = [np.asarray(train[i][0]) for i in range(min(n, len(train)))]
        return float(min(v.min() for v in values)), float(max(v.max() for v in values))
    except Exception:
        return None


@dataclass(frozen=True, eq=False)
class Task:
    """A trained teacher plus its data; `input_shape` is one sample without the batch.

    `val` is the selection set: every decision of a study (objective, accuracy floor, refinement,
    front) reads it. `test`, when given, is held out: only the final scoring of the front points reads
    it, once per point. Without `test`, reported accuracies are the selection set's, not a held-out
    estimate (the front and report say so).
    """

    name: str
    teacher: nn.Module
    train: Dataset
    val: Dataset
    input_shape: tuple[int, ...]  # one sample's shape; a model with several inputs: one such tuple per input
    num_classes: int
    test: Dataset | None = None
    class_names: tuple[str, ...] = ()
    # One InputSpec, or one per input (in the order the model's forward takes them) for a model with several.
    input_spec: InputSpec | tuple[InputSpec, ...] = field(default_factory=InputSpec)
    description: str = ""
    # Filled by built-ins: how the teacher was made, for `hwsearch tasks` and manifests.
    teacher_info: dict = field(default_factory=dict)
    # The teacher's training augmentation, (batch, generator) -> batch, for distilling from the live teacher
    # on augmented inputs (None: no augmentation, e.g. token ids).
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    # What val/test judge (per sample, higher is better; its mean is the objective) and what the model's first
    # output is: "classes" (N, C) logits, distilled with a temperature; "regression" (N, D) values, distilled by
    # mean squared error to the teacher's (num_classes is then D, the output width); "tokens" (N, T, V) logits per
    # position (a language model: num_classes is V), targets (N, T) with search.metrics.IGNORE_INDEX where a
    # position is not scored, distilled per token from the live teacher (cached logits would be N x T x V).
    # Metric left None: top-1, NEG_MAE, next-token top-1.
    metric: Metric | None = None
    output_kind: OutputKind = "classes"

    def __post_init__(self) -> None:
        self._name_inputs()
        shapes = self.input_shapes
        if not shapes or any(not shape or any(int(d) <= 0 for d in shape) for shape in shapes):
            raise ValueError(f"Task {self.name!r}: input_shape must be positive ints (one tuple per input for "
                             f"several), got {self.input_shape}")
        if self.output_kind not in OUTPUT_KINDS:
            raise ValueError(f"Task {self.name!r}: output_kind must be one of {', '.join(OUTPUT_KINDS)}, "
                             f"got {self.output_kind!r}")
        if self.metric is None:
            object.__setattr__(self, "metric", DEFAULT_METRIC[self.output_kind])
        elif not isinstance(self.metric, Metric):
            if not callable(self.metric):
                raise ValueError(f"Task {self.name!r}: metric must be a search.Metric or a function (outputs, "
                                 f"targets) -> per-sample scores, got {type(self.metric).__name__}")
            object.__setattr__(self, "metric", Metric(getattr(self.metric, "__name__", "metric"), self.metric))
        least = 1 if self.output_kind == "regression" else 2
        if self.num_classes < least:
            raise ValueError(f"Task {self.name!r}: num_classes must be >= {least} for {self.output_kind} outputs, "
                             f"got {self.num_classes}")

    def _name_inputs(self) -> None:
        """Resolve the input specs from the data (frozen: set once, here). Samples holding several inputs (a
        tuple/list or a dict) get one InputSpec each (names from a dict's keys when none were given) and the
        datasets are viewed so that every sample's inputs are {name: tensor}, in the model's order."""
        from search.tasks.inputs import InputsDataset, NamedInputs, parts, several

        given = self.input_spec if isinstance(self.input_spec, tuple) else (self.input_spec,)
        try:
            first = self.train[0][0]
        except Exception:  # not a dataset of (input, label): the loader names the problem
            first = None
        if not several(first):
            if len(given) != 1:
                raise ValueError(f"Task {self.name!r}: {len(given)} InputSpecs, but a training sample holds one "
                                 "input")
            object.__setattr__(self, "input_spec", given[0].resolved(self.train))
            return
        k = len(parts(first))
        if given == (InputSpec(),):  # nothing said: the dict's names, else input_0, input_1, ...
            names = list(first) if isinstance(first, dict) else [f"input_{i}" for i in range(k)]
            given = tuple(InputSpec(name=str(n)) for n in names)
        names = [g.name for g in given]
        if len(given) != k or len(set(names)) != k:
            raise ValueError(f"Task {self.name!r}: a training sample holds {k} inputs; input_spec needs one "
                             f"InputSpec per input, each with its own name (got {names})")
        for split in ("train", "val", "test"):
            ds = getattr(self, split)
            if ds is not None and not (isinstance(ds, InputsDataset) and list(ds.inputs) == names):
                object.__setattr__(self, split, NamedInputs(ds, names))
        specs = tuple(g.resolved(_OneInput(self.train, g.name)) for g in given)
        object.__setattr__(self, "input_spec", specs)
        if len(self.input_shape) and not isinstance(self.input_shape[0], (tuple, list)):
            raise ValueError(f"Task {self.name!r}: input_shape must hold one shape per input ({k}), got "
                             f"{self.input_shape}")

    @property
    def input_specs(self) -> tuple[InputSpec, ...]:
        """One InputSpec per model input, in the order the model takes them."""
        return self.input_spec if isinstance(self.input_spec, tuple) else (self.input_spec,)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.input_specs)

    @property
    def input_shapes(self) -> tuple[tuple[int, ...], ...]:
        """One sample's shape per input (without the batch dimension)."""
        if len(self.input_specs) > 1:
            return tuple(tuple(int(d) for d in shape) for shape in self.input_shape)
        return (tuple(int(d) for d in self.input_shape),)


class _OneInput:
    """One named input of a dataset whose samples hold {name: tensor}, as (input, label) samples: what
    `InputSpec.resolved` reads."""

    def __init__(self, base, name: str) -> None:
        self.base, self.name = base, name

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i][:2]
        return x[self.name], y
