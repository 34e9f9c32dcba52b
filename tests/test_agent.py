"""The remote measurement agent on loopback, and the RemoteBackend client talking to it."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import onnx
import pytest
from _measure_fixtures import models, tiny
from onnx import TensorProto, helper

from search.config.profile import DeviceProfile
from search.errors import TrialFailure, UserError
from search.measure import Measurement, agent
from search.measure.remote import AgentUnreachable, RemoteBackend

TOKEN = "s3cret-token"
AGENT_DIR = Path(agent.__file__).parent


@pytest.fixture(scope="module")
def server():
    srv = agent.make_server("127.0.0.1", 0, TOKEN, max_upload_mb=2, queue_size=1, read_timeout_s=1)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv: agent.AgentServer) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def request(srv, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN,
            headers: dict | None = None, length: bool = True) -> tuple[int, dict]:
    """A raw HTTP call; `length=False` sends no Content-Length (and no body)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=60)
    conn.putrequest(method, path)
    for key, value in {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}.items():
        conn.putheader(key, value)
    if length and "Content-Length" not in (headers or {}):
        conn.putheader("Content-Length", str(len(body or b"")))
    conn.endheaders(body if length else None)
    resp = conn.getresponse()
    payload = json.loads(resp.read() or b"{}")
    conn.close()
    return resp.status, payload


def remote_profile(srv, **measure: object) -> DeviceProfile:
    settings = {"backend": "remote", "url": url(srv), "token_env": "HWSEARCH_TEST_TOKEN", "warmup": 10,
                "repeats": 50, **measure}
    return DeviceProfile(name="remote-test", measure=settings)


@pytest.fixture
def client(server, monkeypatch):
    monkeypatch.setenv("HWSEARCH_TEST_TOKEN", TOKEN)
    return lambda **kw: RemoteBackend(remote_profile(server, **kw), backoff_s=0.05)


def test_missing_or_wrong_token_is_401(server):
    body = models()["tiny"].read_bytes()
    assert request(server, "GET", "/v1/info", token=None)[0] == 401
    assert request(server, "GET", "/v1/info", token="wrong")[0] == 401
    assert request(server, "POST", "/v1/measure", body, token=None)[0] == 401
    assert request(server, "POST", "/v1/measure", body, token=TOKEN + "x")[0] == 401
    assert request(server, "GET", "/v1/info", headers={"Authorization": TOKEN})[0] == 401  # no Bearer scheme
    status, info = request(server, "GET", "/v1/info")
    assert status == 200 and info["cores"] >= 1 and info["ort_version"] and info["agent_version"]


def test_upload_limits_411_413_408(server):
    assert request(server, "POST", "/v1/measure", length=False)[0] == 411
    status, payload = request(server, "POST", "/v1/measure", headers={"Content-Length": str(100 * 2**20)},
                              length=False)  # refused from the header alone: no body was sent
    assert status == 413 and "at most 2 MB" in payload["error"]
    status, payload = request(server, "POST", "/v1/measure", b"\x08\x08", headers={"Content-Length": "1000"})
    assert status == 408 and "slower than 1 s" in payload["error"]  # the socket timeout on reading


@pytest.mark.parametrize(("body", "expect"), [
    (b"hello, I am not a model", "not an ONNX model"),
    (b"", "not an ONNX model"),
    (None, "external data"),
    (tiny(domain="com.example").SerializeToString(), "op domain 'com.example'"),
])
def test_invalid_models_are_400(server, body, expect):
    if body is None:
        body = models()["external"].read_bytes()
    status, payload = request(server, "POST", "/v1/measure", body)
    assert status == 400 and expect in payload["error"], payload


