"""A model's outputs, one or several, as every stage takes them.

Models that return a dict or a dataclass holding `logits` (as popular model libraries do) are searched as
they are: a forward hook on the teacher hands every consumer (distillation, pruning's trace, export, scoring)
the logits tensor. Pruned copies of the teacher are deep copies, so they carry the hook too.

A model may also return a tuple of tensors (a multi-task model: class logits and a regression head, say). The
first is the primary output: the task's `output_kind` describes it, its loss trains on the targets. The others are
distilled by mean squared error to the teacher's, exported under names of their own (`output_names`), and scored
only by a metric that asks for every output (`Metric(..., every_output=True)`).
"""

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


OUTPUT_NAME = "logits"  # the exported file's first output; the others are output_1, output_2, ...


def output_names(k: int) -> list[str]:
    """The ONNX output names of a model with `k` outputs."""
    return [OUTPUT_NAME] + [f"output_{i}" for i in range(1, k)]


def output_parts(out) -> tuple:
    """Every output, in order: a tuple/list's items, else the one output."""
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def primary(out):
    """The first output (the one `output_kind` describes and the default metric scores)."""
    return out[0] if isinstance(out, (tuple, list)) else out


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
    if isinstance(out, torch.Tensor) or (isinstance(out, (tuple, list)) and out
                                         and all(isinstance(o, torch.Tensor) for o in out)):
        return None
    if logits_of(out) is None:
        keys = list(out) if isinstance(out, Mapping) else [f.name for f in dataclasses.fields(out)] \
            if dataclasses.is_dataclass(out) else []
        return type(out).__name__ + (f" with {', '.join(map(str, keys))}" if keys else "")
    if not hasattr(teacher, _HOOKED):
        setattr(teacher, _HOOKED, teacher.register_forward_hook(_logits_hook))
    return None
