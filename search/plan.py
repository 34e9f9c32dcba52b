"""Plan: one trial's complete compression recipe, a frozen JSON-serialisable value.

`{temperature, alpha, prune: {layer: ratio}, bits: {layer: 32|16|8|4}, seed}`; layer names are the
PyTorch module names of the user's model. A ratio of 1.0 names a block removed whole (depth: the search's
`pruning.depth`), replaced by the identity. Bits: 32 = float32 (not quantized), 16 = A16W8,
8 = A8W8 (static QDQ, per-channel int8 weights), 4 = int4 weights with 8-bit activations.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from search.compress.bits import VALID_BITS
from search.errors import UserError

if TYPE_CHECKING:  # torch stays lazy: plans are built and read by the CLI too
    from torch import nn

_MAX_LISTED = 40


def _frozen(mapping: Mapping[str, Any], cast) -> Mapping[str, Any]:
    return MappingProxyType({str(k): cast(v) for k, v in sorted(dict(mapping).items())})


@dataclass(frozen=True, eq=False)
class Plan:
    temperature: float
    alpha: float
    prune: Mapping[str, float]
    bits: Mapping[str, int]
    seed: int = 0

    def __post_init__(self) -> None:
        # Read-only, key-sorted copies: a Plan cannot change under a running trial, and two equal
        # plans compare, hash and serialise alike whatever order their dicts were built in.
        object.__setattr__(self, "prune", _frozen(self.prune, float))
        object.__setattr__(self, "bits", _frozen(self.bits, _as_bits))
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "seed", int(self.seed))
        self._check_values()

    def _check_values(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UserError(f"plan: temperature must be a positive number, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"plan: alpha must lie in [0, 1], got {self.alpha}")
        for layer, ratio in self.prune.items():
            if not 0.0 <= ratio <= 1.0:
                raise UserError(f"plan: prune ratio of layer '{layer}' must lie in [0, 1] (1: the block is removed), "
                                f"got {ratio}")
        for layer, b in self.bits.items():
            if b not in VALID_BITS:
                allowed = ", ".join(map(str, VALID_BITS))
                raise UserError(f"plan: bits of layer '{layer}' must be one of {allowed}, got {b}")

    def _key(self) -> tuple:
        return (self.temperature, self.alpha, tuple(self.prune.items()), tuple(self.bits.items()), self.seed)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self):  # MappingProxyType does not pickle; rebuild from plain dicts
        return (Plan.from_dict, (self.to_dict(),))

    def __repr__(self) -> str:
        return (f"Plan(temperature={self.temperature:g}, alpha={self.alpha:g}, prune={dict(self.prune)}, "
                f"bits={dict(self.bits)}, seed={self.seed})")

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "alpha": self.alpha, "prune": dict(self.prune),
                "bits": dict(self.bits), "seed": self.seed}

    def to_json(self, indent: int | None = None) -> str:
        # repr-exact floats: json round-trips them bit for bit.
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "plan") -> Plan:
        if not isinstance(data, Mapping):
            raise UserError(f"{source}: a plan must be a JSON object, got {type(data).__name__}")
        allowed = {"temperature", "alpha", "prune", "bits", "seed"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise UserError(f"{source}: unknown field '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")
        missing = sorted({"temperature", "alpha"} - set(data))
        if missing:
            raise UserError(f"{source}: missing field '{missing[0]}'")
        for name in ("prune", "bits"):
            if not isinstance(data.get(name, {}), Mapping):
                raise UserError(f"{source}: '{name}' must map layer names to values")
        try:
            return cls(temperature=data["temperature"], alpha=data["alpha"], prune=data.get("prune", {}),
                       bits=data.get("bits", {}), seed=data.get("seed", 0))
        except (TypeError, ValueError) as exc:
            raise UserError(f"{source}: {exc}") from exc

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        return cls.from_dict(data, source)

    # -- views ---------------------------------------------------------------------------------
    def summary(self) -> dict[str, float]:
        """Scalars for tables and plots: mean prune ratio, share of quantized layers, T, alpha."""
        ratios = list(self.prune.values())
        bits = list(self.bits.values())
        return {
            "mean_prune": sum(ratios) / len(ratios) if ratios else 0.0,
            "int8_share": sum(b < 32 for b in bits) / len(bits) if bits else 0.0,
            "temperature": self.temperature,
            "alpha": self.alpha,
        }

    def validate_for(self, model: nn.Module, quantizable: Iterable[str] | None = None) -> Plan:
        """Check the layer names against `model`: prune keys must be its Conv/Linear modules, bits
        keys those or any module in `quantizable` (e.g. attention modules owning MatMuls in the
        ONNX graph). Raises UserError naming the unknown layer and the valid names."""
        from torch import nn

        types = (nn.modules.conv._ConvNd, nn.Linear)
        weight_layers = [n for n, m in model.named_modules() if isinstance(m, types)]
        blocks = [n for n, m in model.named_modules() if n and not isinstance(m, types)]
        _check_names("prune", {k: r for k, r in self.prune.items() if r < 1.0}, weight_layers)
        _check_names("prune", {k: r for k, r in self.prune.items() if r >= 1.0}, blocks)
        bit_layers = list(dict.fromkeys([*weight_layers, *(quantizable or ())]))
        _check_names("bits", self.bits, bit_layers)
        return self


def _as_bits(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        raise UserError(f"plan: bits must be one of 32, 16, 8, 4, got {v!r}")
    return int(v)


def _check_names(field: str, mapping: Mapping[str, Any], valid: list[str]) -> None:
    known = set(valid)
    for layer in mapping:
        if layer not in known:
            shown = ", ".join(valid[:_MAX_LISTED])
            more = f" (and {len(valid) - _MAX_LISTED} more)" if len(valid) > _MAX_LISTED else ""
            raise UserError(f"plan: {field}: unknown layer '{layer}'; valid layers: {shown}{more}")