def test_domain_check_reaches_subgraphs():
    inner = helper.make_graph([helper.make_node("Foo", ["a"], ["b"], domain="evil.ops")], "body", [], [])
    outer = helper.make_graph([helper.make_node("If", ["c"], ["d"], then_branch=inner, else_branch=inner)],
                              "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("d", TensorProto.FLOAT, [])])
    with pytest.raises(agent.InvalidModel, match="evil.ops"):
        agent.check_model(helper.make_model(outer).SerializeToString())
    for name in ("fp32", "int8", "hang"):  # real models (QDQ, Loop subgraph) pass
        agent.check_model(models()[name].read_bytes())


def test_bad_parameters_are_400(server):
    body = models()["tiny"].read_bytes()
    for query, expect in (("repeats=0", "repeats must be between"), ("colour=red", "unknown parameter"),
                          ("batch=x", "batch must be a number"),
                          ("reference=abc", "reference must be a sha256")):
        status, payload = request(server, "POST", f"/v1/measure?{query}", body)
        assert status == 400 and expect in payload["error"], (query, payload)
    status, _ = request(server, "POST", "/v1/measure?reference=" + "0" * 64, body)
    assert status == 409  # a reference the agent does not hold: the client re-uploads it


@pytest.mark.timing
def test_remote_measurement_matches_the_local_record(server, client):
    m = models()
    backend = client()
    rec = backend.measure(m["int8"], m["fp32"])
    assert rec.backend.startswith("remote http://127.0.0.1:") and rec.device and rec.latency.runs % 50 == 0
    assert 0.2 < rec.ratio() < 1.0 and rec.reference_baseline == rec.reference
    assert rec.memory_total_mb > rec.memory_overhead_mb > 0
    # The raw agent answer has exactly the record's fields.
    status, raw = request(server, "POST", "/v1/measure?warmup=1&repeats=5", m["tiny"].read_bytes())
    assert status == 200 and set(raw) == {f.name for f in dataclasses.fields(Measurement)}
    # An agent that lost its references (restart) gets the reference again, transparently.
    server.references.clear()
    again = backend.measure(m["int8"], m["fp32"])
    assert again.reference_baseline == rec.reference and again.ratio() < 1.0


def test_remote_model_far_over_budget_is_stopped(server, monkeypatch):
    monkeypatch.setenv("HWSEARCH_TEST_TOKEN", TOKEN)
    prof = DeviceProfile.model_validate({**remote_profile(server).model_dump(), "budgets": {"memory_mb": 32}})
    rec = RemoteBackend(prof).measure(models()["hog"])
    assert rec.over_budget and "memory limit" in rec.error and rec.latency is None


def test_two_concurrent_clients_are_served_one_after_the_other(client):
    m = models()
    results: list[Measurement] = []
    threads = [threading.Thread(target=lambda: results.append(client().measure(m["fp32"]))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 2
    a, b = sorted(results, key=lambda r: r.started_at)
    assert a.finished_at <= b.started_at, (a.started_at, a.finished_at, b.started_at, b.finished_at)


def test_full_queue_is_503(server, client):
    m = models()
    errors: list[Exception] = []

    def run(name: str, **kw: object) -> None:
        try:
            client(**kw).measure(m[name])
        except TrialFailure as e:
            errors.append(e)

    def wait_for(busy: bool, waiting: int) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            queue = request(server, "GET", "/v1/info")[1]["queue"]
            if queue["busy"] == busy and queue["waiting"] == waiting:
                return
            time.sleep(0.05)
        raise AssertionError(f"queue never reached busy={busy} waiting={waiting}")

    first = threading.Thread(target=run, args=("hang",), kwargs={"timeout_s": 3})  # occupies the runner
    first.start()
    wait_for(True, 0)
    second = threading.Thread(target=run, args=("tiny",))  # fills the queue (size 1)
    second.start()
    wait_for(True, 1)
    status, payload = request(server, "POST", "/v1/measure", m["tiny"].read_bytes())
    assert status == 503 and "queue full" in payload["error"]
    # A client past the queue (more workers than a board's queue holds) waits for a slot instead of failing.
    third = threading.Thread(target=run, args=("tiny",))
    third.start()
    first.join(60)
    second.join(60)
    third.join(60)
    assert len(errors) == 1 and "timed out after 3 s" in str(errors[0])  # the hung model, as a trial failure


def test_unreachable_agent_is_one_clear_line(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nobody listens there
    monkeypatch.setenv("HWSEARCH_TEST_TOKEN", TOKEN)
    prof = DeviceProfile(name="gone", measure={"backend": "remote", "url": f"http://127.0.0.1:{port}",
                                               "token_env": "HWSEARCH_TEST_TOKEN"})
    with pytest.raises(AgentUnreachable) as info:
        RemoteBackend(prof, retries=3, backoff_s=0.01).measure(models()["tiny"])
    message = str(info.value)
    assert f"http://127.0.0.1:{port}" in message and "connection refused" in message and "\n" not in message
    assert isinstance(info.value, TrialFailure)


def test_client_and_server_refuse_without_a_token(server, monkeypatch, tmp_path):
    monkeypatch.delenv("HWSEARCH_TEST_TOKEN", raising=False)
    with pytest.raises(UserError, match="HWSEARCH_TEST_TOKEN is not set"):
        RemoteBackend(remote_profile(server))
    monkeypatch.setenv("HWSEARCH_TEST_TOKEN", "wrong")
    with pytest.raises(UserError, match="rejected the token"):
        RemoteBackend(remote_profile(server)).measure(models()["tiny"])
    with pytest.raises(UserError, match="token file not found"):
        agent.read_token(tmp_path / "absent")
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(UserError, match="token file is empty"):
        agent.read_token(tmp_path / "empty")
    with pytest.raises(UserError, match="without a token"):
        agent.make_server("127.0.0.1", 0, " ")


def test_standalone_agent_runs_without_the_package(tmp_path):
    """agent.py and its four sibling files copied alone, as on a device: serves, warns when exposed,
    never imports search."""
    for name in ("agent.py", "agent_checks.py", "agent_jobs.py", "agent_tls.py", "runner.py"):
        shutil.copy(AGENT_DIR / name, tmp_path / name)
    (tmp_path / "token").write_text(TOKEN + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    bad = subprocess.run([sys.executable, "agent.py", "--token-file", "missing"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "token file not found" in bad.stderr
    assert bad.stderr.strip().count("\n") == 0
    code = ("import sys, agent; "
            "sys.argv = ['agent.py', '--host', '0.0.0.0', '--port', '0', '--token-file', 'token']\n"
            "print('search' in sys.modules, flush=True); agent.main()")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "False"
        banner = proc.stderr.readline()
        warning = proc.stderr.readline()
        assert "warning: listening on 0.0.0.0" in warning
        port = int(banner.split("http://0.0.0.0:")[1].split()[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v1/info", headers={"Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["runner_version"]
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


def test_an_agent_removes_the_work_folders_of_agents_that_died(tmp_path, monkeypatch):
    """Killed agents leave their work folder (only a clean stop removes it); the next agent on the board removes
    those whose agent (the pid in the folder's name) is gone, and leaves a live agent's and any folder whose name
    holds no pid."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    names = [f"hwsearch-agent-{done.stdout.strip()}-dead", f"hwsearch-agent-{os.getpid()}-live",
             "hwsearch-agent-0qx0q7s3", "hwsearch-agent-123"]  # the last two: older agents' names, no pid
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "reference-x.onnx").write_bytes(b"x" * 100)
    srv = agent.make_server("127.0.0.1", 0, TOKEN)
    try:
        left = sorted(p.name for p in tmp_path.glob("hwsearch-agent-*"))
        assert left == sorted([*names[1:], srv.workdir.name]), left
        assert srv.workdir.name.startswith(f"hwsearch-agent-{os.getpid()}-")
        assert not any(srv.workdir.iterdir())  # nothing but what the jobs write
    finally:
        srv.server_close()
    assert not srv.workdir.exists()  # a clean stop removes its own


def test_model_file_too_large_for_the_agent_is_refused_by_the_client(client, tmp_path):
    big = tmp_path / "big.onnx"
    onnx.save(tiny(), big)
    big.write_bytes(big.read_bytes() + b"\x00" * (3 * 2**20))
    with pytest.raises(TrialFailure, match="accepts at most 2 MB"):
        client().measure(big)


def test_jobs_run_in_arrival_order():
    """The agent's job lock is FIFO: a queued job is never overtaken by one that arrived after it."""
    lock, order = agent.FifoLock(), []

    def job(i: int) -> None:
        with lock:
            order.append(i)

    with lock:  # the running job
        threads = []
        for i in range(8):
            threads.append(threading.Thread(target=job, args=(i,)))
            threads[-1].start()
            time.sleep(0.05)  # arrival order = i
    for t in threads:
        t.join(10)
    assert order == list(range(8))
