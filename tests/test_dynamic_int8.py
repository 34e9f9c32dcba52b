"""Dynamic int8: a profile declares `int8-dynamic` for MatMul; its 8-bit MatMul layers then quantize their
activations at run time (DynamicQuantizeMatMul), the static QDQ layers (Gemm, Conv) stay as they were, and
what runs is read from ONNX Runtime's optimised graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from zoo import TinyBert, keyword_data

from search.compress import compare, export_onnx, quantize, runs_as
from search.compress.onnx_names import weighted_nodes
from search.config.profile import DeviceProfile
from search.errors import ConfigError


@pytest.fixture(scope="module")
def bert_fp32(tmp_path_factory) -> tuple[Path, np.ndarray]:
    torch.manual_seed(0)
    x = torch.as_tensor(keyword_data(256, 1)[0])
    path = export_onnx(TinyBert().eval(), x[:4], tmp_path_factory.mktemp("dyn") / "fp32.onnx")
    return path, x.numpy()


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_a_profile_declares_dynamic_int8_per_matmul_only():
    p = DeviceProfile(name="p", precisions={"Conv": ("fp32", "int8"), "MatMul": ("fp32", "int8-dynamic", "int4")})
    assert p.dynamic_ops() == {"MatMul"} and p.bits(["MatMul"]) == (32, 8, 4) and p.bits(["Conv"]) == (32, 8)
    with pytest.raises(ValueError, match="per op type, for MatMul only"):
        DeviceProfile(name="p", precisions={"Gemm": ("fp32", "int8-dynamic")})
    with pytest.raises(ValueError, match="per op type"):
        DeviceProfile(name="p", precisions=("fp32", "int8-dynamic"))
    with pytest.raises(ValueError, match="lists int8 and int8-dynamic"):
        DeviceProfile(name="p", precisions={"MatMul": ("fp32", "int8", "int8-dynamic")})


def test_the_shipped_profile_error_names_the_field(tmp_path: Path):
    from search.config import load_profile

    f = tmp_path / "bad.yaml"
    f.write_text("name: bad\nprecisions:\n  Gemm: [fp32, int8-dynamic]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*precisions.*int8-dynamic"):
        load_profile(f)


def test_matmul_layers_quantize_dynamically_and_gemm_layers_stay_static(bert_fp32, tmp_path: Path):
    fp32, x = bert_fp32
    layers = list(weighted_nodes(fp32))
    bits = dict.fromkeys(layers, 8)
    q = quantize(fp32, tmp_path / "dyn.onnx", bits, x[:64], dynamic_ops={"MatMul"})
    ffn = [k for k in layers if k.endswith(("intermediate", "output"))]  # MatMul layers (3-D inputs)
    gemm = ["pooler", "classifier"]  # 2-D inputs: Gemm, static QDQ
    assert set(ffn) <= q.dynamic and not set(gemm) & q.dynamic
    runs = runs_as(q.path, fp32)
    assert all(runs[k].kernel == "int8-dynamic" and "com.microsoft:DynamicQuantizeMatMul" in runs[k].op_types
               for k in ffn), {k: runs[k] for k in ffn}
    assert all(runs[k].kernel == "int8" for k in gemm), {k: runs[k] for k in gemm}
    rec = compare(bits, runs, q.dynamic)
    assert not any(rec[k]["differs"] for k in ffn + gemm)
    # attention: its weight product is dynamic, its score product (activation x activation) stays float, as noted
    att = [k for k in layers if k.endswith("attention")]
    assert att and all("stay float" in q.notes[k] for k in att)
    # the same plan, static: every MatMul layer is a QLinearMatMul, nothing is dynamic
    s = quantize(fp32, tmp_path / "static.onnx", bits, x[:64])
    assert not s.dynamic and all(v.kernel == "int8" for v in runs_as(s.path, fp32).values())
    # dynamic int8 stays close to the float outputs (no calibrated range to clip)
    ref, out = _run(fp32, x[:128]), _run(q.path, x[:128])
    assert (ref.argmax(1) == out.argmax(1)).mean() > 0.95
