"""Security guarantees of the remote agent beyond tests/test_agent.py, on real agents over loopback.

Covered here: the token compare goes through hmac.compare_digest; external-data tensors (path traversal,
absolute paths) are refused before anything outside is opened, wherever the tensor sits; op domains are
checked in every place ONNX can hold a node; a stalled or trickling upload is cut off without blocking others;
a flood beyond the queue gets 503s while the agent stays responsive; the CLI binds loopback unless told
otherwise and warns when exposed; and no module of the package deserialises with pickle.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import hmac
import http.client
import json
import os
import queue
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from _measure_fixtures import agent_serving, hang, models, tiny
from conftest import REPO, terminate
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

from search.measure import agent

TOKEN = "s3cret-token-for-security-tests"
FAST = "warmup=1&repeats=5"  # each accepted measurement takes a fraction of a second


def serving(**kw):
    """A real agent on a free loopback port, served by a thread."""
    return agent_serving(TOKEN, **{"max_upload_mb": 2, "queue_size": 1, "read_timeout_s": 2, **kw})


@pytest.fixture(scope="module")
def server():
    with serving() as srv:
        yield srv


def request(srv, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN,
            timeout: float = 30) -> tuple[int, dict, dict]:
    """One HTTP call: (status, JSON payload, headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}"), dict(resp.getheaders())
    finally:
        conn.close()


# ----------------------------------------------------------------------------------------------- token
def test_token_compare_is_timing_safe_for_right_and_wrong_tokens(server, monkeypatch):
    """Every token check goes through hmac.compare_digest (a plain == would leak the matching prefix)."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    expected = TOKEN.encode()
    cases = [("GET", "/v1/info", TOKEN, 200),
             ("GET", "/v1/info", TOKEN[:-1] + "X", 401),  # same length, last byte differs
             ("GET", "/v1/info", "X" + TOKEN[1:], 401),  # same length, first byte differs
             ("GET", "/v1/info", TOKEN[:5], 401),  # a prefix
             ("POST", "/v1/reference", TOKEN + "extra", 401)]
    for method, path, token, status in cases:
        before = len(calls)
        body = models()["tiny"].read_bytes() if method == "POST" else None
        got, payload, _ = request(server, method, path, body, token=token)
        assert got == status, (token, payload)
        assert calls[before:] == [(token.encode(), expected)], f"{token!r} was not checked by compare_digest"
    # A wrong token and no token get the same answer: nothing tells how close a guess was.
    assert request(server, "GET", "/v1/info", token=TOKEN[:-1] + "X")[:2] == request(server, "GET", "/v1/info",
                                                                                        token=None)[:2]


# ------------------------------------------------------------------------------------------ external data
def _external(name: str, location: str) -> onnx.TensorProto:
    """A float[4] tensor whose data the loader would read from `location` (relative to the model's folder)."""
    t = numpy_helper.from_array(np.zeros(4, np.float32), name)
    set_external_data(t, location=location, offset=0, length=16)
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("raw_data")
    return t


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])


def _model(nodes: list, inits: list | None = None, inputs: list | None = None, **kw) -> bytes:
    graph = helper.make_graph(nodes, "g", [X] if inputs is None else inputs, [Y], inits or [])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], **kw)
    m.ir_version = 8
    return m.SerializeToString()


def _where_external(where: str, location: str) -> bytes:
    """A model holding one external-data tensor at `where`."""
    add = helper.make_node("Add", ["x", "w"], ["y"])
    if where == "initializer":
        return _model([add], [_external("w", location)])
    if where == "initializer_without_location_flag":  # external_data entries, data_location left DEFAULT
        t = _external("w", location)
        t.ClearField("data_location")
        return _model([add], [t])
    if where == "constant_node":
        return _model([helper.make_node("Constant", [], ["w"], value=_external("c", location)), add])
    if where == "sparse_initializer":
        values = _external("w_values", location)
        indices = numpy_helper.from_array(np.array([0], np.int64), "w_indices")
        sparse = helper.make_sparse_tensor(values, indices, [4])
        graph = helper.make_graph([add], "g", [X], [Y], sparse_initializer=[sparse])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    if where == "subgraph_initializer":
        branch = helper.make_graph([helper.make_node("Add", ["x", "w"], ["z"])], "branch", [], [Y],
                                   [_external("w", location)])
        cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
        node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
        return _model([node], inputs=[X, cond])
    if where == "tensors_attribute":  # AttributeProto.tensors (a list of tensors)
        node = helper.make_node("Identity", ["x"], ["y"])
        node.attribute.append(helper.make_attribute("values", [_external("t", location)]))
        return _model([node])
    raise AssertionError(where)


