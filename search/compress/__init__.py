"""Compression stages: prune, distill, export, quantize. They know nothing of Optuna.

Pipeline: `prune` (a new, smaller model) -> `distill` (fine-tune it in place) -> `export_onnx`
-> `quantize` (per-layer bit-widths on the ONNX graph, mapped with `layer_node_map`).
"""

from search.compress.distill import DistillResult, distill, evaluate, kd_loss, teacher_logits
from search.compress.export import INPUT_NAME, OUTPUT_NAME, check_export, export_onnx
from search.compress.onnx_names import layer_node_map, quantizable_layers, weighted_nodes
from search.compress.prune import (
    PruneResult,
    expected_channels,
    expected_heads,
    layer_blocks,
    prunable_layers,
    prune,
    prune_groups,
)
from search.compress.qdq_graph import node_precisions
from search.compress.quantize import QuantizeResult, quantize
from search.compress.runs import LayerRun, compare, runs_as

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "DistillResult",
    "LayerRun",
    "PruneResult",
    "QuantizeResult",
    "check_export",
    "compare",
    "distill",
    "evaluate",
    "expected_channels",
    "expected_heads",
    "export_onnx",
    "kd_loss",
    "layer_blocks",
    "layer_node_map",
    "node_precisions",
    "prunable_layers",
    "prune",
    "prune_groups",
    "quantizable_layers",
    "quantize",
    "runs_as",
    "teacher_logits",
    "weighted_nodes",
]
