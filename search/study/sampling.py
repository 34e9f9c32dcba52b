"""Space -> Plan: which parameters a trial samples, and the baseline plans enqueued first."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import optuna

from search.config import DeviceProfile, SearchSpace
from search.plan import Plan
from search.study.record import UNIFORM_PREFIX

DROP = 1.0  # a pruning "ratio" of 1.0 removes the whole block (`pruning.depth`)
SEED_STRIDE = 1_000_003  # trials a study may run before its training seeds could meet another study's


def plan_seed(study_seed: int, number: int) -> int:
    """Trial `number`'s training seed, distinct across studies of different `--seed`s. (It was seed + number: seed 1's
    trial 7 then trained exactly as seed 0's trial 8, and a benchmark's two seeds of a row were one.) Seed 0 keeps
    seed = number."""
    return study_seed * SEED_STRIDE + number


def removed_by(prune: Mapping[str, float]) -> tuple[str, ...]:
    """The blocks a Plan.prune removes whole."""
    return tuple(sorted(k for k, r in prune.items() if r >= DROP))


def under(layer: str, blocks: tuple[str, ...]) -> bool:
    return any(layer == b or layer.startswith(b + ".") for b in blocks)


@dataclass(frozen=True)
class SearchLayers:
    """The model's search units, computed once from the teacher (and stored in the study).

    `groups`: {deciding layer: coupled layers} — one ratio per group (coupled layers share channels).
    `blocks`: {block: deciding layers} for `granularity: block`. `quantizable`: layers owning a
    Conv/Gemm/MatMul node in the teacher's ONNX graph (one bit-width each); `quant_blocks`: the same
    layers by block, for the quantization's `granularity: block`. `quant_ops`: each quantizable layer's
    op types, so a layer is offered only the bit-widths the device runs as kernels for all of them.
    """

    groups: dict[str, list[str]] = field(default_factory=dict)
    blocks: dict[str, list[str]] = field(default_factory=dict)
    quantizable: list[str] = field(default_factory=list)
    quant_blocks: dict[str, list[str]] = field(default_factory=dict)
    quant_ops: dict[str, list[str]] = field(default_factory=dict)
    pruning_skipped: str = ""  # why the model has no pruning axis ("" when it has one)
    droppable: list[str] = field(default_factory=list)  # blocks that can be removed whole (`pruning.depth`)

    def to_dict(self) -> dict:
        return {"groups": self.groups, "blocks": self.blocks, "quantizable": self.quantizable,
                "quant_blocks": self.quant_blocks, "quant_ops": self.quant_ops,
                "pruning_skipped": self.pruning_skipped, "droppable": self.droppable}

    @classmethod
    def from_dict(cls, d: dict) -> SearchLayers:
        return cls(groups=d["groups"], blocks=d["blocks"], quantizable=d["quantizable"],
                   quant_blocks=d.get("quant_blocks", {}), quant_ops=d.get("quant_ops", {}),
                   pruning_skipped=d.get("pruning_skipped", ""), droppable=d.get("droppable", []))

    def unit_ratios(self, unit: str, ratios: tuple[float, ...], space: SearchSpace) -> tuple[float, ...]:
        """A pruning unit's choices: the space's ratios, plus 1.0 (remove the block) when `pruning.depth` is
        on and the block can be removed whole."""
        p = space.pruning
        drop = p.depth and p.granularity == "block" and unit in self.droppable
        return (*ratios, DROP) if drop else ratios

    def prune_ratios(self, granularity: str, by_unit: Mapping[str, float]) -> dict[str, float]:
        """Plan.prune from one ratio per unit: each unit's deciding layers at its ratio; a removed block
        (DROP) appears under its own name, its layers not at all."""
        units, out = self.prune_units(granularity), {}
        for unit, r in by_unit.items():
            if r >= DROP:
                out[unit] = DROP
            else:
                out.update(dict.fromkeys(units[unit], r))
        return out

    def summary(self, prune_granularity: str, quant_granularity: str) -> str:
        """One line for the start of a run: how many units each axis searches."""
        prune = (f"pruning skipped ({self.pruning_skipped})" if self.pruning_skipped
                 else f"{len(self.prune_units(prune_granularity))} pruning units")
        return f"search units: {prune}, {len(self.bit_units(quant_granularity))} quantization units"

    def unit_bits(self, members: list[str], bits: tuple[int, ...], profile: DeviceProfile | None) -> tuple[int, ...]:
        """The space's `bits` that the device runs as a real kernel for every op type of `members`."""
        ops = sorted({op for m in members for op in self.quant_ops.get(m, [])})
        if profile is None or not ops:  # a study recorded before op types were: the space's choices
            return bits
        runs = profile.bits(ops)
        return tuple(b for b in bits if b in runs) or (32,)

    def prune_units(self, granularity: str) -> dict[str, list[str]]:
        """{parameter suffix: deciding layers it sets}."""
        if granularity == "block":
            return self.blocks
        return {g: [g] for g in self.groups}

    def bit_units(self, granularity: str) -> dict[str, list[str]]:
        """{parameter suffix: quantizable layers it sets}."""
        if granularity == "block" and self.quant_blocks:
            return self.quant_blocks
        return {q: [q] for q in self.quantizable}


