"""Models that return a dict or a dataclass holding `logits` (as popular model libraries do) are searched as
they are: a forward hook on the teacher hands every consumer (distillation, pruning's trace, export, scoring)
the logits tensor. Pruned copies of the teacher are deep copies, so they carry the hook too."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

_HOOKED = "_hwsearch_logits_hook"  # the teacher attribute holding the hook's handle (one hook, however loaded)


def logits_of(output):
    """The logits tensor inside `output` (a tensor, a mapping or dataclass with `logits`); None if there is none."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        value = output.get("logits")
    elif dataclasses.is_dataclass(output) or hasattr(output, "logits"):
        value = getattr(output, "logits", None)
    else:
        value = None
    return value if isinstance(value, torch.Tensor) else None


def _logits_hook(module: nn.Module, args, output):
    return logits_of(output)


def unwrap_logits(teacher: nn.Module, sample) -> str | None:
    """Make `teacher` return its logits tensor. Returns None when it does (after a hook if it needed one), else
    what it returns instead, for an error message. `sample` is a batch of inputs to probe it with."""
    from search.tasks.inputs import call

    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            out = call(teacher, sample)
    finally:
        teacher.train(was_training)
    if isinstance(out, torch.Tensor):
        return None
    if logits_of(out) is None:
        keys = list(out) if isinstance(out, Mapping) else [f.name for f in dataclasses.fields(out)] \
            if dataclasses.is_dataclass(out) else []
        return type(out).__name__ + (f" with {', '.join(map(str, keys))}" if keys else "")
    if not hasattr(teacher, _HOOKED):
        setattr(teacher, _HOOKED, teacher.register_forward_hook(_logits_hook))
    return None
