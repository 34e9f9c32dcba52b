"""Small ONNX models for the measurement tests, built with onnx.helper (fast; no torch import).

`models()` builds every model once per process into a temporary folder (the module is imported once, so
the memo is shared by all test files) and returns their paths by name.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
INPUT_SHAPE = (1, 28, 28)  # one Fashion-MNIST-like sample
# MobileNetV2-ish inverted residual blocks: (expand channels, out channels, stride)
BLOCKS = ((64, 32, 1), (96, 48, 2), (144, 48, 1), (192, 64, 2))


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def _name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}_{self.n}"

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
             relu: bool = True) -> str:
        w, b, y = self._name("w"), self._name("b"), self._name("conv")
        fan_in = cin // group * k * k
        weight = self.rng.normal(0, np.sqrt(2.0 / fan_in), (cout, cin // group, k, k)).astype(np.float32)
        self.inits += [numpy_helper.from_array(weight, w),
                       numpy_helper.from_array(self.rng.normal(0, 0.05, cout).astype(np.float32), b)]
        self.nodes.append(helper.make_node("Conv", [x, w, b], [y], kernel_shape=[k, k], strides=[stride] * 2,
                                           pads=[k // 2] * 4, group=group, name=y))
        if not relu:
            return y
        r = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [y], [r], name=r))
        return r


def cnn(seed: int = 0, width: float = 2.0, num_classes: int = 10) -> onnx.ModelProto:
    """A MobileNetV2-style CNN (stem, 4 inverted residual blocks, head), dynamic batch 'N'."""
    b = _Builder(seed)
    c = int(32 * width)
    x = b.conv("input", INPUT_SHAPE[0], c, 3)
    for expand, out, stride in BLOCKS:
        e, o = int(expand * width), int(out * width)
        h = b.conv(x, c, e, 1)
        h = b.conv(h, e, e, 3, stride=stride, group=e)
        h = b.conv(h, e, o, 1, relu=False)
        if stride == 1 and o == c:
            y = b._name("add")
            b.nodes.append(helper.make_node("Add", [x, h], [y], name=y))
            h = y
        x, c = h, o
    x = b.conv(x, c, int(128 * width), 1)
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    b.nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat"))
    fc_w = b.rng.normal(0, 0.05, (num_classes, int(128 * width))).astype(np.float32)
    fc_b = np.zeros(num_classes, np.float32)
    b.inits += [numpy_helper.from_array(fc_w, "fc_w"), numpy_helper.from_array(fc_b, "fc_b")]
    b.nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"))
    graph = helper.make_graph(
        b.nodes, "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *INPUT_SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])],
        b.inits)
    return _model(graph)


def _model(graph: onnx.GraphProto, opsets: tuple[tuple[str, int], ...] = (("", OPSET),)) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    m.ir_version = 8
    return m


def quantize_int8(fp32_path: Path, out_path: Path) -> None:
    """Static QDQ, uint8 activations / int8 per-channel weights (the recipe of FACTS)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            shape = (1, *INPUT_SHAPE)
            self.batches = iter([{"input": rng.random(shape, dtype=np.float32)} for _ in range(8)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    quantize_static(str(fp32_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def memory_hog(gigabytes: int = 4) -> onnx.ModelProto:
    """Expands its [N, 1, 1] input to N x `gigabytes` GB at run time (not constant-foldable)."""
    cols = 1 << 14
    rows = gigabytes * (1 << 30) // (4 * cols)
    shape = numpy_helper.from_array(np.array([1, rows, cols], np.int64), "shape")
    node = helper.make_node("Expand", ["x", "shape"], ["y"], name="expand")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", rows, cols])
    graph = helper.make_graph([node], "hog", [x], [y], [shape])
    return _model(graph)


def hang() -> onnx.ModelProto:
    """A Loop with an enormous trip count: never finishes in a test's lifetime."""
    body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "one"], ["v_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.ones(1, np.float32), "one")])
    inits = [numpy_helper.from_array(np.array(10**15, np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "cond")]
    loop = helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([loop], "hang", [x], [y], inits)
    return _model(graph)


def tiny(fixed_batch: bool = False, domain: str = "") -> onnx.ModelProto:
    """x*2 on a [N, 4] input; `domain` puts the node in another op domain (for the agent's domain check)."""
    two = numpy_helper.from_array(np.full(4, 2, np.float32), "two")
    node = helper.make_node("Mul", ["x", "two"], ["y"], domain=domain)
    dim: int | str = 1 if fixed_batch else "N"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim, 4])
    graph = helper.make_graph([node], "tiny", [x], [y], [two])
    opsets = (("", OPSET),) + (((domain, 1),) if domain else ())
    return _model(graph, opsets)


@functools.lru_cache(maxsize=1)
def models() -> dict[str, Path]:
    """Build all fixture models once; returns name -> path."""
    root = Path(tempfile.mkdtemp(prefix="hwsearch-measure-"))
    atexit.register(shutil.rmtree, root, True)
    out: dict[str, Path] = {}

    def save(name: str, m: onnx.ModelProto) -> None:
        out[name] = root / f"{name}.onnx"
        onnx.save(m, out[name])

    save("fp32", cnn(seed=0))
    save("fp32_other_weights", cnn(seed=1))
    save("fp32_narrow", cnn(seed=0, width=1.0))
    out["int8"] = root / "int8.onnx"
    quantize_int8(out["fp32"], out["int8"])
    save("hog", memory_hog())
    save("hang", hang())
    save("tiny", tiny())
    save("tiny_fixed", tiny(fixed_batch=True))
    save("custom_domain", tiny(domain="com.example"))
    ext = root / "external"
    ext.mkdir()
    onnx.save(cnn(seed=0), ext / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.data", size_threshold=0)
    out["external"] = ext / "model.onnx"
    return out


@contextlib.contextmanager
def agent_serving(token: str, **settings):
    """A real agent on a free loopback port, served by a thread; stopping it must not hang."""
    from search.measure import agent

    srv = agent.make_server("127.0.0.1", 0, token, **settings)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        started = time.monotonic()
        srv.shutdown()
        srv.server_close()
        assert time.monotonic() - started < 5, "shutdown() hung"
