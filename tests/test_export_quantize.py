"""Export to ONNX and per-layer quantization: parity, layer mapping, exact QDQ placement, size, accuracy."""

from __future__ import annotations

import os

import archs
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _compress_fixtures import arch_export, digits, ort_logits, ort_top1, producers, tmp_dir, torch_threads
from torch import nn

from search.compress import (
    export_onnx,
    layer_node_map,
    node_precisions,
    quantizable_layers,
    quantize,
    weighted_nodes,
)
from search.errors import TrialFailure

ARCHS = ["mobilenet", "resnet", "vit"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def teacher_onnx(digits_task):
    return export_onnx(digits_task.teacher, digits_task.input_shape, tmp_dir() / "teacher-fp32.onnx")


def _calibration(n: int = 256) -> np.ndarray:
    return digits()["train_x"][:n]


@pytest.mark.parametrize("arch", ARCHS)
def test_export_matches_pytorch_with_dynamic_batch(arch):
    model, path = arch_export(arch)
    m = onnx.load(str(path))
    assert [i.name for i in m.graph.input] == ["input"] and [o.name for o in m.graph.output] == ["logits"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    keys = {p.key for n in m.graph.node for p in n.metadata_props}
    assert "pkg.torch.onnx.stack_trace" not in keys
    # every weighted node maps back to its module (per-layer bits and runs_as rely on it)
    modules = dict(model.named_modules())
    layers = weighted_nodes(m)
    weighted = {k for k, mod in modules.items() if isinstance(mod, (nn.Conv2d, nn.Linear))}
    assert weighted and weighted <= set(layers) <= set(modules), sorted(layers)
    for batch in (1, 7):
        x = torch.rand(batch, *archs.INPUT_SHAPE, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref = model(x).numpy()
        np.testing.assert_allclose(ort_logits(path, x.numpy()), ref, atol=1e-4, rtol=1e-4)


def test_fast_export_computes_the_same_and_falls_back_to_dynamo(tmp_path, monkeypatch):
    """fast=True (the default) is the TorchScript exporter: same outputs, and the same layers mapped to the same
    op types as the dynamo export (from node names instead of scope metadata); a model it cannot take, or whose
    trace the tracer warns about, goes the dynamo way."""
    from search.compress import export_onnx

    model = archs.build("mobilenet", seed=2).eval()
    path = export_onnx(model, archs.INPUT_SHAPE, tmp_path / "fast.onnx", fast=True)
    m = onnx.load(str(path))
    assert not {p.key for n in m.graph.node for p in n.metadata_props}  # not the dynamo exporter's graph
    dynamo = export_onnx(model, archs.INPUT_SHAPE, tmp_path / "dynamo.onnx", fast=False)
    ops = {k: [n.op_type for n in v] for k, v in weighted_nodes(m).items()}
    assert ops and ops == {k: [n.op_type for n in v] for k, v in weighted_nodes(dynamo).items()}
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    for batch in (1, 5):
        x = torch.rand(batch, *archs.INPUT_SHAPE, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            np.testing.assert_allclose(ort_logits(path, x.numpy()), model(x).numpy(), atol=1e-4, rtol=1e-4)
    from search.compress import export as export_module

    calls = []  # torch's TorchScript exporter refusing the model, as it does for some graphs
    monkeypatch.setattr(export_module, "_export_fast", lambda *a: calls.append(a) or False)
    path = export_onnx(model, archs.INPUT_SHAPE, tmp_path / "fallback.onnx", fast=True)
    assert calls and "pkg.torch.onnx.name_scopes" in {p.key for n in onnx.load(str(path)).graph.node
                                                      for p in n.metadata_props}


class _Unexportable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.flatten(1)[:, :10]
        return y if x.sum() > 0 else -y  # Python control flow on data: torch.export cannot trace it


def test_export_failure_is_a_short_trial_failure_and_export_is_quiet(capfd):
    with pytest.raises(TrialFailure, match="ONNX export failed at step 1/3: GuardOnDataDependent") as err:
        export_onnx(_Unexportable(), (1, 8, 8), tmp_dir() / "bad.onnx")
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
    export_onnx(archs.build("mobilenet"), archs.INPUT_SHAPE, tmp_dir() / "quiet.onnx")
    out, errs = capfd.readouterr()
    assert out == "" and errs == ""


def test_layer_node_map_uses_module_scopes():
    _, path = arch_export("mobilenet")
    lmap = layer_node_map(path)
    nodes = {n.name: n for n in onnx.load(str(path)).graph.node}
    # BatchNorm is folded into the conv; the node still belongs to the conv, not to the bn.
    assert [nodes[n].op_type for n in lmap["blocks.1.dw.conv"]] == ["Conv"]
    assert "blocks.1.dw.bn" not in lmap
    assert [nodes[n].op_type for n in lmap["classifier"]] == ["Gemm"]
    assert {nodes[n].op_type for n in lmap["normalize"]} == {"Sub", "Div"}
    convs = [n for n, m in archs.build("mobilenet").named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert quantizable_layers(path) == convs
    vit_layers = quantizable_layers(arch_export("vit")[1])
    assert {"blocks.0.attn.q", "blocks.0.attn", "blocks.1.fc2", "embed", "head"} <= set(vit_layers)
    assert [n.op_type for n in weighted_nodes(arch_export("vit")[1])["blocks.0.attn"]] == ["MatMul", "MatMul"]


def _fed_by_qdq(prod: dict, node: onnx.NodeProto) -> list[bool]:
    """For each of the node's first two inputs: does a DequantizeLinear (fed by Q or a weight) produce it?"""
    return [getattr(prod.get(t), "op_type", None) == "DequantizeLinear" for t in node.input[:2]]


def test_int8_teacher_qdq_exact_size_and_accuracy(digits_task, teacher_onnx):
    layers = quantizable_layers(teacher_onnx)
    lmap = layer_node_map(teacher_onnx)
    d = digits()
    fp32_top1 = ort_top1(teacher_onnx, d["val_x"], d["val_y"])

    # All int8: every layer's node takes a uint8 activation and int8 weights through DequantizeLinear.
    r = quantize(teacher_onnx, tmp_dir() / "teacher-int8.onnx", {n: 8 for n in layers}, _calibration())
    assert r.quantized == {n: 8 for n in layers} and not r.skipped
    prec = node_precisions(r.path)
    assert all(prec[n] == ("uint8", "int8") for layer in layers for n in lmap[layer])
    # int8 weights: under 0.4 of the fp32 file (29 KB of 76 KB here; 0.33 of dynamo's 86 KB, which carries scope
    # metadata; the TorchScript file carries the Clip bounds as Constant nodes)
    assert os.path.getsize(r.path) <= 0.4 * os.path.getsize(teacher_onnx)
    assert ort_top1(r.path, d["val_x"], d["val_y"]) >= fp32_top1 - 0.01

    # Mixed: QDQ exactly on the layers marked 8; none on the weights of those marked 32, and none at
    # all inside an fp32 region (the first three layers, whose input is the float graph input).
    bits = {n: (32 if i < 3 or i % 2 else 8) for i, n in enumerate(layers)}
    r = quantize(teacher_onnx, tmp_dir() / "teacher-mixed.onnx", bits, _calibration())
    prod, by_name = producers(r.path)
    for i, layer in enumerate(layers):
        for name in lmap[layer]:
            fed = _fed_by_qdq(prod, by_name[name])
            if bits[layer] == 8:
                assert fed == [True, True], layer
            elif i < 3:
                assert fed == [False, False], layer
            else:
                assert fed[1] is False, layer  # float weights; the input is whatever its producer emits
    assert r.quantized == {n: 8 for n, b in bits.items() if b == 8}
    assert ort_top1(r.path, d["val_x"], d["val_y"]) >= fp32_top1 - 0.02
    # A lone fp32 conv between quantized tensors is quantized by ORT at load time; the notes say
    # which, and ORT's optimized graph agrees (integer convs = int8 convs + noted ones).
    assert set(r.notes) <= {n for n, b in bits.items() if b == 32}
    assert _integer_kernels(r.path) == sum(bits[n] == 8 for n in layers) + len(r.notes)

    # All 32: the file is copied as is.
    r = quantize(teacher_onnx, tmp_dir() / "teacher-32.onnx", {n: 32 for n in layers}, _calibration())
    assert r.path.read_bytes() == teacher_onnx.read_bytes() and r.quantized == {}


# MatMulNBits takes a float input (it quantizes it to int8 itself): whatever its producer emits.
def _integer_kernels(path) -> int:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_dir() / "ort-optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    return sum(op in ("QLinearConv", "QGemm", "QLinearMatMul") for op in ops)


_EXPECTED = {16: {("uint16", "int8")}, 8: {("uint8", "int8")},
             4: {("uint8", "int4")} | {(a, "int4-nbits") for a in ("float", "uint8", "uint16")}}


@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_32_16_8_4_runs_and_each_layer_gets_its_precision(arch):
    model, path = arch_export(arch)
    layers = quantizable_layers(path)
    bits = {n: (32, 16, 8, 4)[i % 4] for i, n in enumerate(layers)}
    r = quantize(path, tmp_dir() / f"{arch}-mixed.onnx", bits, _calibration(64))
    x = digits()["val_x"][:16]
    out = ort_logits(r.path, x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert np.abs(out - ref).max() < 0.5 * np.abs(ref).max()  # quantized, not broken
    prec = node_precisions(r.path)
    prod, by_name = producers(r.path)
    weighted = {layer: [n.name for n in ns] for layer, ns in weighted_nodes(path).items()}
    for layer, b in bits.items():
        for name in weighted[layer]:
            if b == 32:
                assert _fed_by_qdq(prod, by_name[name])[1] is False, layer
                continue
            if layer not in r.notes:  # activation x activation MatMul asked for 4 bits runs as A8
                assert prec[name] in _EXPECTED[b], (layer, b, prec[name])
    assert set(r.quantized) == {n for n, b in bits.items() if b != 32}
    if arch == "vit":  # 4-bit MatMul layers with a constant weight become MatMulNBits
        assert any(p[1] == "int4-nbits" for p in prec.values())
    assert not r.skipped
    for uniform in (16, 4):  # one bit-width everywhere is fine too
        out_path = tmp_dir() / f"{arch}-all{uniform}.onnx"
        r = quantize(path, out_path, dict.fromkeys(layers, uniform), _calibration(64))
        assert np.isfinite(ort_logits(r.path, x)).all() and set(r.quantized) == set(layers)


def test_skips_layers_without_weights_and_other_calibration_methods(tmp_path):
    _, path = arch_export("resnet")
    cal = _calibration(32)
    base = quantize(path, tmp_path / "minmax.onnx", {"stem.conv": 8, "layers.0.conv1.conv": 8}, cal)
    for method in ("entropy", "percentile"):
        r = quantize(path, tmp_path / f"{method}.onnx", {"stem.conv": 8, "normalize": 8, "pool": 8}, cal,
                     method=method)
        assert r.quantized == {"stem.conv": 8}
        assert set(r.skipped) == {"normalize", "pool"} and "no Conv/Gemm/MatMul" in r.skipped["pool"]
        assert np.isfinite(ort_logits(r.path, cal)).all()
    assert base.quantized == {"stem.conv": 8, "layers.0.conv1.conv": 8}
    with pytest.raises(ValueError, match="bits"):
        quantize(path, tmp_path / "bad.onnx", {"stem.conv": 2}, cal)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 3e38])
def test_a_layer_ort_cannot_quantize_is_a_short_trial_failure(teacher_onnx, tmp_path, bad):
    # ONNX Runtime's quantizer cannot compute a scale for a non-finite activation range (its own
    # "scale issue" assertion): the trial fails with a reason instead of crashing the study.
    calibration = np.full_like(_calibration(16), bad)
    layers = quantizable_layers(str(teacher_onnx))
    with pytest.raises(TrialFailure, match=r"^quantization failed: AssertionError: scale issue$"):
        quantize(teacher_onnx, tmp_path / "q.onnx", {k: 8 for k in layers}, calibration)
