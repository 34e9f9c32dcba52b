"""What ONNX Runtime actually runs for each layer, read from the session's optimised graph.

A bit-width plan says what the file stores; ONNX Runtime decides at load time what executes. On an
x86 CPU (ORT 1.32) only u8/s8 QDQ groups fuse into integer kernels (QLinearConv, QGemm,
QLinearMatMul, ...); a 16-bit layer runs as a float kernel between Q/DQ pairs and can undo the
fusion of an int8 neighbour; int4 Conv/Gemm weights are dequantized on every call; a MatMul with a
constant weight stored as MatMulNBits runs a real 4-bit kernel; and an fp32 layer between quantized
tensors is quantized by the session itself. `runs_as` opens a session with the profile's options,
saves its optimised graph and classifies each layer's kernel; `compare` sets that against the plan.

Mapping optimised nodes back to layers (names seen in ORT 1.32; several keys because each
transformer names its output differently):
  1. weights: a node consuming (directly or through DequantizeLinear / Transpose / Reshape / Cast)
     an initializer that feeds the layer's node in the quantized file (ORT keeps the names of the
     initializers it does not rewrite: QLinearConv, QGemm, QLinearMatMul, MatMulNBits and the
     float Conv/Gemm/MatMul read the file's weight; NCHWc convs keep the file's bias);
  2. initializers ORT derives from the node's name: "<node>_weight_q", "<node>_bias_int32",
     "<node>_bias_dq" (load-time WeightBiasQuantization and bias quantization of QDQ fusions);
  3. the node's name: kept ("node_linear" as QGemm), "<node>_token_<n>" (QLinearConv after the
     NHWC transformer), "<node>/<Fusion>/" (e.g. "/MatMulScaleFusion/" for FusedMatMul);
  4. "<output>_nchwc": an NCHWc Conv is named after the tensor it writes, which after Conv+activation
     fusion is the activation's output (its weight becomes a new "reorder" initializer);
  5. the weight's values: a float initializer of the same sum of squares and absolute sum as the
     layer's float weight (NCHWc reorders and zero-pads weights, which keeps both).
A layer none of these finds (e.g. fused into an Attention node with concatenated weights) is
reported as "unknown". No torch: this runs in the search process.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from search.compress.bits import BITS_TO_PRECISION, DYNAMIC_INT8
from search.compress.onnx_names import weighted_nodes

# Kernel classes, best to worst: an integer kernel, a float kernel on weights dequantized at run
# time (quantized storage, float compute and a dequantization per call), a plain float kernel.
KERNELS = ("int4", "int8", "int8-dynamic", "int16", "float-dequant", "fp32")
# Integer kernels that quantize their activation from its own range on every call (no calibrated scale).
_DYNAMIC_KERNELS = {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM"}
UNKNOWN = "unknown"

OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}

# Integer kernels -> input index of the activation zero point (None: quantized inside, 8 bits).
_INT_OPS: dict[str, int | None] = {
    "QLinearConv": 2, "ConvInteger": 2, "QLinearMatMul": 2, "MatMulInteger": 2, "QGemm": 2,
    "MatMulIntegerToFloat": 4, "DynamicQuantizeMatMul": None, "QAttention": None,
    "DynamicQuantizeLSTM": None, "QLinearConvTranspose": 2,
}
_FLOAT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul",
              "NhwcFusedConv", "TransposeMatMul", "Attention", "MultiHeadAttention"}
_MATMULS = {"MatMul", "FusedMatMul", "TransposeMatMul"}
# Ops a weight or activation passes through unchanged in meaning (followed when tracing inputs).
_PASS = {"DequantizeLinear", "Transpose", "Reshape", "Cast", "Identity", "Squeeze", "Unsqueeze", "Flatten"}
# Never a layer's kernel: quantization and layout plumbing.
_PLUMBING = _PASS | {"QuantizeLinear", "DynamicQuantizeLinear", "ReorderInput", "ReorderOutput"}
# Activations ORT fuses into the Conv before it (their output then names an NCHWc Conv).
_FUSED_ACTS = {"Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "Gelu", "QuickGelu"}
_DERIVED = re.compile(r"^(?P<node>.+)_(?:weight|bias)_[A-Za-z0-9]+$")
_DUP = "/duplicated"


@dataclass(frozen=True)
class LayerRun:
    """How ONNX Runtime runs one layer: `kernel` is one of KERNELS or "unknown" (no node found); with
    several nodes (attention) the worst of them. `op_types`: its nodes' op types in the optimised
    graph, sorted, "domain:op" outside the default domain (e.g. "com.microsoft.nchwc:Conv")."""

    kernel: str
    op_types: tuple[str, ...]
    nodes: tuple[str, ...] = ()  # node names in the optimised graph


def runs_as(
    quantized_path: str | os.PathLike,
    layer_nodes: Mapping[str, Sequence[str]] | str | os.PathLike,
    *,
    graph_optimization: str = "all",
    threads: int = 1,
    optimized: onnx.ModelProto | None = None,
) -> dict[str, LayerRun]:
    """{layer: LayerRun} for each layer of `layer_nodes`, as a CPU session of `quantized_path` with
    these options runs it. `layer_nodes` is {layer: [its Conv/Gemm/MatMul node names]} or the fp32
    ONNX file they come from (`weighted_nodes`); `quantize` keeps those names in its output.
    `optimized`: the graph the device's own session made of the file (a remote agent's /v1/optimize),
    read instead of this machine's."""
    if graph_optimization not in OPT_LEVELS:
        raise ValueError(f"graph_optimization must be one of {sorted(OPT_LEVELS)}, got {graph_optimization!r}")
    if not isinstance(layer_nodes, Mapping):
        layer_nodes = {k: [n.name for n in v] for k, v in weighted_nodes(layer_nodes).items()}
    model = onnx.load(str(quantized_path))
    if optimized is None:
        optimized = optimized_model(quantized_path, graph_optimization=graph_optimization, threads=threads)
    return classify(model, optimized, layer_nodes)