PLACES = ("initializer", "initializer_without_location_flag", "constant_node", "sparse_initializer",
          "subgraph_initializer", "tensors_attribute")


@pytest.mark.parametrize("where", PLACES)
def test_external_data_with_path_traversal_is_400_and_nothing_outside_is_opened(server, tmp_path, where):
    # A FIFO nobody writes to: opening it to read blocks forever, so an agent that followed the path would
    # hang this request (and the open would count as a reader, seen below) instead of answering 400.
    trap = tmp_path / "trap.fifo"
    os.mkfifo(trap)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"TOP-SECRET-CONTENT-" * 4)
    workdir = server.workdir  # where the agent writes uploads: relative locations start there
    locations = ["../../etc/passwd", "/etc/passwd", str(trap), os.path.relpath(trap, workdir),
                 str(secret), "../" * 12 + str(secret).lstrip("/")]
    for location in locations:
        status, payload, _ = request(server, "POST", f"/v1/measure?{FAST}", _where_external(where, location),
                                     timeout=15)
        assert status == 400 and "external data" in payload["error"], (location, payload)
        assert b"TOP-SECRET" not in json.dumps(payload).encode() and "root:" not in payload["error"]
    try:
        fd = os.open(trap, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only if some reader has it open
    except OSError as e:
        assert e.errno == errno.ENXIO
    else:
        os.close(fd)
        raise AssertionError("the agent opened the file an external-data location pointed to")
    assert not any(workdir.iterdir()), "a rejected upload was written to disk"


# ------------------------------------------------------------------------------------------ op domains
EVIL = "evil.ops"


def _evil_graph(name: str = "body") -> onnx.GraphProto:
    return helper.make_graph([helper.make_node("Steal", ["x"], ["z"], domain=EVIL)], name, [], [Y])


def _domain_case(where: str) -> bytes:
    if where == "nested_two_levels":  # If -> Loop body -> custom node
        loop_body = helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
             helper.make_node("Steal", ["v_in"], ["v_out"], domain=EVIL)], "loop_body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["N", 4])],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["N", 4])])
        loop = helper.make_node("Loop", ["", "", "x"], ["z"], body=loop_body)
        branch = helper.make_graph([loop], "branch", [], [Y])
        cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
        return _model([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
                      inputs=[X, cond])
    if where == "graphs_attribute":  # AttributeProto.graphs (a list of subgraphs)
        node = helper.make_node("Identity", ["x"], ["y"])
        node.attribute.append(helper.make_attribute("bodies", [_evil_graph("a"), _evil_graph("b")]))
        return _model([node])
    if where == "local_function_body":  # the calling node is in an allowed domain, the body is not
        fn = helper.make_function("com.microsoft", "Wrapped", ["x"], ["y"],  # (EVIL not even imported)
                                  [helper.make_node("Steal", ["x"], ["y"], domain=EVIL)], [helper.make_opsetid("", 17)])
        return _model([helper.make_node("Wrapped", ["x"], ["y"], domain="com.microsoft")], functions=[fn])
    if where == "opset_import_only":
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [X], [Y])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                       helper.make_opsetid(EVIL, 1)]).SerializeToString()
    if where == "training_info":
        m = onnx.load_from_string(_model([helper.make_node("Identity", ["x"], ["y"])]))
        m.training_info.add().algorithm.CopyFrom(_evil_graph("algorithm"))
        return m.SerializeToString()
    raise AssertionError(where)


@pytest.mark.parametrize("where", ["nested_two_levels", "graphs_attribute", "local_function_body",
                                   "opset_import_only", "training_info"])
