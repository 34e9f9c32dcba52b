"""Compression stages: prune, distill, export, quantize. They know nothing of Optuna.

Pipeline: `prune` (a new, smaller model) -> `distill` (fine-tune it in place) -> `export_onnx`
-> `quantize` (per-layer bit-widths on the ONNX graph, mapped with `layer_node_map`).

Names load lazily, so that light modules (config, plan) can import `search.compress.bits` without
loading torch. The modules are named for the stage (pruning, distillation, quantization), not for the
function, so a loaded module never shadows the function of the same name. The loader is written out
here rather than taken from search.utils: this package depends on nothing in search but errors.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SplitAttention": "attention",
    "split_attention": "attention",
    "split_copy": "attention",
    "DistillResult": "distillation",
    "distill": "distillation",
    "evaluate": "distillation",
    "kd_loss": "distillation",
    "teacher_logits": "distillation",
    "INPUT_NAME": "export",
    "OUTPUT_NAME": "export",
    "Reexport": "export",
    "check_export": "export",
    "export_onnx": "export",
    "layer_node_map": "onnx_names",
    "quantizable_layers": "onnx_names",
    "weighted_nodes": "onnx_names",
    "PruneResult": "pruning",
    "expected_channels": "pruning",
    "expected_heads": "pruning",
    "prune": "pruning",
    "prunable_layers": "prune_graph",
    "prune_groups": "prune_graph",
    "node_precisions": "qdq_graph",
    "QuantizeResult": "quantization",
    "quantize": "quantization",
    "layer_blocks": "blocks",
    "droppable_blocks": "blocks",
    "LayerRun": "runs",
    "compare": "runs",
    "runs_as": "runs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