def optimized_model(path: str | os.PathLike, *, graph_optimization: str = "all", threads: int = 1) -> onnx.ModelProto:
    """The graph a CPU InferenceSession of `path` with these options executes."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="hwsearch-runs-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[graph_optimization])
        so.intra_op_num_threads = threads
        so.log_severity_level = 3  # the NCHWc "hardware specific" warning on saving
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def classify(model: onnx.ModelProto, optimized: onnx.ModelProto,
             layer_nodes: Mapping[str, Sequence[str]]) -> dict[str, LayerRun]:
    """`runs_as` on already loaded graphs: the file ORT loaded and the graph it optimised it to."""
    keys = _layer_keys(model, layer_nodes)
    og = optimized.graph
    o_inits = {i.name: i for i in og.initializer}
    o_prod = {o: n for n in og.node for o in n.output}
    found: dict[str, list[onnx.NodeProto]] = {layer: [] for layer in layer_nodes}
    for node in og.node:
        if node.op_type in _PLUMBING:
            continue
        layer, by_weight = _owner(node, keys, o_prod, o_inits)
        if layer is not None and (by_weight or _kernel_op(node)):
            found[layer].append(node)
    out = {}
    for layer, nodes in found.items():
        kinds = [_node_kernel(n, o_prod, o_inits) for n in nodes]
        kernel = max(kinds, key=KERNELS.index) if kinds else UNKNOWN
        out[layer] = LayerRun(kernel, tuple(sorted({_op_name(n) for n in nodes})), tuple(n.name for n in nodes))
    return out


def kernel_signature(runs: Mapping[str, LayerRun]) -> str:
    """What a session runs, as one string: each found layer's kernel and op types (a layer not found, e.g. one
    a removed block took with it, is left out, so the teacher's layer list and the student's agree)."""
    return "|".join(f"{k}:{r.kernel}:{','.join(r.op_types)}" for k, r in sorted(runs.items()) if r.kernel != UNKNOWN)


def compare(requested: Mapping[str, int], runs: Mapping[str, LayerRun],
            dynamic: Collection[str] = ()) -> dict[str, dict]:
    """{layer: {"requested": bits, "runs_as": kernel, "differs": bool}} for every layer of `runs` and
    `requested` (a layer the plan does not name is 32, as in `quantize`). It differs when the kernel
    is not what the bit-width asks for: 8 -> "int8", 4 -> "int4", 16 -> "int16" (no such kernel on
    ORT CPU), 32 -> "fp32" (an fp32 layer the session quantized itself differs too); an 8-bit layer of
    `dynamic` (quantized dynamically) -> "int8-dynamic"."""
    out = {}
    for layer in [*runs, *(k for k in requested if k not in runs)]:
        bits = int(requested.get(layer, 32))
        kernel = runs[layer].kernel if layer in runs else UNKNOWN
        wanted = DYNAMIC_INT8 if bits == 8 and layer in dynamic else BITS_TO_PRECISION.get(bits)
        out[layer] = {"requested": bits, "runs_as": kernel, "differs": kernel != wanted}
    return out


# ------------------------------------------------------------------------------------------------ mapping
@dataclass
class _Keys:
    layer_of_node: dict[str, str]  # original node name -> layer
    by_init: dict[str, set[str]]  # initializer feeding a layer's node -> layers
    by_output: dict[str, set[str]]  # tensor a layer's node (or its fusable activation) writes -> layers
    prints: dict[str, list[tuple[float, float, int]]]  # layer -> fingerprints of its float weights


def _layer_keys(model: onnx.ModelProto, layer_nodes: Mapping[str, Sequence[str]]) -> _Keys:
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    by_name = {n.name: n for n in g.node if n.name}
    keys = _Keys({}, {}, {}, {})
    for layer, names in layer_nodes.items():
        for name in names:
            keys.layer_of_node[name] = layer
            node = by_name.get(name)
            if node is None:
                continue
            for i, t in enumerate(node.input[1:], start=1):
                path = _trace(t, prod)
                for src in path:
                    if src in inits:
                        keys.by_init.setdefault(src, set()).add(layer)
                        if i == 1 and inits[src].data_type == onnx.TensorProto.FLOAT and len(inits[src].dims) >= 2:
                            keys.prints.setdefault(layer, []).append(_fingerprint(inits[src]))
            t = node.output[0] if node.output else ""
            while t:
                keys.by_output.setdefault(t, set()).add(layer)
                nxt = consumers.get(t, [])
                t = nxt[0].output[0] if len(nxt) == 1 and nxt[0].op_type in _FUSED_ACTS else ""
    return keys


def _owner(node: onnx.NodeProto, keys: _Keys, prod: Mapping[str, onnx.NodeProto],
           inits: Mapping[str, onnx.TensorProto]) -> tuple[str | None, bool]:
    """(layer of an optimised node or None, whether it was found by the weights it consumes)."""
    upstream = [t for i in node.input[1:] for t in _trace(i, prod)]
    levels: list[Callable[[], Iterable[str]]] = [
        lambda: (layer for t in upstream if t in inits for layer in keys.by_init.get(_base(t), ())),
        lambda: (keys.layer_of_node[m["node"]] for t in upstream if (m := _DERIVED.match(_base(t)))
                 and m["node"] in keys.layer_of_node),
        lambda: (keys.layer_of_node[n] for n in _name_stems(node.name) if n in keys.layer_of_node),
        lambda: keys.by_output.get(node.name[: -len("_nchwc")], ()) if node.name.endswith("_nchwc") else (),
        lambda: _by_fingerprint(node, keys, inits),
    ]
    candidates: set[str] | None = None
    for i, level in enumerate(levels):
        found = set(level())
        if candidates is not None and found:
            found &= candidates
        if len(found) == 1:
            return found.pop(), i == 0
        if found:
            candidates = found
    return None, False


def _name_stems(name: str) -> list[str]:
    """Original node names an optimised node's name may come from: itself, before "/<Fusion>/", before
    "_token_<n>" suffixes."""
    stems = [name]
    if "/" in name:
        stems.append(name.split("/", 1)[0])
    m = re.fullmatch(r"(.+?)(?:_token_\d+)+", stems[-1])
    if m:
        stems.append(m.group(1))
    return stems


def _by_fingerprint(node: onnx.NodeProto, keys: _Keys, inits: Mapping[str, onnx.TensorProto]) -> Iterable[str]:
    if not keys.prints:
        return ()
    mine = [_fingerprint(inits[t]) for t in node.input[1:2] if t in inits
            and inits[t].data_type == onnx.TensorProto.FLOAT and len(inits[t].dims) >= 2]
    return {layer for fp in mine for layer, prints in keys.prints.items()
            if any(_same_print(fp, p) for p in prints)}


def _fingerprint(t: onnx.TensorProto) -> tuple[float, float, int]:
    a = numpy_helper.to_array(t).astype(np.float64).ravel()
    return float(np.dot(a, a)), float(np.abs(a).sum()), int(np.count_nonzero(a))


def _same_print(a: tuple[float, float, int], b: tuple[float, float, int]) -> bool:
    return a[2] == b[2] and a[2] > 0 and np.isclose(a[0], b[0], rtol=1e-7) and np.isclose(a[1], b[1], rtol=1e-7)


def _trace(tensor: str, prod: Mapping[str, onnx.NodeProto]) -> list[str]:
    """`tensor` and the tensors it is derived from through pass-through ops (data input only)."""
    path = [tensor]
    seen = {tensor}
    p = prod.get(tensor)
    while p is not None and p.op_type in _PASS and p.input and p.input[0] not in seen:
        tensor = p.input[0]
        path.append(tensor)
        seen.add(tensor)
        p = prod.get(tensor)
    return path


def _base(name: str) -> str:
    return name[: -len(_DUP)] if name.endswith(_DUP) else name


# ------------------------------------------------------------------------------------------------ kernels
def _kernel_op(node: onnx.NodeProto) -> bool:
    return node.op_type in _INT_OPS or node.op_type in _FLOAT_OPS or node.op_type == "MatMulNBits"


def _node_kernel(node: onnx.NodeProto, prod: Mapping[str, onnx.NodeProto],
                 inits: Mapping[str, onnx.TensorProto]) -> str:
    op = node.op_type
    if op == "MatMulNBits":
        bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
        return "int8" if bits == 8 else "int4"
    if op in _INT_OPS or op.startswith("QLinear") or "Integer" in op:
        zp = _INT_OPS.get(op)
        act16 = (onnx.TensorProto.UINT16, onnx.TensorProto.INT16)
        if zp is not None and len(node.input) > zp and getattr(inits.get(node.input[zp]), "data_type", None) in act16:
            return "int16"
        if op in _DYNAMIC_KERNELS or getattr(prod.get(node.input[0]), "op_type", None) == "DynamicQuantizeLinear":
            return DYNAMIC_INT8
        return "int8"

    def dequantized(i: int, weight_only: bool) -> bool:
        if len(node.input) <= i or not node.input[i]:
            return False
        path = _trace(node.input[i], prod)
        return any(getattr(prod.get(t), "op_type", None) == "DequantizeLinear"
                   and (not weight_only or prod[t].input[0] in inits) for t in path)

    # The weight is input 1 (Conv, Gemm, MatMul and their fused forms); a MatMul may hold it first.
    if dequantized(1, False) or (op in _MATMULS and dequantized(0, True)):
        return "float-dequant"
    return "fp32"


def _op_name(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
