"""Structured (channel) pruning with torch-pruning: dependency aware, physically smaller models.

Coupled layers (a residual stream, expand -> depthwise, q/k/v of one attention) share one set of
channels, so they form one torch-pruning *group* and get one width. The ratio of the group's first
layer in model order that the caller names decides it; the others are reported in
`PruneResult.coupled` (`search.compress.prune_graph.prune_groups` lists the groups).
Channel counts are floored to a multiple of `channel_multiple` (fast kernels want round widths)
but never below one multiple; see `expected_channels`. For the q/k/v projections of an attention
module with an int `num_heads`, the ratio removes whole heads (`expected_heads`) and the module's
`num_heads` is updated to match.

Transformers: the student copy has each `nn.MultiheadAttention` split into a `SplitAttention` (same
outputs; children `q_proj`, `k_proj`, `v_proj`, `out_proj`, see `search.compress.attention`), so its heads
prune as hand-written attention does: a ratio on `blocks.0.attn.q_proj` (the group of q/k/v) removes whole
heads and the matching `out_proj` input columns. MLP hidden units prune as any Linear (`fc1`, with `fc2`'s
inputs). The residual stream (patch embedding or token `nn.Embedding`, with every LayerNorm, positional and
cls parameter and block input/output coupled to it) is one group keyed by the embedding. What cannot
prune (the classifier, a per-head attn_mask, one head, an `nn.MultiheadAttention` left whole) is in
`skipped` with the reason.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from collections.abc import Iterable, Mapping
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch_pruning as tp
from torch import nn

from search.compress.attention import SplitAttention, count_attention_ops, split_copy
from search.compress.prune_graph import WEIGHT_TYPES, ChannelGraph, classify
from search.tasks.inputs import call, traceable
from search.tasks.outputs import primary

Importance = Literal["l1", "l2", "taylor", "lamp"]


@dataclass(frozen=True)
class PruneResult:
    model: nn.Module
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    channels: dict[str, int]  # out channels after pruning, every Conv/Linear/Embedding layer
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why it kept its width
    coupled: dict[str, str] = field(default_factory=dict)  # layer -> layer whose ratio set its width
    heads: dict[str, int] = field(default_factory=dict)  # attention module -> num_heads after
    channels_before: dict[str, int] = field(default_factory=dict)  # out channels before, every Conv/Linear/Embedding
    removed: tuple[str, ...] = ()  # blocks replaced by the identity (ratio 1.0 on a block: depth)

    def applied(self, ratios: Mapping[str, float]) -> dict[str, dict]:
        """What was asked and what was removed, per layer named in `ratios`: {layer: {requested, applied,
        channels: [before, after], reason}}. `applied` is the share of output channels actually removed;
        `reason` is set whenever a requested ratio removed nothing or less than asked."""
        out = {}
        for layer, r in ratios.items():
            if layer in self.removed:
                out[layer] = {"requested": float(r), "applied": 1.0, "channels": [None, 0], "removed": True}
                continue
            before, after = self.channels_before.get(layer), self.channels.get(layer)
            applied = 1.0 - after / before if before and after is not None else 0.0
            entry = {"requested": float(r), "applied": round(applied, 6), "channels": [before, after]}
            why = self.skipped.get(layer) or (f"coupled with {self.coupled[layer]}" if layer in self.coupled else None)
            if why and r > 0:
                entry["reason"] = why
            out[layer] = entry
        return out


def expected_channels(channels: int, ratio: float, multiple: int = 1) -> int:
    """Output channels that `prune` leaves for a group of `channels` at `ratio`.

    As torch-pruning's round_to: keep int(C * (1 - ratio)) floored to a multiple; unlike it, a floor
    of zero keeps one multiple (torch-pruning would silently leave such a group whole).
    """
    keep = int(channels * (1.0 - ratio) + 1e-9)  # 100 * 0.71 is 70.99999999999999
    if multiple > 1:
        keep = max(multiple, keep - keep % multiple)
    return min(channels, max(1, keep))


def expected_heads(num_heads: int, ratio: float) -> int:
    """Heads kept in an attention group: int(H * (1 - ratio)), at least one."""
    return max(1, min(num_heads, int(num_heads * (1.0 - ratio) + 1e-9)))


def _importance(kind: Importance):
    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "lamp":
        return tp.importance.LAMPImportance(p=2)
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise ValueError(f"importance must be l1, l2, taylor or lamp, got {kind!r}")


def _count(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    # The attention math of a split nn.MultiheadAttention counts as torch-pruning counts the original's
    # (it resets this mapping after each count).
    tp.utils.op_counter.CUSTOM_MODULES_MAPPING = {SplitAttention: count_attention_ops}
    with torch.no_grad(), redirect_stdout(io.StringIO()):
        macs, params = tp.utils.count_ops_and_params(model, traceable(example_input))
    return int(macs), int(params)


def prune(
    model: nn.Module,
    example_input: torch.Tensor,
    ratios: Mapping[str, float],
    channel_multiple: int = 8,
    importance: Importance = "l2",
    never_prune: Iterable[str] = (),
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> PruneResult:
    """A NEW, physically smaller copy of `model` with each named layer's group pruned by its ratio.
    A ratio of 1.0 on a block (a module that is not itself a weight layer, whose output has its input's shape)
    removes it: it is replaced by the identity, as if its residual branch were zero.

    `calibration` (inputs, labels) feeds the gradient Taylor importance needs; without it the
    example input and the model's own predictions stand in. Layers that cannot be pruned are
    listed in `skipped` with the reason; nothing here raises for a single bad layer.
    """
    scorer = _importance(importance)  # a bad name is the caller's error, not a skipped layer
    student = _student(model)
    macs_before, params_before = _count(student, example_input)
    before = {n: _width(m) for n, m in student.named_modules() if isinstance(m, WEIGHT_TYPES)}
    removed, skipped_blocks = _remove_blocks(student, example_input, ratios)
    ratios = {n: r for n, r in ratios.items()
              if n not in removed and n not in skipped_blocks and not any(n.startswith(b + ".") for b in removed)}
    try:
        g = ChannelGraph(student, example_input)
    except Exception as exc:  # the whole model defeats torch-pruning's tracer: prune nothing
        reason = f"torch-pruning cannot trace the model: {type(exc).__name__}: {exc}"[:300]
        skipped = {n: reason for n, r in ratios.items() if r > 0}
        return PruneResult(student, macs_before, macs_before, params_before, params_before, dict(before), skipped,
                           channels_before=before)
    ok, why = classify(g, never_prune)
    attention = g.attention_groups()
    head_of = {q: a for a, (_, qkv) in attention.items() for q in qkv}
    skipped: dict[str, str] = {}
    coupled: dict[str, str] = {}
    ratio_dict: dict[nn.Module, float] = {}
    planned: dict[nn.Module, int] = {}  # decider -> out channels it should end with
    head_ratio: dict[nn.Module, float] = {}
    num_heads: dict[nn.Module, int] = {}
    for h, qkv in attention.values():
        for q in qkv:
            num_heads[g.modules[q]] = h

    done: set[str] = set()
    for name in sorted(ratios, key=lambda n: g.order.get(n, math.inf)):
        r = float(ratios[name])
        if name in done:
            continue
        if name not in g.modules or not isinstance(g.modules[name], WEIGHT_TYPES):
            skipped[name] = "no Conv/Linear module (or Embedding) of this name"
            continue
        if name not in ok:
            skipped[name] = why.get(name, "not prunable")
            continue
        members = [n for n in g.group_layers(g.out_group(name)) if n in ok] or [name]
        # The first member the caller names decides (that is `name`: names are in model order).
        decider = name
        done.update(members)
        for n in members:
            if n != decider and n in ratios:
                coupled[n] = decider
        if r <= 0.0:
            continue
        m = g.modules[decider]
        if decider in head_of:
            h = attention[head_of[decider]][0]
            keep = expected_heads(h, r)
            if keep == h:
                skipped[decider] = f"ratio {r:g} removes no whole head of {h}"
                continue
            # torch-pruning removes ceil(ratio * H) heads; aim between integers to get exactly H - keep.
            for q in attention[head_of[decider]][1]:  # torch-pruning reads it from any of q/k/v
                head_ratio[g.modules[q]] = (h - keep - 0.5) / h
            c = g.dg.get_out_channels(m)
            ratio_dict[m] = 1.0 - (keep * c // h + 0.5) / c
            planned[m] = keep * c // h
            continue
        c = g.dg.get_out_channels(m)
        keep = expected_channels(c, r, channel_multiple)
        if keep >= c:
            skipped[decider] = (f"{c} channels at ratio {r:g} with channel_multiple {channel_multiple} "
                                f"leave nothing to remove")
            continue
        # Aim half a channel above `keep` so torch-pruning's int() lands exactly on it.
        ratio_dict[m] = 1.0 - (keep + 0.5) / c
        planned[m] = keep

    if ratio_dict:
        # Everything _classify rejected keeps its output channels (its inputs may still shrink).
        job = _PrunerJob(student, example_input, scorer, importance, calibration,
                         ratios={g.names[m]: r for m, r in ratio_dict.items()},
                         head_ratios={g.names[m]: r for m, r in head_ratio.items()},
                         num_heads={g.names[m]: h for m, h in num_heads.items()},
                         ignored=[n for n in g.weight_layers if n not in ok],
                         attention={a: qkv for a, (_, qkv) in attention.items()})
        groups = {n: [n, *(q for q in attention.get(head_of.get(n, ""), (0, ()))[1] if q != n)]
                  for n in job.ratios}  # a decider and the q/k/v it drives
        pruned, failed = job.run_groups(groups)
        skipped.update(failed)
        planned = {m: c for m, c in planned.items() if g.names[m] not in failed}
        student = pruned if pruned is not None else student  # nothing pruned: the copy with its blocks removed
    macs_after, params_after = _count(student, example_input)
    mods = dict(student.named_modules())
    channels = {n: _width(mods[n]) for n in g.weight_layers}
    for m, target in planned.items():  # torch-pruning can decline a group without saying so
        n = g.names[m]
        if n not in skipped and channels.get(n) != target:
            skipped[n] = f"torch-pruning left {channels.get(n)} output channels (planned {target})"
    for n, r in ratios.items():  # a requested ratio that removed nothing always carries a reason
        if r > 0 and n not in skipped and n not in coupled and channels.get(n) == before.get(n):
            skipped[n] = "torch-pruning removed no output channel"
    heads = {a: int(mods[a].num_heads) for a in attention}
    return PruneResult(student, macs_before, macs_after, params_before, params_after, channels,
                       {**skipped, **skipped_blocks}, coupled, heads, channels_before=before, removed=removed)


@dataclass(frozen=True)
class _PrunerJob:
    """One torch-pruning pass over a fresh copy of `base` (the student with its removed blocks, not yet pruned),
    described by layer names: a failed pass leaves its copy half-pruned, so every attempt starts from `base`."""

    base: nn.Module
    example_input: torch.Tensor
    scorer: object
    importance: str
    calibration: tuple[torch.Tensor, torch.Tensor] | None
    ratios: dict[str, float]  # decider -> ratio for MetaPruner
    head_ratios: dict[str, float]  # q/k/v -> head ratio
    num_heads: dict[str, int]  # q/k/v -> heads
    ignored: list[str]
    attention: dict[str, tuple[str, ...]]  # attention module -> its q/k/v

    def run(self, names: set[str]) -> nn.Module:
        """A copy of the model with the groups of `names` (deciders and their q/k/v) pruned; raises on failure."""
        student = copy.deepcopy(self.base)
        mods = dict(student.named_modules())
        heads = {n: r for n, r in self.head_ratios.items() if n in names}
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()), torch.enable_grad():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MetaPruner(
                student, traceable(self.example_input), importance=self.scorer, pruning_ratio=0.0,
                pruning_ratio_dict={mods[n]: r for n, r in self.ratios.items() if n in names},
                ignored_layers=[mods[n] for n in self.ignored], round_to=None,
                num_heads={mods[n]: h for n, h in self.num_heads.items()}, prune_num_heads=bool(heads),
                prune_head_dims=False, head_pruning_ratio_dict={mods[n]: r for n, r in heads.items()} or None,
            )
            if self.importance == "taylor":
                _taylor_gradients(student, self.example_input, self.calibration)
            pruner.step()
            student.zero_grad(set_to_none=True)
            for a, qkv in self.attention.items():  # the module's own head count drives its reshape
                mods[a].num_heads = pruner.num_heads[mods[qkv[0]]]
            with torch.no_grad():
                call(student, self.example_input)  # a pruned model that no longer runs is no result
        return student

    def run_groups(self, groups: dict[str, list[str]]) -> tuple[nn.Module | None, dict[str, str]]:
        """All groups at once; if torch-pruning fails, each group alone, and then the ones that pruned alone
        together (adding them one by one if even that fails). (pruned copy or None, {decider: why skipped})."""
        try:
            return self.run({n for ns in groups.values() for n in ns}), {}
        except Exception as exc:
            if len(groups) == 1:
                return None, {n: _failed(exc) for n in groups}
        failed: dict[str, str] = {}
        alone = []
        for decider, names in groups.items():
            try:
                self.run(set(names))
                alone.append(decider)
            except Exception as exc:
                failed[decider] = _failed(exc)
        if not alone:
            return None, failed
        try:  # the usual case: one group broke the whole pass, the others prune together
            return self.run({n for d in alone for n in groups[d]}), failed
        except Exception:
            pass
        kept: list[str] = []
        best = None
        for decider in alone:  # greedy: a group that breaks the ones kept so far is skipped too
            try:
                best = self.run({n for d in [*kept, decider] for n in groups[d]})
                kept.append(decider)
            except Exception as exc:
                failed[decider] = _failed(exc) + " (with the other groups)"
        return best, failed


def _failed(exc: BaseException) -> str:
    return f"torch-pruning failed: {type(exc).__name__}: {exc}"[:300]


def _remove_blocks(student: nn.Module, example_input: torch.Tensor,
                   ratios: Mapping[str, float]) -> tuple[tuple[str, ...], dict[str, str]]:
    """Replace each block named at ratio >= 1 by nn.Identity (in place); (removed, {block: why not})."""
    modules = dict(student.named_modules())
    removed, skipped = [], {}
    for name in sorted(n for n, r in ratios.items() if r >= 1.0):
        m = modules.get(name)
        if m is None or isinstance(m, WEIGHT_TYPES) or not name:
            skipped[name] = "a ratio of 1.0 removes a block; this is no block of the model"
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else student, child, nn.Identity())
        try:
            with torch.no_grad():
                call(student, example_input)
        except Exception as exc:  # its output is not its input's shape: put it back
            setattr(modules[parent_name] if parent_name else student, child, m)
            skipped[name] = f"cannot be removed whole ({type(exc).__name__}: {str(exc)[:150]})"
            continue
        removed.append(name)
    return tuple(removed), skipped


def _student(model: nn.Module) -> nn.Module:
    """The copy to prune: eval mode, each nn.MultiheadAttention split into q/k/v/out Linears (same outputs)."""
    return split_copy(model).eval()


def _width(m: nn.Module) -> int:
    if isinstance(m, nn.Embedding):
        return int(m.embedding_dim)
    return int(m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features)


def _taylor_gradients(model: nn.Module, example_input: torch.Tensor,
                      calibration: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    model.zero_grad(set_to_none=True)
    if calibration is None:
        x = example_input
        with torch.no_grad():
            y = primary(call(model, x)).argmax(dim=-1)
    else:
        x, y = calibration
    out = primary(call(model, x))  # a model with several outputs: its first, the one the targets belong to
    if y.is_floating_point():  # regression targets: the gradient of the task's own loss
        nn.functional.mse_loss(out.reshape(len(out), -1), y.to(out.dtype).reshape(len(out), -1)).backward()
    elif out.dim() == 3:  # (N, T, V) token logits against (N, T) targets
        from search.metrics import IGNORE_INDEX

        nn.functional.cross_entropy(out.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX).backward()
    else:
        nn.functional.cross_entropy(out, y).backward()
