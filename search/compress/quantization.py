"""Per-layer post-training quantization of an exported ONNX graph with ONNX Runtime.

Bits per layer (PyTorch module names, mapped to nodes by `onnx_names`):
  32  fp32, the layer's nodes are excluded from quantization;
  16  A16W8: uint16 activations into the layer (tensor_quant_overrides), int8 weights;
   8  A8W8: static QDQ, uint8 activations, int8 (per-channel) weights; on the op types in `dynamic_ops`
      (a profile's int8-dynamic), int8 weights with activation scales computed at run time
      (com.microsoft DynamicQuantizeMatMul), no calibration;
   4  A8W4: int4 weights (QDQ) with uint8 activations; a MatMul with a constant weight becomes
      MatMulNBits instead (4-bit blocks, int8 compute), which ORT runs with a real kernel.
Glue nodes (adds, activations, pooling, reshapes) are quantized only next to a quantized layer,
so an fp32 region stays fp32 instead of paying Quantize/Dequantize round trips.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantType,
    get_qdq_config,
    quant_pre_process,
)
from onnxruntime.quantization import quantize as ort_quantize

from search.compress.bits import VALID_BITS
from search.compress.export import _quiet, short_reason
from search.compress.onnx_names import WEIGHTED_OPS, node_layer
from search.compress.qdq_graph import compact as compact_graph
from search.compress.qdq_graph import finite_masks, float_inputs_for_fp32, nonfinite_nodes, sandwiched_fp32
from search.errors import TrialFailure
from search.tasks.inputs import count, rows, several

Method = Literal["minmax", "entropy", "percentile"]
_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    quantized: dict[str, int]  # layer -> bits actually applied (16, 8 or 4)
    skipped: dict[str, str] = field(default_factory=dict)  # layer asked < 32 but left fp32 -> why
    notes: dict[str, str] = field(default_factory=dict)  # layer quantized differently than asked -> how
    dynamic: frozenset[str] = frozenset()  # the 8-bit layers quantized dynamically


class _Reader(CalibrationDataReader):
    def __init__(self, data, batch: int, name: str) -> None:
        self.data, self.batch, self.pos, self.name = data, batch, 0, name  # token ids stay integers

    def get_next(self):
        if self.pos >= count(self.data):
            return None
        chunk = rows(self.data, slice(self.pos, self.pos + self.batch))
        self.pos += self.batch
        return _named_feed(chunk, self.name)

    def rewind(self) -> None:
        self.pos = 0


def _named_feed(x, name: str) -> dict[str, np.ndarray]:
    """A feed of our exported file: one input under `name` (its graph's input), several under their names."""
    return {k: np.ascontiguousarray(v) for k, v in x.items()} if several(x) else {name: np.ascontiguousarray(x)}


def _weight_axis(node: onnx.NodeProto) -> int:
    """Output-channel axis of a node's weight, for per-channel int4 overrides."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1 if node.op_type == "MatMul" else 0


def quantize(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    bits: Mapping[str, int],
    calibration: np.ndarray,
    per_channel: bool = True,
    method: Method = "minmax",
    calibration_batch: int = 64,
    matmul_nbits: bool = True,
    compact: bool = True,
    quantize_bias: bool = False,
    dynamic_ops: Collection[str] = (),
) -> QuantizeResult:
    """Quantize `fp32_path` layer by layer as `bits` says and write `out_path`.

    Layers not named in `bits` stay fp32. `calibration` is an array of model inputs (in their dtype)
    (N, *input_shape). `compact` shortens tensor names and drops metadata in the output: on a
    small model they would otherwise be a third of the int8 file. Original node names are kept,
    so `layer_node_map` of the fp32 file still finds each layer's nodes. The result is checked to
    load and run in ONNX Runtime; a failure raises TrialFailure. Biases stay float by default:
    ORT CPU quantizes them itself when it fuses QLinearConv/QGemm, and an int32 bias with its
    per-channel scale and zero point costs 12 bytes a channel instead of 4 (set `quantize_bias`
    for execution providers that want int32 biases in the file). `dynamic_ops`: op types whose 8-bit
    layers are quantized dynamically (a layer whose constant-weight nodes are all of those types: those nodes
    become dynamic, its activation x activation products stay float; other layers stay static).
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    bad = {k: v for k, v in bits.items() if v not in VALID_BITS}
    if bad:
        raise ValueError(f"bits must be one of {VALID_BITS}: {bad}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
    wanted = {k: int(v) for k, v in bits.items() if int(v) != 32}
    if not wanted:
        shutil.copyfile(fp32_path, out_path)
        return QuantizeResult(out_path, {}, {}, {})

    with tempfile.TemporaryDirectory(prefix="hwsearch-q-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            with _quiet():
                # skip_optimization: ORT's optimizer adds training/aten opset imports a device-side
                # model check rejects, and the dynamo export is already optimised.
                quant_pre_process(str(fp32_path), str(pre), skip_optimization=True)
        except Exception:
            shutil.copyfile(fp32_path, pre)  # shape inference is an optimisation, not a necessity
        model = onnx.load(str(pre))
        weights = {t.name for t in model.graph.initializer}
        first_input = next(i.name for i in model.graph.input if i.name not in weights)
        plan = _plan(model, wanted, matmul_nbits, frozenset(dynamic_ops))
        qdq = Path(tmp) / "qdq.onnx"
        try:
            with _quiet():
                if plan.qdq_layers:
                    # -inf attention masks
                    nonfinite = nonfinite_nodes(model, _named_feed(rows(calibration, slice(8)), first_input))
                    if method != "minmax" and nonfinite:  # histograms fail on an infinite tensor
                        finite_masks(model)
                    cfg = get_qdq_config(
                        model, _Reader(calibration, calibration_batch, first_input), calibrate_method=_METHODS[method],
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=per_channel, nodes_to_exclude=sorted(plan.exclude | nonfinite),
                        tensor_quant_overrides=plan.overrides or None,
                        extra_options={"QuantizeBias": quantize_bias},
                    )
                    ort_quantize(model, str(qdq), cfg)
                    model = onnx.load(str(qdq))
                    float_inputs_for_fp32(model, plan.exclude)
                    plan.notes.update(sandwiched_fp32(model, plan.exclude, plan.owner))
                if plan.nbits_nodes:
                    model = _matmul_nbits(model, plan.nbits_nodes)
                if plan.dynamic_nodes:
                    model = _dynamic(model, plan.dynamic_nodes, per_channel)
                if compact:
                    compact_graph(model)
                onnx.save_model(model, str(out_path))
        except Exception as exc:
            raise TrialFailure(f"quantization failed: {short_reason(exc)}") from exc
    _check_runs(out_path, _named_feed(rows(calibration, slice(2)), first_input))
    return QuantizeResult(out_path, plan.applied, plan.skipped, plan.notes, frozenset(plan.dynamic))


@dataclass
class _Plan:
    exclude: set[str] = field(default_factory=set)
    overrides: dict[str, list[dict]] = field(default_factory=dict)
    nbits_nodes: list[str] = field(default_factory=list)
    dynamic_nodes: list[str] = field(default_factory=list)
    dynamic: set[str] = field(default_factory=set)  # layers
    qdq_layers: set[str] = field(default_factory=set)
    applied: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)  # weighted node -> layer


def _plan(model: onnx.ModelProto, wanted: dict[str, int], matmul_nbits: bool,
          dynamic_ops: frozenset[str] = frozenset()) -> _Plan:
    """Decide, per node, fp32 / QDQ / MatMulNBits and the overrides 16- and 4-bit layers need."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    owner = {n.name: node_layer(n, set(inits)) for n in g.node}
    weighted: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        if n.op_type in WEIGHTED_OPS and owner[n.name] is not None:
            weighted.setdefault(owner[n.name], []).append(n)
    p = _Plan(owner={n.name: layer for layer, ns in weighted.items() for n in ns})
    for layer in wanted:
        if layer not in weighted:
            p.skipped[layer] = "owns no Conv/Gemm/MatMul node in the ONNX graph"
    quant = {k: b for k, b in wanted.items() if k in weighted}

    act16: dict[str, set[str]] = {}  # activation tensor -> 16-bit consumer nodes
    producers_of = {o: n for n in g.node for o in n.output}
    for layer, b in quant.items():
        nodes = weighted[layer]
        consts = [n for n in nodes if any(i in inits for i in n.input[1:2])]
        if b == 4 and matmul_nbits and consts and all(n.op_type == "MatMul" for n in consts) \
                and len(consts) == len(nodes) and all(_nbits_ok(n, inits) for n in consts):
            p.nbits_nodes += [n.name for n in consts]
            p.applied[layer] = 4
            continue
        if b == 8 and consts and all(n.op_type in dynamic_ops for n in consts):
            # Its weight products quantize dynamically; an activation x activation product (attention
            # scores) has no weight to store and stays float: not a QDQ layer, its nodes are excluded below.
            p.dynamic_nodes += [n.name for n in consts]
            if len(consts) < len(nodes):
                p.notes[layer] = "int8-dynamic: its activation x activation products (attention scores) stay float"
            p.dynamic.add(layer)
            p.applied[layer] = 8
            continue
        if b == 4 and not consts:
            p.notes[layer] = "no weights to store in 4 bits (activation x activation): quantized as A8"
            b = 8
        p.qdq_layers.add(layer)
        p.applied[layer] = b
        for n in nodes:
            if b == 4:
                for w in n.input[1:2]:
                    if w in inits:
                        p.overrides[w] = [{"quant_type": QuantType.QInt4, "axis": _weight_axis(n),
                                           "symmetric": True}]
            if b == 16:
                for t in n.input[:2] if n.op_type == "MatMul" else n.input[:1]:
                    _mark16(t, n.name, act16, producers_of, inits)

    # A tensor feeding a 16-bit layer is quantized at 16 bits; its other QDQ consumers convert to 8.
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    for t, recv16 in act16.items():
        others = {c.name for c in consumers.get(t, []) if c.name not in recv16}
        entry: dict = {"quant_type": QuantType.QUInt16}
        if others:
            entry["convert"] = {"quant_type": QuantType.QUInt8, "recv_nodes": others}
        p.overrides[t] = [entry]

    qdq_nodes = {n.name for layer in p.qdq_layers for n in weighted[layer]}
    weighted_names = {n.name for ns in weighted.values() for n in ns}
    producers = {o: n.name for o, n in producers_of.items()}
    for n in g.node:
        layer = owner[n.name]
        if layer in weighted:  # a layer with weights: its nodes follow its own bit-width
            if layer not in p.qdq_layers:
                p.exclude.add(n.name)
            continue
        if n.name in weighted_names:
            continue
        near = {producers.get(t) for t in n.input} | {c.name for o in n.output for c in consumers.get(o, [])}
        if not near & qdq_nodes:
            p.exclude.add(n.name)
    return p


# Ops whose output ORT quantizes with its input's parameters: a 16-bit override must reach back
# through them to the tensor that actually gets quantized.
_SHARED_PARAMS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Gather", "Slice", "Split",
                  "MaxPool", "Resize", "Expand", "Identity", "DepthToSpace", "SpaceToDepth"}


def _mark16(tensor: str, node: str, act16: dict[str, set[str]], producers: dict[str, onnx.NodeProto],
            inits: Mapping[str, onnx.TensorProto]) -> None:
    while tensor and tensor not in inits:
        act16.setdefault(tensor, set()).add(node)
        p = producers.get(tensor)
        if p is None or p.op_type not in _SHARED_PARAMS:
            return
        tensor, node = p.input[0], p.name


def _nbits_ok(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """MatMulNBits wants a 2-D constant weight with K a multiple of its smallest block (16)."""
    w = inits.get(node.input[1])
    return w is not None and len(w.dims) == 2 and w.dims[0] % 16 == 0


def _matmul_nbits(model: onnx.ModelProto, nodes: list[str]) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    k_min = 1 << 30
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.name in nodes:
            k_min = min(k_min, int(inits[n.input[1]].dims[0]))
    block = max(b for b in (16, 32, 64, 128) if k_min % b == 0)
    # accuracy_level 4: int8 activations inside the kernel, the A8W4 this bit-width stands for.
    # nodes_to_include does not restrict (it is OR-ed with the op type): exclude every other MatMul.
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in nodes]
    q = MatMulNBitsQuantizer(model, bits=4, block_size=block, is_symmetric=True, accuracy_level=4,
                             nodes_to_exclude=others)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q.process()
    out = q.model.model
    wanted = set(nodes)
    for n in out.graph.node:  # the quantizer renames X to X_Q4; keep the name layer maps know
        if n.op_type == "MatMulNBits" and n.name.endswith("_Q4") and n.name[:-3] in wanted:
            n.name = n.name[:-3]
    return out


def _dynamic(model: onnx.ModelProto, nodes: list[str], per_channel: bool) -> onnx.ModelProto:
    """Each MatMul of `nodes` with a constant (K, N) weight becomes com.microsoft DynamicQuantizeMatMul (one
    node, its name kept so layer maps still find it): symmetric int8 weights, a scale per column (or one), the
    activation quantized to uint8 from its own range on every call. ORT's `quantize_dynamic` is not used: it
    rewrites every Gemm into MatMul + Add, which drops the static Gemm layers' QDQ and their node names."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    wanted = set(nodes)
    for n in g.node:
        if n.name not in wanted or n.op_type != "MatMul" or n.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
        amax = np.abs(w).max(axis=0) if per_channel else np.full(w.shape[1], np.abs(w).max(), np.float32)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        if not per_channel:
            scale = scale[:1]
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        wq, ws = f"{n.input[1]}_dq_w", f"{n.input[1]}_dq_scale"
        g.initializer.extend([numpy_helper.from_array(q, wq), numpy_helper.from_array(scale.reshape(-1), ws)])
        new = helper.make_node("DynamicQuantizeMatMul", [n.input[0], wq, ws], list(n.output), name=n.name,
                               domain="com.microsoft")
        n.CopyFrom(new)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model


def _check_runs(path: Path, feed: dict[str, np.ndarray]) -> None:
    from search.utils.ort import cpu_session

    try:
        sess = cpu_session(path)
        outs = sess.run(None, feed)
    except Exception as exc:
        raise TrialFailure(f"quantized model does not run in ONNX Runtime: {short_reason(exc)}") from exc
    if not all(np.all(np.isfinite(out)) for out in outs):
        raise TrialFailure("quantized model produces non-finite outputs")
