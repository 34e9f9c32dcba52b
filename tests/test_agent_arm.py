"""The agent on ARM: Debian's arm64 Python with ONNX Runtime's aarch64 wheel under qemu-user (the root is built by
`make test-deps` as root: benchmarks/bench_arm_qemu.py). A functional check of the device path on another CPU
architecture, never a timing (every instruction is emulated): the agent reports aarch64, measures, answers with
the graph its own ONNX Runtime build optimised, and runs a model with outputs that match this machine's."""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter

import numpy as np
import onnx
import pytest
from _measure_fixtures import INPUT_SHAPE, cnn
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_arm_qemu as arm  # noqa: E402 - the arm64 root and the agent under qemu, as the benchmark runs them
from _boards import _free_port  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def arm_agent(tmp_path_factory):
    if os.geteuid() != 0 or shutil.which("qemu-aarch64") is None:
        pytest.skip("needs root and qemu-user (make test-deps installs it as root)")
    if not (arm.DEFAULT_ROOT / "sysroot" / "usr" / "lib" / "python3" / "dist-packages" / "onnxruntime").exists():
        pytest.skip(f"no arm64 root at {arm.DEFAULT_ROOT}: `make test-deps` as root builds it")
    wrapper = arm.prepare(arm.DEFAULT_ROOT)  # built: nothing is fetched
    agent_dir = arm.agent_files(tmp_path_factory.mktemp("arm-agent"))
    port = _free_port()
    with arm.agent(arm.DEFAULT_ROOT, wrapper, agent_dir, port) as (proc, log):
        yield port, log


def test_an_arm_agent_measures_optimises_and_runs_a_model_as_the_board(arm_agent, tmp_path, monkeypatch):
    import onnxruntime as ort

    from search.config import load_profile
    from search.measure.remote import RemoteBackend

    port, log = arm_agent
    monkeypatch.setenv("HWSEARCH_ARM_TOKEN", arm.TOKEN)
    profile = tmp_path / "arm.yaml"
    profile.write_text(arm.profile_yaml(port))
    board = RemoteBackend(load_profile(profile))
    assert board.info()["machine"] == "aarch64"
    assert "Linux aarch64" in log.read_text().splitlines()[0]  # the banner names the board
    model = tmp_path / "cnn.onnx"
    onnx.save(cnn(width=0.5), model)
    m = board.measure(model, rounds=1, max_rounds=1)
    assert "aarch64" in m.device and m.latency.p50_ms > 0 and m.memory_total_mb > 0
    # The board's own optimised graph: ARM's CPU provider fuses Conv + Relu into FusedConv and has no NCHWc
    # layout (this x86 host's AVX kernels reorder into NCHWc blocks).
    graph, where = board.optimized_model(model)
    ops = Counter((n.domain, n.op_type) for n in onnx.load_from_string(graph).graph.node)
    assert "aarch64" in where["device"]
    assert ops[("com.microsoft", "FusedConv")] > 0 and not any(d == "com.microsoft.nchwc" for d, _ in ops)
    # Its outputs on a few inputs, against this machine's: within the 2% that export --verify allows, same top-1.
    x = np.random.default_rng(0).random((4, *INPUT_SHAPE), dtype=np.float32)
    outs, ran = board.run_outputs(model, {"input": x})
    here = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    there = outs["logits"]
    assert "aarch64" in ran["device"]
    assert np.abs(there - here).max() <= 0.02 * np.abs(here).max()
    assert (there.argmax(1) == here.argmax(1)).all()
