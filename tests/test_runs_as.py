"""`runs_as`: what ONNX Runtime actually runs per layer, against ORT's optimised graph read here independently.

Two models built here: Conv->Conv->Conv->Gemm and a small transformer block (Linear q/k/v/o as MatMul with
constant weights, hand-written attention, LayerNorm, MLP, a Gemm head). Each layer's weight is scaled by its
own factor (1.5**i), so the weight a node of the optimised graph reads (dequantized here with numpy) tells
which layer it belongs to without any of runs_as's name rules. The known facts of this CPU are asserted as
such: 8-bit Conv/Gemm/MatMul run integer kernels, 16-bit layers run float and undo an 8-bit Conv
neighbour's fusion, int4 Conv/Gemm run float on dequantized weights, int4 MatMul runs MatMulNBits, and an
fp32 Conv between quantized tensors is quantized by the session.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _compress_fixtures import tmp_dir, torch_threads
from onnx import numpy_helper
from torch import nn

from search.compress import LayerRun, compare, export_onnx, quantize, runs_as, weighted_nodes
from search.compress.runs import classify, optimized_model

CNN_SHAPE = (3, 8, 8)
TF_SHAPE = (8, 32)  # tokens x dim (float input, no embedding)
# Op types that compute a layer (anything else in the optimised graph is plumbing or glue).
COMPUTE = {"Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul", "QLinearConv", "QGemm",
           "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "ConvInteger", "MatMulNBits",
           "DynamicQuantizeMatMul"}
INTEGER = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "ConvInteger",
           "DynamicQuantizeMatMul"}


def _scale_weights(model: nn.Module) -> nn.Module:
    """Give every layer its own weight scale (1.5**i): a weight's norm then names its layer."""
    with torch.no_grad():
        for i, m in enumerate(x for x in model.modules() if isinstance(x, (nn.Conv2d, nn.Linear))):
            m.weight.mul_(1.5**i)
    return model.eval()


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 48, 3, padding=1)
        self.fc = nn.Linear(48 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        return self.fc(torch.flatten(x, 1))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        split = (b, t, self.heads, d // self.heads)
        q, k, v = (f(x).reshape(split).transpose(1, 2) for f in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1) @ v
        return self.o(a.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        x = x + self.fc2(torch.relu(self.fc1(self.ln2(x))))
        return self.head(x.mean(dim=1))


@functools.cache
def exported(name: str) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model, shape = (ConvNet(), CNN_SHAPE) if name == "cnn" else (Block(), TF_SHAPE)
    model = _scale_weights(model)
    with torch_threads(1):
        return model, export_onnx(model, shape, tmp_dir() / f"runs-{name}-fp32.onnx")


def quantized(name: str, bits: dict[str, int], tag: str):
    model, fp32 = exported(name)
    shape = CNN_SHAPE if name == "cnn" else TF_SHAPE
    calib = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
    return quantize(fp32, tmp_dir() / f"runs-{name}-{tag}.onnx", bits, calib)


# ------------------------------------------------------------------------------------------------ independent view
def ort_optimised(path: Path, level: str = "ORT_ENABLE_ALL") -> onnx.ModelProto:
    """ORT's optimised graph, saved by a session built here (not with runs.optimized_model)."""
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "o.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def _arr(g: onnx.GraphProto, name: str) -> np.ndarray | None:
    init = next((i for i in g.initializer if i.name == name), None)
    return None if init is None else numpy_helper.to_array(init).astype(np.float64)


def _dequant(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int | None) -> np.ndarray:
    zp = np.zeros_like(scale) if zp is None else zp
    if scale.size > 1:
        if axis is None:
            axis = [d for d, n in enumerate(q.shape) if n == scale.size][0]
        shape = [1] * q.ndim
        shape[axis] = scale.size
        scale, zp = scale.reshape(shape), (zp if zp.size == 1 else zp.reshape(shape))
    return (q - zp) * scale


def effective_weight(node: onnx.NodeProto, g: onnx.GraphProto) -> np.ndarray | None:
    """The float weight a node computes with, decoded with numpy; None where it has none (activation x
    activation) or it is packed (MatMulNBits)."""
    prod = {o: n for n in g.node for o in n.output}
    if node.op_type in ("QLinearConv", "QGemm", "QLinearMatMul"):
        q, s, z = (_arr(g, t) for t in node.input[3:6])
        axis = 0 if node.op_type == "QLinearConv" else None
        return None if q is None else _dequant(q, s, z, axis)
    if node.op_type == "MatMulNBits":
        return None
    w = node.input[1]
    p = prod.get(w)
    if p is not None and p.op_type == "DequantizeLinear":
        q = _arr(g, p.input[0])
        if q is None:
            return None
        s = _arr(g, p.input[1])
        z = _arr(g, p.input[2]) if len(p.input) > 2 and p.input[2] else None
        axis = next((a.i for a in p.attribute if a.name == "axis"), 1)
        return _dequant(q, s, z, axis if s.size > 1 else None)
    return _arr(g, w)


def torch_norms(name: str) -> dict[str, float]:
    model, _ = exported(name)
    return {k: float(m.weight.detach().double().norm()) for k, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def check_against_ort(name: str, path: Path, runs: dict[str, LayerRun], level: str = "ORT_ENABLE_ALL") -> None:
    """Every compute node of ORT's optimised graph is claimed by exactly one layer, with its real op type,
    and a node that reads a weight reads (within quantization error) that layer's weight."""
    g = ort_optimised(path, level).graph
    nodes = {n.name: n for n in g.node}
    compute = {n.name for n in g.node if n.op_type in COMPUTE}
    claimed = [n for r in runs.values() for n in r.nodes]
    assert sorted(claimed) == sorted(compute), "every compute node belongs to exactly one layer"
    norms = torch_norms(name)
    for layer, r in runs.items():
        ops = {n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}:{n.op_type}"
               for n in map(nodes.__getitem__, r.nodes)}
        assert r.op_types == tuple(sorted(ops)), layer
        for node in map(nodes.__getitem__, r.nodes):
            w = effective_weight(node, g)
            if w is None or layer not in norms:
                continue
            closest = min(norms, key=lambda k: abs(np.log(norms[k] / np.linalg.norm(w))))
            assert closest == layer, f"{node.name} ({node.op_type}) reads {closest}'s weight, not {layer}'s"
            assert np.linalg.norm(w) == pytest.approx(norms[layer], rel=0.1)


def kernel_by_hand(node: onnx.NodeProto, g: onnx.GraphProto) -> str:
    """The kernel class of one optimised node, decided here from its op type and its weight's producer."""
    if node.op_type == "MatMulNBits":
        return "int4"
    if node.op_type in INTEGER:
        return "int8"
    prod = {o: n for n in g.node for o in n.output}
    p = prod.get(node.input[1])
    while p is not None and p.op_type in ("Transpose", "Reshape"):
        p = prod.get(p.input[0])
    return "float-dequant" if p is not None and p.op_type == "DequantizeLinear" else "fp32"


def check_kernels(path: Path, runs: dict[str, LayerRun], level: str = "ORT_ENABLE_ALL") -> None:
    g = ort_optimised(path, level).graph
    nodes = {n.name: n for n in g.node}
    order = ["int4", "int8", "float-dequant", "fp32"]
    for layer, r in runs.items():
        worst = max((kernel_by_hand(nodes[n], g) for n in r.nodes), key=order.index)
        assert r.kernel == worst, layer


def run_and_check(name: str, bits: dict[str, int], tag: str) -> tuple[dict[str, LayerRun], dict[str, dict]]:
    _, fp32 = exported(name)
    q = quantized(name, bits, tag)
    runs = runs_as(q.path, fp32)
    assert set(runs) == set(weighted_nodes(fp32))
    check_against_ort(name, q.path, runs)
    check_kernels(q.path, runs)
    return runs, compare(bits, runs)


# ------------------------------------------------------------------------------------------------ CNN
def test_cnn_uniform_int8_runs_integer_kernels():
    runs, cmp = run_and_check("cnn", {"conv1": 8, "conv2": 8, "conv3": 8, "fc": 8}, "all8")
    assert {k: r.kernel for k, r in runs.items()} == dict.fromkeys(["conv1", "conv2", "conv3", "fc"], "int8")
    assert runs["conv1"].op_types == ("com.microsoft:QLinearConv",)
    assert runs["fc"].op_types == ("com.microsoft:QGemm",)
    assert not any(v["differs"] for v in cmp.values())


def test_cnn_fp32_runs_float_nchwc():
    runs, cmp = run_and_check("cnn", {}, "plain")
    assert {r.kernel for r in runs.values()} == {"fp32"}
    assert runs["conv2"].op_types == ("com.microsoft.nchwc:Conv",)  # named "<output>_nchwc", weight reordered
    assert runs["fc"].op_types == ("Gemm",)
    assert not any(v["differs"] for v in cmp.values())


def test_cnn_16_bit_conv_runs_float_and_undoes_its_int8_neighbour():
    runs, cmp = run_and_check("cnn", {"conv1": 8, "conv2": 16, "conv3": 8, "fc": 4}, "mixed16")
    assert runs["conv2"].kernel == "float-dequant"  # A16W8: float Conv between Q/DQ
    assert runs["conv2"].op_types == ("Conv",)
    assert runs["conv1"].kernel == "float-dequant"  # its output is quantized at 16 bits: no QLinearConv
    assert runs["conv3"].kernel == "int8"
    assert runs["fc"].kernel == "float-dequant"  # int4 Gemm: weights dequantized every call
    assert cmp["conv1"] == {"requested": 8, "runs_as": "float-dequant", "differs": True}
    assert cmp["conv2"] == {"requested": 16, "runs_as": "float-dequant", "differs": True}
    assert cmp["conv3"] == {"requested": 8, "runs_as": "int8", "differs": False}
    assert cmp["fc"]["differs"]
    # The same conv1 at 8 bits next to an 8-bit conv2 runs an integer kernel: the 16 did it.
    alone, _ = run_and_check("cnn", {"conv1": 8, "conv2": 8, "conv3": 8, "fc": 4}, "mixed8")
    assert alone["conv1"].kernel == "int8"


def test_cnn_int4_conv_runs_float_on_dequantized_weights():
    runs, cmp = run_and_check("cnn", {"conv1": 4, "conv2": 4}, "int4conv")
    assert runs["conv1"].kernel == runs["conv2"].kernel == "float-dequant"
    assert runs["conv1"].op_types == ("Conv",)
    assert cmp["conv1"] == {"requested": 4, "runs_as": "float-dequant", "differs": True}
    assert runs["fc"].kernel == "fp32" and not cmp["fc"]["differs"]


def test_cnn_fp32_conv_between_int8_layers_is_quantized_by_the_session():
    q = quantized("cnn", {"conv1": 8, "conv2": 32, "conv3": 8, "fc": 8}, "sandwich")
    assert "conv2" in q.notes  # quantize's own warning, from the file
    runs, cmp = run_and_check("cnn", {"conv1": 8, "conv2": 32, "conv3": 8, "fc": 8}, "sandwich")
    assert runs["conv2"].kernel == "int8"
    assert cmp["conv2"] == {"requested": 32, "runs_as": "int8", "differs": True}


def test_cnn_optimisation_level_decides_the_kernel():
    _, fp32 = exported("cnn")
    q = quantized("cnn", {"conv1": 8, "conv2": 8, "conv3": 8, "fc": 8}, "all8")
    seen = {}
    for level, ort_level in (("all", "ORT_ENABLE_ALL"), ("extended", "ORT_ENABLE_EXTENDED"),
                             ("basic", "ORT_ENABLE_BASIC"), ("disable", "ORT_DISABLE_ALL")):
        runs = runs_as(q.path, fp32, graph_optimization=level)
        check_against_ort("cnn", q.path, runs, ort_level)
        check_kernels(q.path, runs, ort_level)
        seen[level] = runs["conv2"].kernel
    # QDQ groups fuse into integer kernels at the extended level; below it the file's DQ -> Conv runs.
    assert seen == {"all": "int8", "extended": "int8", "basic": "float-dequant", "disable": "float-dequant"}
    with pytest.raises(ValueError, match="graph_optimization"):
        runs_as(q.path, fp32, graph_optimization="max")


# ------------------------------------------------------------------------------------------------ transformer
LINEARS = ["attn.q", "attn.k", "attn.v", "attn.o", "fc1", "fc2"]


def test_transformer_int4_matmul_runs_matmulnbits_gemm_does_not():
    bits = {**dict.fromkeys(LINEARS, 4), "head": 4}
    runs, cmp = run_and_check("tf", bits, "all4")
    for layer in LINEARS:
        assert runs[layer].kernel == "int4" and runs[layer].op_types == ("com.microsoft:MatMulNBits",), layer
        assert not cmp[layer]["differs"]
    assert runs["head"].kernel == "float-dequant" and runs["head"].op_types == ("Gemm",)
    assert cmp["head"]["differs"]
    assert runs["attn"].kernel == "fp32" and len(runs["attn"].nodes) == 2  # q@k^T and a@v, not in the plan


def test_transformer_int8_and_16():
    runs, cmp = run_and_check("tf", {**dict.fromkeys(LINEARS, 8), "attn": 8, "head": 8}, "all8")
    assert {r.kernel for r in runs.values()} == {"int8"}
    assert runs["attn.q"].op_types == ("QLinearMatMul",)
    assert len(runs["attn"].nodes) == 2
    assert not any(v["differs"] for v in cmp.values())
    runs, cmp = run_and_check("tf", {**dict.fromkeys(LINEARS, 16), "head": 16}, "all16")
    for layer in [*LINEARS, "head"]:
        assert runs[layer].kernel == "float-dequant", layer
        assert cmp[layer]["differs"]


def test_transformer_mixed_plan():
    bits = {"attn.q": 4, "attn.k": 8, "attn.v": 16, "attn.o": 32, "fc1": 8, "fc2": 4, "head": 8, "attn": 8}
    runs, cmp = run_and_check("tf", bits, "mixed")
    assert runs["attn.q"].kernel == runs["fc2"].kernel == "int4"
    assert runs["attn.k"].kernel == runs["fc1"].kernel == "int8"
    assert runs["attn.v"].kernel == "float-dequant"
    assert runs["attn.o"].kernel == "fp32"
    assert cmp["attn.v"]["differs"] and not cmp["attn.o"]["differs"]
    # A layer with two nodes reports both op types and the worse kernel.
    assert len(runs["attn"].nodes) == 2


# ------------------------------------------------------------------------------------------------ units
def test_compare_judges_by_kernel():
    runs = {"a": LayerRun("int8", ("QLinearConv",)), "b": LayerRun("float-dequant", ("Conv",)),
            "c": LayerRun("int8", ("QLinearConv",)), "d": LayerRun("int16", ("QLinearMatMul",)),
            "e": LayerRun("int4", ("com.microsoft:MatMulNBits",))}
    got = compare({"a": 8, "b": 16, "d": 16, "e": 4, "gone": 8}, runs)
    assert got["a"] == {"requested": 8, "runs_as": "int8", "differs": False}
    assert got["b"]["differs"] and got["b"]["runs_as"] == "float-dequant"
    assert got["c"] == {"requested": 32, "runs_as": "int8", "differs": True}  # not in the plan: fp32 asked
    assert not got["d"]["differs"] and not got["e"]["differs"]
    assert got["gone"] == {"requested": 8, "runs_as": "unknown", "differs": True}


def test_renamed_nodes_are_found_by_their_weights():
    """Optimised nodes and initializers under names no rule knows (NCHWc convs, a Gemm): the weight values
    (reordered and zero-padded by NCHWc) still name the layer; with other weights the layer is "unknown",
    not guessed."""
    _, fp32 = exported("cnn")
    q = quantized("cnn", {}, "plain")
    model = onnx.load(str(q.path))
    layer_nodes = {k: [n.name for n in v] for k, v in weighted_nodes(fp32).items()}
    opt = optimized_model(q.path)
    g = opt.graph
    renamed = {init.name: f"w{i}" for i, init in enumerate(g.initializer)}
    for init in g.initializer:
        init.name = renamed[init.name]
    for i, n in enumerate(g.node):
        n.name = f"renamed_{i}"
        n.input[:] = [renamed.get(t, t) for t in n.input]
    runs = classify(model, opt, layer_nodes)
    assert {k: r.kernel for k, r in runs.items()} == dict.fromkeys(layer_nodes, "fp32")
    assert runs["conv2"].op_types == ("com.microsoft.nchwc:Conv",)
    assert runs["fc"].op_types == ("Gemm",)
    conv2 = next(n for n in g.node if n.name == runs["conv2"].nodes[0])
    weight = next(i for i in g.initializer if i.name == conv2.input[1])
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 2, weight.name))
    runs = classify(model, opt, layer_nodes)
    assert runs["conv2"] == LayerRun("unknown", ())
    assert runs["conv1"].kernel == runs["fc"].kernel == "fp32"
