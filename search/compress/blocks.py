"""Search units: the repeated blocks of a network (residual, inverted-residual, transformer layers).

A user's model is often wrapped (`Wrapped(pre=Normalize(), net=ResNet())`), so the top-level child is
not a block. Blocks are found from the structure instead: the outermost sub-network that is one of
several sub-networks inside a container (a Sequential/ModuleList of residual blocks, the layers of an
encoder); a stage that holds such units is descended into. Layers outside any repeated unit (stem,
head, classifier) group by their first child below the wrappers, where a wrapper is a module all the
weight layers live under.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from search.tasks.inputs import call

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _repeated(container: nn.Module) -> set[str]:
    """Names of a container's sub-network children, when it holds a sequence of them (two or more)."""
    subnets = {n for n, c in container.named_children() if any(True for _ in c.children())}
    return subnets if len(subnets) >= 2 else set()


def _is_stage(module: nn.Module) -> bool:
    """A container that itself holds a sequence of sub-networks: descend into it."""
    return isinstance(module, _CONTAINERS) and bool(_repeated(module))


def _unit_of(layer: str, modules: dict[str, nn.Module]) -> str | None:
    parts = layer.split(".")
    for i in range(1, len(parts) - 1):  # the unit must contain the layer, not be it
        parent, prefix = ".".join(parts[:i]), ".".join(parts[: i + 1])
        container = modules.get(parent)
        unit = modules.get(prefix)
        if container is None or unit is None or not isinstance(container, _CONTAINERS):
            continue
        if parts[i] in _repeated(container) and any(True for _ in unit.children()) and not _is_stage(unit):
            return prefix
    return None


def _wrapper_depth(layers: list[str]) -> int:
    """How many leading name parts all layers share (the wrappers around the network)."""
    split = [name.split(".") for name in layers]
    depth = 0
    while all(len(p) > depth + 1 for p in split) and len({p[depth] for p in split}) == 1:
        depth += 1
    return depth


def layer_blocks(model: nn.Module, layers: Iterable[str]) -> dict[str, list[str]]:
    """Group layers into search units, in the order the layers are given:
    `net.stages.1.0.conv1` -> `net.stages.1.0` (a residual block under a wrapper), `net.stem.0` -> `net.stem`."""
    layers = list(layers)
    modules = dict(model.named_modules())
    # Wrappers are judged on every weight layer, so prune and quantization units of one model agree.
    weights = [n for n, m in modules.items() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    depth = _wrapper_depth(weights or layers)
    blocks: dict[str, list[str]] = {}
    for layer in layers:
        key = _unit_of(layer, modules)
        if key is None:
            parts = layer.split(".")
            key = ".".join(parts[: min(depth + 1, len(parts))])
        blocks.setdefault(key, []).append(layer)
    return blocks


def droppable_blocks(model: nn.Module, example: torch.Tensor, blocks: Iterable[str]) -> list[str]:
    """The blocks that can be removed whole (replaced by the identity): one tensor in, one tensor out of the
    same shape and dtype, as a residual block's `x + f(x)` is; removing one keeps `x`."""
    modules = dict(model.named_modules())
    seen: dict[str, bool] = {}

    def hook(name: str):
        def check(_module, args, output) -> None:
            ok = (len(args) == 1 and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor)
                  and args[0].shape == output.shape and args[0].dtype == output.dtype)
            seen[name] = seen.get(name, True) and ok
        return check

    names = [b for b in blocks if b in modules and b]  # "" would be the whole model
    handles = [modules[b].register_forward_hook(hook(b)) for b in names]
    try:
        with torch.no_grad():
            call(model.eval(), example)
    finally:
        for h in handles:
            h.remove()
    return [b for b in names if seen.get(b)]