def _float(trial: optuna.Trial, name: str, low: float, high: float, log: bool) -> float:
    if low == high:  # fixed by the space: not a search dimension
        return low
    return trial.suggest_float(name, low, high, log=log)


def sample_plan(trial: optuna.Trial, space: SearchSpace, layers: SearchLayers, bits: tuple[int, ...],
                seed: int, profile: DeviceProfile | None = None) -> Plan:
    """One Plan per trial; enqueued (baseline or refined) trials get their fixed parameters back."""
    d = space.distillation
    temperature = _float(trial, "temperature", d.temperature.low, d.temperature.high, d.temperature.log)
    alpha = _float(trial, "alpha", d.alpha.low, d.alpha.high, False)
    by_unit: dict[str, float] = {}
    ratios = tuple(float(r) for r in space.pruning.ratios)
    for unit in layers.prune_units(space.pruning.granularity):
        choices = layers.unit_ratios(unit, ratios, space)
        by_unit[unit] = choices[0] if len(choices) == 1 else float(trial.suggest_categorical(f"prune.{unit}", choices))
    prune = layers.prune_ratios(space.pruning.granularity, by_unit)
    removed = removed_by(prune)
    plan_bits: dict[str, int] = {}
    for unit, members in layers.bit_units(space.quantization.granularity).items():
        choices = layers.unit_bits(members, bits, profile)
        # Sampled even when its block is removed: a fixed set of parameters keeps the sampler's model simple.
        b = choices[0] if len(choices) == 1 else int(trial.suggest_categorical(f"bits.{unit}", choices))
        for layer in members:
            if not under(layer, removed):
                plan_bits[layer] = b
    return Plan(temperature=temperature, alpha=alpha, prune=prune, bits=plan_bits, seed=plan_seed(seed, trial.number))


def _clamp(v: float, low: float, high: float) -> float:
    return min(max(v, low), high)


def uniform_name(ratio: float, b: int) -> str:
    return f"{UNIFORM_PREFIX}{round(ratio * 100)}-kd-{'int8' if b == 8 else 'fp32'}"


def baseline_params(space: SearchSpace, layers: SearchLayers, bits: tuple[int, ...],
                    profile: DeviceProfile | None = None, uniform_curve: bool = False) -> dict[str, dict]:
    """Parameters of the baselines the front must never lose to, by name (those the space allows).

    teacher-fp32, teacher-int8 (uniform int8 PTQ), prune50-kd-fp32/int8 (uniform 50% pruning + distillation,
    in both precisions: whether int8 pays off once a model is pruned depends on the device; on local-1core it
    does not, 1.57x vs 1.99x). A baseline the space cannot express (no 0.5 ratio, no 8 bits) is left out.
    `uniform_curve`: every other ratio of the space too, in fp32 and int8 (prune25-kd-fp32, prune70-kd-int8, ...):
    the uniform recipe's whole curve, so refinement can retrain the uniform plan beside each searched point it
    refines (search.study.refine) and the front compares like with like.
    """
    d = space.distillation
    common = {}
    if d.temperature.low != d.temperature.high:
        common["temperature"] = _clamp(4.0, d.temperature.low, d.temperature.high)
    if d.alpha.low != d.alpha.high:
        common["alpha"] = _clamp(0.5, d.alpha.low, d.alpha.high)
    ratios = tuple(float(r) for r in space.pruning.ratios)
    units = layers.prune_units(space.pruning.granularity)

    def params(ratio: float, b: int) -> dict | None:
        if (ratio not in ratios) or (b not in bits) or (ratio and not units):  # nothing to prune: no such baseline
            return None
        p = dict(common)
        if len(ratios) > 1:
            p.update({f"prune.{u}": ratio for u in units})
        for unit, members in layers.bit_units(space.quantization.granularity).items():
            choices = layers.unit_bits(members, bits, profile)
            if len(choices) > 1:  # a unit the device runs in one precision only is not a parameter
                p[f"bits.{unit}"] = b if b in choices else 32
        return p

    wanted = {"teacher-fp32": (0.0, 32), "teacher-int8": (0.0, 8), "prune50-kd-fp32": (0.5, 32),
              "prune50-kd-int8": (0.5, 8)}
    if uniform_curve:
        wanted.update({uniform_name(r, b): (r, b) for r in ratios if r > 0 for b in (32, 8)})
    return {name: p for name, (r, b) in wanted.items() if (p := params(r, b)) is not None}