def test_custom_op_domain_anywhere_in_the_model_is_400(server, where):
    status, payload, _ = request(server, "POST", f"/v1/measure?{FAST}", _domain_case(where))
    assert status == 400 and f"op domain '{EVIL}'" in payload["error"], payload


def test_allowed_domains_still_measure(server):
    """The domain check is an allowlist, not a blanket refusal: a com.microsoft contrib op is measured."""
    node = helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")
    graph = helper.make_graph([node], "gelu", [X], [Y])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    status, payload, _ = request(server, "POST", f"/v1/measure?{FAST}", m.SerializeToString())
    assert status == 200 and payload["latency"]["runs"] == 5, payload


def test_answer_sent_before_the_body_was_read_reaches_the_client(server):
    """A 401 answered before a 3 MB upload was read still reaches the client: the agent drains what the client
    sent before closing, instead of closing on unread bytes (an RST that can overtake the answer)."""
    body = bytes(3 * 2**20)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=30) as s:
            s.sendall((f"POST /v1/measure?{FAST} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.0 401") or data.startswith(b"HTTP/1.1 401"), data[:80]


# ------------------------------------------------------------------------------------ slow and many clients
def _raw_upload(srv, body: bytes, sent: int) -> socket.socket:
    """Headers and the first `sent` bytes of a measurement upload; the rest is up to the caller."""
    s = socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=30)
    s.sendall((f"POST /v1/measure?{FAST} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:sent])
    return s


def _status_of(s: socket.socket) -> tuple[int, str]:
    data = b""
    with contextlib.suppress(ConnectionResetError):  # the answer arrives before any reset
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload.decode()


def test_stalled_upload_times_out_without_blocking_the_next_client():
    body = models()["tiny"].read_bytes()
    with serving(read_timeout_s=3) as srv:
        started = time.monotonic()
        slow = _raw_upload(srv, body, sent=len(body) // 2)  # then says nothing more
        try:
            while request(srv, "GET", "/v1/info")[1]["queue"]["waiting"] != 1:  # it holds a queue slot
                assert time.monotonic() - started < 2, "the stalled upload never took a slot"
                time.sleep(0.02)
            status, payload, _ = request(srv, "POST", f"/v1/measure?{FAST}", body)  # the free slot measures
            assert status == 200 and payload["latency"]["runs"] == 5
            if time.monotonic() - started < 2:  # (on a very slow machine the stalled one may be answered by now)
                assert not select.select([slow], [], [], 0)[0], "the stalled upload was answered too early"
            code, text = _status_of(slow)
            assert code == 408 and "slower than 3 s" in text
            assert time.monotonic() - started < 30
        finally:
            slow.close()
        assert request(srv, "GET", "/v1/info")[1]["queue"] == {"busy": False, "waiting": 0, "size": 1, "jobs": 0}


def test_trickled_upload_is_cut_off_by_the_overall_deadline():
    """A byte every 0.2 s never trips the per-read timeout; the overall deadline still ends the upload."""
    body = models()["tiny"].read_bytes()  # ~150 bytes: trickled in full it would take ~30 s
    with serving(read_timeout_s=1.5) as srv:
        s = _raw_upload(srv, body, sent=1)
        started = time.monotonic()
        try:
            for byte in body[1:]:
                if select.select([s], [], [], 0.2)[0]:
                    break  # the agent answered (and closed)
                try:
                    s.sendall(bytes([byte]))
                except OSError:
                    break
            elapsed = time.monotonic() - started
            code, text = _status_of(s)
        finally:
            s.close()
        assert code == 408 and "on average" in text, text
        assert elapsed < 10, f"the trickled upload was held for {elapsed:.1f} s"


def test_flood_beyond_the_queue_gets_503_while_the_agent_stays_responsive():
    m = models()
    hang_body, body = m["hang"].read_bytes(), m["tiny"].read_bytes()
    with serving(queue_size=1) as srv:
        results: dict[str, list] = {"hang": [], "flood": []}

        def post(kind: str, path: str, data: bytes, gate: threading.Barrier | None = None) -> None:
            if gate is not None:
                gate.wait(30)
            status, payload, headers = request(srv, "POST", path, data, timeout=120)
            results[kind].append((status, payload, headers))

        runner = threading.Thread(target=post, args=("hang", f"/v1/measure?{FAST}&timeout_s=4", hang_body))
        runner.start()
        deadline = time.monotonic() + 30
        while not request(srv, "GET", "/v1/info")[1]["queue"]["busy"]:
            assert time.monotonic() < deadline, "the hanging model never started"
            time.sleep(0.05)
        n = 12
        gate = threading.Barrier(n)
        flood = [threading.Thread(target=post, args=("flood", f"/v1/measure?{FAST}", body, gate)) for _ in range(n)]
        for t in flood:
            t.start()
        # While the runner is busy and the queue full, the agent still answers at once.
        t0 = time.monotonic()
        status, info, _ = request(srv, "GET", "/v1/info", timeout=10)
        assert status == 200 and info["queue"]["busy"] and time.monotonic() - t0 < 5
        for t in flood:
            t.join(120)
        runner.join(120)
        statuses = sorted(status for status, _, _ in results["flood"])
        assert statuses == [200] + [503] * (n - 1), statuses  # one waited its turn, the rest were turned away
        for status, payload, headers in results["flood"]:
            if status == 503:
                assert "queue full" in payload["error"] and headers.get("Retry-After") == "2"
        assert results["hang"][0][0] == 422 and results["hang"][0][1]["kind"] == "timeout"
        # Nothing leaked a slot: the queue is empty again and the next valid request is measured.
        assert request(srv, "GET", "/v1/info")[1]["queue"] == {"busy": False, "waiting": 0, "size": 1, "jobs": 0}
        status, payload, _ = request(srv, "POST", f"/v1/measure?{FAST}", body)
        assert status == 200 and payload["latency"]["runs"] == 5


# ------------------------------------------------------------------------------------------ bind address
def _listening(port: int) -> set[str]:
    """The local addresses (hex, as in /proc/net/tcp{,6}) that listen on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


@contextlib.contextmanager
def cli_agent(tmp_path: Path, *args: str):
    """`python -m search agent --port 0 ...` in a subprocess; yields (process, stderr line queue)."""
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "search", "agent", "--port", "0", "--token-file", str(token),
                             *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr], daemon=True).start()
    try:
        yield proc, lines
    finally:
        terminate(proc)


def _banner_port(line: str) -> int:
    return int(line.split(" on http://")[1].split()[0].rsplit(":", 1)[1])


def test_cli_binds_loopback_by_default_and_warns_when_exposed(tmp_path):
    with cli_agent(tmp_path) as (proc, lines):
        banner = lines.get(timeout=60)
        port = _banner_port(banner)
        assert "on http://127.0.0.1:" in banner
        assert _listening(port) == {"0100007F"}  # 127.0.0.1 only, in /proc/net/tcp's byte order
        with pytest.raises(queue.Empty):  # no warning on loopback
            lines.get(timeout=1)
    assert proc.returncode == 0  # SIGTERM: a clean stop

    with cli_agent(tmp_path, "--host", "0.0.0.0") as (proc, lines):
        banner = lines.get(timeout=60)
        warning = lines.get(timeout=10)
        port = _banner_port(banner)
        assert _listening(port) == {"00000000"}  # every interface
        assert warning.startswith("warning: listening on 0.0.0.0") and "reachable from other machines" in warning
        assert "anyone with the token can run models" in warning
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
    assert proc.returncode == 0


def test_agent_refuses_bad_settings_in_one_line(tmp_path):
    """A bad host or limit is one line and exit status 2, not a traceback (CLI and standalone agent.py)."""
    token = tmp_path / "token"
    token.write_text(TOKEN)
    cases = [(["--host", "256.1.1.1"], "cannot listen on 256.1.1.1"),
             (["--max-upload-mb", "nan"], "--max-upload-mb must be a number > 0"),
             (["--max-upload-mb", "inf"], "--max-upload-mb must be a number > 0"),
             (["--queue-size", "-1"], "--queue-size")]
    for args, expect in cases:
        for cmd in ([sys.executable, "-m", "search", "agent"], [sys.executable, str(Path(agent.__file__))]):
            r = subprocess.run([*cmd, "--port", "0", "--token-file", str(token), *args], cwd=REPO,
                               capture_output=True, text=True, timeout=60)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and expect in lines[0], (cmd, args, r.stderr)


# ---------------------------------------------------------------------------------- no pickle, anywhere
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve"}


def unsafe_deserialisation(source: str) -> list[str]:
    """Lines that load data with pickle (directly or via torch/numpy/pandas/yaml), as 'line: what'."""
    tree = ast.parse(source)
    alias: dict[str, str] = {}
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if a.name.split(".")[0] in PICKLE_MODULES:
                    out.append(f"{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                alias[a.asname or a.name] = f"{node.module}.{a.name}"
            if node.module.split(".")[0] in PICKLE_MODULES:
                out.append(f"{node.lineno}: from {node.module} import ...")

    def dotted(expr: ast.expr) -> str:
        if isinstance(expr, ast.Name):
            return alias.get(expr.id, expr.id)
        if isinstance(expr, ast.Attribute):
            return f"{dotted(expr.value)}.{expr.attr}"
        return "?"

    def keyword(call: ast.Call, name: str) -> object:
        if any(k.arg is None for k in call.keywords):
            return "**kwargs"  # cannot be checked: counts as unsafe
        return next((k.value.value if isinstance(k.value, ast.Constant) else "?" for k in call.keywords
                     if k.arg == name), None)

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        if name in ("torch.load", "torch.serialization.load") and keyword(node, "weights_only") is not True:
            out.append(f"{node.lineno}: {name} without weights_only=True")
        elif name == "numpy.load" and keyword(node, "allow_pickle") not in (None, False):
            out.append(f"{node.lineno}: numpy.load with allow_pickle")
        elif (name.endswith(".read_pickle") or name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load")
              or name.split(".")[0] in PICKLE_MODULES):
            out.append(f"{node.lineno}: {name}")
    return out


@pytest.mark.parametrize(("snippet", "unsafe"), [
    ("import pickle", True), ("import pickle as p", True), ("from dill import loads", True),
    ("import joblib", True), ("from cloudpickle import load", True), ("import shelve", True),
    ("import torch\ntorch.load(f)", True), ("import torch\ntorch.load(f, weights_only=False)", True),
    ("import torch as t\nt.load(f, map_location='cpu')", True), ("from torch import load\nload(f)", True),
    ("import torch\ntorch.load(f, **kw)", True), ("import numpy as np\nnp.load(f, allow_pickle=True)", True),
    ("import numpy\nnumpy.load(f, allow_pickle=flag)", True), ("import pandas as pd\npd.read_pickle(f)", True),
    ("import yaml\nyaml.load(s, Loader=yaml.Loader)", True),
    ("import torch\ntorch.load(f, map_location='cpu', weights_only=True)", False),
    ("import numpy as np\nnp.load(f)", False), ("import numpy as np\nnp.load(f, allow_pickle=False)", False),
    ("import json\njson.load(f)", False), ("import yaml\nyaml.safe_load(s)", False),
])
def test_the_deserialisation_check_itself(snippet, unsafe):
    assert bool(unsafe_deserialisation(snippet)) is unsafe, unsafe_deserialisation(snippet)


def test_no_module_deserialises_with_pickle():
    files = sorted((REPO / "search").rglob("*.py"))
    assert len(files) > 20
    found = {str(f.relative_to(REPO)): bad for f in files if (bad := unsafe_deserialisation(f.read_text()))}
    assert not found, found
    # ... and the places that do load weights are seen (the walk is not blind to them).
    loads = [f for f in files if "torch.load(" in f.read_text()]
    assert loads and all("weights_only=True" in f.read_text() for f in loads)


def test_fixture_models_pass_the_checks():
    """The refusals above come from the content, not from the builders: clean variants are accepted."""
    agent.check_model(_model([helper.make_node("Add", ["x", "w"], ["y"])],
                             [numpy_helper.from_array(np.zeros(4, np.float32), "w")]))
    agent.check_model(hang().SerializeToString())
    agent.check_model(tiny().SerializeToString())
    node = helper.make_node("Identity", ["x"], ["y"])
    clean = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "clean", [], [Y])
    node.attribute.append(helper.make_attribute("bodies", [clean, clean]))
    agent.check_model(_model([node]))  # a graphs attribute with standard ops only
