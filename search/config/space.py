"""Search space: the ranges a study samples distillation, pruning and quantization from."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from search.compress.bits import BITS_TO_PRECISION, Bits
from search.config.loader import load_model
from search.config.profile import DeviceProfile
from search.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FloatRange(_Strict):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class TrainBudget(_Strict):
    """How long one distillation runs: exactly one of epochs or steps."""

    epochs: float | None = Field(None, ge=0, le=1000, description="0 = no fine-tuning")
    steps: int | None = Field(None, gt=0, le=10_000_000)
    max_samples: int | None = Field(None, gt=0, description="train on at most this many samples")
    augment: bool = Field(False, description="distil from the live teacher on the task's training augmentation "
                                             "(flips, shifts); false: the teacher's cached logits of the plain "
                                             "inputs, faster. A task without augmentation ignores it")

    @model_validator(mode="after")
    def _one_of(self) -> TrainBudget:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give exactly one of epochs or steps")
        return self

    def draws(self, n_train: int, batch_size: int) -> int:
        """Training samples one distillation with this budget draws, repeats included (distill's arithmetic)."""
        if self.steps is not None:
            return self.steps * batch_size
        pool = min(n_train, self.max_samples or n_train)
        return max(1, math.ceil(self.epochs * pool / batch_size)) * batch_size if self.epochs else 0


class Promote(_Strict):
    """Successive halving before refinement: each latency band's `candidates` best explore points are retrained
    with `budget` (a middle rung), and the band's refinement goes to the best of them on that rung."""

    candidates: int = Field(3, ge=2, le=20, description="explore points promoted per latency band")
    budget: TrainBudget = TrainBudget(epochs=1)


class Distillation(_Strict):
    temperature: FloatRange = FloatRange(low=1.0, high=8.0, log=True)
    alpha: FloatRange = FloatRange(low=0.0, high=0.7)
    budget: TrainBudget = TrainBudget(epochs=1, max_samples=20_000)
    refine: TrainBudget = TrainBudget(epochs=3)
    promote: Promote | None = None  # none: each band's refinement goes to its best explore point
    lr: float = Field(3e-3, gt=0, le=10)
    batch_size: int = Field(128, ge=1, le=65_536)

    @model_validator(mode="after")
    def _ranges(self) -> Distillation:
        if self.temperature.low <= 0:
            raise ValueError("temperature.low must be > 0")
        if not (self.alpha.low >= 0 and self.alpha.high <= 1):
            raise ValueError("alpha must lie within [0, 1]")
        return self


class Pruning(_Strict):
    ratios: tuple[float, ...] = Field((0.0, 0.25, 0.5), min_length=1)
    granularity: Literal["layer", "block"] = "block"
    importance: Literal["l1", "l2", "taylor", "lamp"] = "l2"
    never_prune: tuple[str, ...] = ()
    # Depth: a block whose output has its input's shape (a residual block) may also be removed whole, ratio 1.0
    # in the plan. Only per block: a layer's channels cannot all go.
    depth: bool = False

    @model_validator(mode="after")
    def _ratio_range(self) -> Pruning:
        for r in self.ratios:
            if not 0.0 <= r < 1.0:
                raise ValueError(f"every ratio must lie in [0, 1) (got {r})")
        if self.depth and self.granularity != "block":
            raise ValueError("depth: true removes whole blocks, so it needs granularity: block")
        return self


class Calibration(_Strict):
    samples: int = Field(256, ge=1, le=1_000_000)
    method: Literal["minmax", "entropy", "percentile"] = "minmax"


class Quantization(_Strict):
    bits: tuple[Bits, ...] = Field((32, 8), min_length=1)
    # layer: one bit-width per quantizable layer; block: one per block (fewer dimensions, and no
    # Quantize/Dequantize pair between the layers of a block).
    granularity: Literal["layer", "block"] = "layer"
    calibration: Calibration = Calibration()
    per_channel: bool = True

    @model_validator(mode="after")
    def _unique(self) -> Quantization:
        if len(set(self.bits)) != len(self.bits):
            raise ValueError("bits lists a value twice")
        return self


class Accuracy(_Strict):
    min_accuracy: float | None = Field(None, ge=0, le=1)
    max_drop: float | None = Field(None, ge=0, le=1, description="allowed drop vs the teacher")


class SearchSpace(_Strict):
    name: str = Field("space", min_length=1, max_length=100)
    description: str = ""
    distillation: Distillation = Distillation()
    pruning: Pruning = Pruning()
    quantization: Quantization = Quantization()
    accuracy: Accuracy = Accuracy()

    def bits_for(self, profile: DeviceProfile, source: str = "space") -> tuple[int, ...]:
        """Bit choices the device runs for at least one op type; an error when the space asks for one it
        runs for none. Each layer is then offered the subset its own op types run (`SearchLayers`)."""
        allowed = profile.bits()
        bad = [b for b in self.quantization.bits if b not in allowed]
        if bad:
            raise ConfigError(
                f"{source}: quantization.bits: {bad[0]} needs precision "
                f"{BITS_TO_PRECISION[bad[0]]}, which profile '{profile.name}' runs for no op type "
                f"(allowed bits: {', '.join(map(str, allowed))})"
            )
        return self.quantization.bits


def load_space(path: str | Path) -> SearchSpace:
    """A space file by path, or a shipped one by name (`default`)."""
    from search.config.shipped import resolve

    return load_model(SearchSpace, resolve(path, "space"))
