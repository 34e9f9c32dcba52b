"""A bounded load check of the agent: `hwsearch agent` as a real process, batches of sequential and concurrent
measurements, and no growth of its memory, threads, open files or work folder from one batch to the next."""

from __future__ import annotations

import http.client
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
from conftest import REPO, terminate
from onnx import TensorProto, helper, numpy_helper

TOKEN = "load-test-token"
QUEUE = 2  # --queue-size: the running request plus this many may wait, so 1 + QUEUE concurrent are all served
SEQUENTIAL, CONCURRENT = 8, 1 + QUEUE
MODEL_MB = 2.0
# A leak of the upload (the model bytes) on every request would add MODEL_MB x 11 = 22 MB per batch.
GROWTH_BOUND_MB = 8.0


def _model(path: Path) -> Path:
    """x[N, 512] @ W[512, 1024]: a 2 MB upload (large enough that keeping each one would show in RSS)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((512, 1024)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1024])], [w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def _status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            fields[key] = int(value.split()[0])
    fields["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return fields


def _measure(port: int, body: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/measure?warmup=2&repeats=10", body=body,
                     headers={"Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _batch(port: int, body: bytes) -> list[tuple[int, dict]]:
    answers = [_measure(port, body) for _ in range(SEQUENTIAL)]
    gate = threading.Barrier(CONCURRENT)
    lock = threading.Lock()

    def one() -> None:
        gate.wait(30)
        answer = _measure(port, body)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=one) for _ in range(CONCURRENT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return answers


def _settled(pid: int) -> dict[str, int]:
    """The agent's counters once its request threads have ended (they end right after answering)."""
    deadline = time.monotonic() + 10
    while (now := _status(pid))["Threads"] > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def test_agent_memory_threads_and_files_stay_flat_under_repeated_load(tmp_path):
    body = _model(tmp_path / "matmul.onnx").read_bytes()
    assert len(body) > MODEL_MB * 2**20
    (tmp_path / "token").write_text(TOKEN)
    work = tmp_path / "tmp"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "search", "agent", "--port", "0", "--token-file",
                             str(tmp_path / "token"), "--queue-size", str(QUEUE), "--max-upload-mb", "8"],
                            cwd=REPO, env={**os.environ, "TMPDIR": str(work)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr], daemon=True).start()
    try:
        port = int(lines.get(timeout=60).split(" on http://127.0.0.1:")[1].split()[0])
        started = _settled(proc.pid)
        first = _batch(port, body)
        after_first = _settled(proc.pid)
        second = _batch(port, body)
        after_second = _settled(proc.pid)

        for status, record in first + second:
            assert status == 200, record
            lat = record["latency"]
            assert lat["runs"] == 10 and 0 < lat["p50_ms"] <= lat["p90_ms"] and lat["mean_ms"] > 0
            assert record["memory_total_mb"] > record["memory_model_mb"] > 0 and record["backend"] == "remote"
            assert record["device"] and record["ort_version"] and record["error"] is None
        assert len(first) == len(second) == SEQUENTIAL + CONCURRENT

        mb = {k: v["VmRSS"] / 1024 for k, v in (("start", started), ("first", after_first),
                                                 ("second", after_second))}
        print(f"agent RSS MB: start {mb['start']:.1f}, after batch 1 {mb['first']:.1f}, "
              f"after batch 2 {mb['second']:.1f} (growth {mb['second'] - mb['first']:+.1f}, "
              f"bound {GROWTH_BOUND_MB})")
        assert mb["second"] - mb["first"] < GROWTH_BOUND_MB, mb
        assert after_second["Threads"] == after_first["Threads"] == 1  # no request thread left behind
        assert after_second["fds"] == after_first["fds"], (after_first, after_second)  # no socket/file leak
        folders = list(work.glob("hwsearch-agent-*"))
        assert len(folders) == 1 and not any(folders[0].iterdir()), "uploads left on the device's disk"
    finally:
        terminate(proc)
    assert proc.returncode == 0 and not list(work.glob("hwsearch-agent-*"))  # a clean stop removes its folder
