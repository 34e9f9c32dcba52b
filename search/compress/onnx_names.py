"""Map ONNX nodes back to PyTorch module names, so per-layer decisions reach the right nodes.

The dynamo exporter records each node's module path in `metadata_props["pkg.torch.onnx.name_scopes"]`
(e.g. "['', 'blocks', 'blocks.0', 'blocks.0.attn.q', 'linear_1']": module scopes, then the op).
One exception: a Conv with BatchNorm folded into it carries the BatchNorm's scope; its weight
initializer keeps the Conv's name (`stem.conv.weight`), which is used instead.
The TorchScript exporter names each node by its scopes instead ("/blocks/blocks.0/expand/conv/Conv": one
attribute name per level, a container's child as "<container>.<index>"), and names folded weights
"onnx::Conv_155": the node's name decides there (`scope_module`).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import onnx

NAME_SCOPES = "pkg.torch.onnx.name_scopes"
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


def _load(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load(str(Path(model)), load_external_data=False)


def node_layer(node: onnx.NodeProto, initializers: set[str]) -> str | None:
    """The module that owns `node` (innermost scope), or None for graph-level glue."""
    if node.op_type in WEIGHTED_OPS:
        for name in node.input[1:]:
            if name in initializers and name.endswith(".weight"):
                return name[: -len(".weight")]
    meta = {p.key: p.value for p in node.metadata_props}
    raw = meta.get(NAME_SCOPES)
    if not raw:
        return scope_module(node.name)
    try:
        scopes = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    # The last entry names the op itself, not a module.
    modules = [s for s in scopes[:-1] if s]
    return modules[-1] if modules else None


def scope_module(node_name: str) -> str | None:
    """The module a TorchScript-exported node belongs to ("/blocks/blocks.0/expand/conv/Conv" ->
    "blocks.0.expand.conv"), or None for a name without scopes (a dynamo node's, graph-level glue)."""
    if not node_name.startswith("/"):
        return None
    full, prev = "", ""
    for part in node_name.split("/")[1:-1]:  # the last part names the op
        if prev and part.startswith(prev + "."):  # a container's child carries the container's name
            full = full[: len(full) - len(prev)] + part
        else:
            full = f"{full}.{part}" if full else part
        prev = part
    return full or None


def layer_node_map(model: onnx.ModelProto | str | os.PathLike) -> dict[str, list[str]]:
    """{module name: [ONNX node names it owns]} for every node that belongs to a module."""
    proto = _load(model)
    inits = {i.name for i in proto.graph.initializer}
    out: dict[str, list[str]] = {}
    for node in proto.graph.node:
        layer = node_layer(node, inits)
        if layer is not None:
            out.setdefault(layer, []).append(node.name)
    return out


def weighted_nodes(model: onnx.ModelProto | str | os.PathLike) -> dict[str, list[onnx.NodeProto]]:
    """{layer: [its Conv/Gemm/MatMul nodes]} (MatMul includes activation x activation products)."""
    proto = _load(model)
    inits = {i.name for i in proto.graph.initializer}
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        if node.op_type in WEIGHTED_OPS:
            layer = node_layer(node, inits)
            if layer is not None:
                out.setdefault(layer, []).append(node)
    return out


def quantizable_layers(model: onnx.ModelProto | str | os.PathLike) -> list[str]:
    """Layers that own a Conv/Gemm/MatMul node, in graph order."""
    return list(weighted_nodes(model))


def exporter_of(model: onnx.ModelProto | str | os.PathLike) -> str:
    """"torchscript" (scoped node names) or "dynamo" (scope metadata): which exporter wrote the graph."""
    proto = _load(model)
    return "torchscript" if any(n.name.startswith("/") for n in proto.graph.node) else "dynamo"
