"""Surgery and inspection on QDQ graphs written by ONNX Runtime's quantizer.

ORT rewires every consumer of a quantized tensor to its DequantizeLinear output and names every
tensor verbosely; these passes restore float inputs for fp32 layers, report what ORT will
quantize anyway at load time, shrink the file, and read back each node's precision.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from search.compress.onnx_names import WEIGHTED_OPS


def float_inputs_for_fp32(model: onnx.ModelProto, fp32_nodes: set[str]) -> None:
    """Give fp32 nodes the float tensor ORT quantized for a neighbour (it rewires every consumer
    to the DequantizeLinear output). Only where the producer computes in float: a quantized
    producer emits 8 bits anyway, and a second consumer of its float output would stop ORT from
    fusing it into an integer kernel."""
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}

    def from_dq(node: onnx.NodeProto) -> bool:
        return any(getattr(prod.get(t), "op_type", None) == "DequantizeLinear" for t in node.input)

    for n in g.node:
        if n.name not in fp32_nodes:
            continue
        for i, t in enumerate(n.input):
            dq = prod.get(t)
            q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear":
                continue
            src = prod.get(q.input[0])
            if src is None or not from_dq(src):
                n.input[i] = q.input[0]
    _drop_dead_qdq(g)


def sandwiched_fp32(model: onnx.ModelProto, fp32_nodes: set[str], owner: dict[str, str]) -> dict[str, str]:
    """Flag fp32 layers whose input is dequantized and whose output only feeds QuantizeLinear
    (possibly through Relu/Clip, which ORT folds into the Q): ORT's WeightBiasQuantization then
    quantizes the layer's weights when the session loads, so it runs as int8 on ORT CPU although
    the file keeps it float."""
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)

    def only_q(tensor: str) -> bool:
        outs = consumers.get(tensor, [])
        return bool(outs) and all(c.op_type == "QuantizeLinear" or (c.op_type in ("Relu", "Clip")
                                                                   and only_q(c.output[0])) for c in outs)

    notes = {}
    for n in g.node:
        if n.op_type not in WEIGHTED_OPS or n.name not in fp32_nodes or n.name not in owner:
            continue
        if getattr(prod.get(n.input[0]), "op_type", None) == "DequantizeLinear" and only_q(n.output[0]):
            notes[owner[n.name]] = ("kept fp32 in the file, but its input and output are quantized: "
                                    "ONNX Runtime CPU quantizes it at load time")
    return notes


def _drop_dead_qdq(g: onnx.GraphProto) -> None:
    outputs = {o.name for o in g.output}
    while True:
        used = {t for n in g.node for t in n.input} | outputs
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            g.node.remove(n)


def compact(model: onnx.ModelProto) -> None:
    """Short tensor names, no value_info/metadata/doc strings; graph inputs/outputs keep names."""
    g = model.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in names:
            names[name] = np.base_repr(len(names), 36).lower()
        return names[name]

    for init in g.initializer:
        init.name = short(init.name)
        init.doc_string = ""
    for node in g.node:
        node.input[:] = [short(t) for t in node.input]
        node.output[:] = [short(t) for t in node.output]
        node.doc_string = ""
        del node.metadata_props[:]
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or not node.name:
            node.name = "q" + short(node.output[0])  # inserted nodes: names only need be unique
    _drop_conv_weight_zero_points(g)
    del g.value_info[:]
    del g.metadata_props[:]
    del model.metadata_props[:]
    g.doc_string = model.doc_string = ""


def _drop_conv_weight_zero_points(g: onnx.GraphProto) -> None:
    """Drop all-zero int8 zero points of Conv weights (optional input, zero by default; ORT still
    fuses QLinearConv). Gemm/MatMul keep theirs: without one ORT does not fuse QGemm."""
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, set[str]] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, set()).add(n.op_type)
    for n in g.node:
        if n.op_type != "DequantizeLinear" or len(n.input) < 3 or n.input[0] not in inits:
            continue
        zp = inits.get(n.input[2])
        if zp is None or zp.data_type != onnx.TensorProto.INT8 or consumers.get(n.output[0]) != {"Conv"}:
            continue
        if not numpy_helper.to_array(zp).any():
            del n.input[2]
    used = {t for n in g.node for t in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)


def node_precisions(model: onnx.ModelProto | str | os.PathLike) -> dict[str, tuple[str, str]]:
    """{node name: (activation type, weight type)} for each Conv/Gemm/MatMul/MatMulNBits node.

    A type is the integer type of the DequantizeLinear feeding that input ("uint8", "int4", ...),
    "int4-nbits" for MatMulNBits weights, or "float" when the input is not dequantized.
    """
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def kind(tensor: str) -> str:
        p = producer.get(tensor)
        if p is None or p.op_type != "DequantizeLinear":
            return "float"
        src = p.input[0]
        if src in inits:
            dtype = inits[src].data_type
        else:
            q = producer.get(src)
            zp = q.input[2] if q is not None and len(q.input) > 2 else ""
            dtype = inits[zp].data_type if zp in inits else onnx.TensorProto.UINT8
        return onnx.helper.tensor_dtype_to_np_dtype(dtype).name if dtype not in _INT4 else _INT4[dtype]

    out = {}
    for n in g.node:
        if n.op_type in WEIGHTED_OPS:
            out[n.name] = (kind(n.input[0]), kind(n.input[1]))
        elif n.op_type == "MatMulNBits":
            out[n.name] = (kind(n.input[0]), "int4-nbits")
    return out


_INT4 = {onnx.TensorProto.INT4: "int4", onnx.TensorProto.UINT4: "uint4"}


def nonfinite_nodes(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> set[str]:
    """Nodes that produce or consume a float tensor holding inf or NaN on `feed` (a few model inputs).

    An additive attention mask (-inf on padding) is the usual source: calibration would give its
    QuantizeLinear an infinite scale and the int8 model would output noise. Those nodes stay float; the
    layers around them quantize as planned. Found by running the float model once with every float
    intermediate as an output.
    """
    from search.utils.ort import cpu_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    floats = {v.name for v in probe.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    names = [o for n in probe.graph.node for o in n.output if o in floats and o not in known]
    probe.graph.output.extend(v for v in probe.graph.value_info if v.name in set(names))
    try:
        sess = cpu_session(probe.SerializeToString())
        outs = sess.run(None, feed)
    except Exception:  # noqa: BLE001 - a probe only: without it the quantizer runs as before
        return set()
    bad = {o.name for o, v in zip(sess.get_outputs(), outs, strict=True)
           if isinstance(v, np.ndarray) and v.dtype.kind == "f" and not np.all(np.isfinite(v))}
    return {n.name for n in model.graph.node if bad & (set(n.input) | set(n.output))}


MASK_FLOOR = 1e4  # exp(-1e4) is 0 in float32: an additive mask of -1e4 masks exactly as -inf does


def finite_masks(model: onnx.ModelProto) -> int:
    """Replace +-inf in the float constants (initializers, Constant nodes) by +-MASK_FLOOR, in place; returns
    how many tensors changed. For the histogram calibrators (percentile, entropy), which fail on an infinite
    tensor anywhere in the graph (ORT collects every float tensor, excluded nodes' too): an additive attention
    mask then holds -1e4, and softmax gives the masked keys the same zero weight. Run `nonfinite_nodes` first:
    those nodes still stay float."""

    def fix(t: onnx.TensorProto) -> bool:
        a = numpy_helper.to_array(t)
        if a.dtype.kind != "f" or np.all(np.isfinite(a)):
            return False
        t.CopyFrom(numpy_helper.from_array(np.nan_to_num(a, posinf=MASK_FLOOR, neginf=-MASK_FLOOR), t.name))
        return True

    changed = sum(fix(i) for i in model.graph.initializer)
    for n in model.graph.node:
        if n.op_type == "Constant":
            changed += sum(fix(a.t) for a in n.attribute if a.name == "value")
    return changed
