"""The agent's own limits, on real agents over loopback with raw sockets: the header deadline, the cap on
connection threads (stalled clients cannot keep a valid request out), Content-Length made of ASCII digits only,
and the bound on one request's work ((rounds + 1) x timeout_s <= --max-request-seconds).

Small caps and short deadlines keep each test to a few seconds; the time bounds asserted are several times what
a loaded 2-core machine needs, and the thread bound is exact (connection threads are counted by name)."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _measure_fixtures import agent_serving, tiny

from search.errors import UserError
from search.measure import agent

TOKEN = "limits-test-token"
FAST = "warmup=1&repeats=5"
BODY = tiny().SerializeToString()
STALL = b"POST /v1/measure HTTP/1.1\r\nHost: x\r\nAuthor"  # half a header block, then nothing


def serving(**kw):
    return agent_serving(TOKEN, **{"max_upload_mb": 2, "queue_size": 1, "read_timeout_s": 10, **kw})


def connection_threads() -> int:
    """Threads serving a connection (socketserver names them 'Thread-N (process_request_thread)')."""
    return sum(t.name.endswith("(process_request_thread)") for t in threading.enumerate())


class PeakThreads:
    """Samples connection_threads() every few milliseconds in the background; .peak is the most seen."""

    def __init__(self) -> None:
        self.peak, self._stop = connection_threads(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.003):
            self.peak = max(self.peak, connection_threads())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def request(srv, method: str, path: str, body: bytes | None = None, timeout: float = 60) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def raw(srv, data: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=30)
    s.sendall(data)
    return s


def answer(s: socket.socket) -> tuple[int | None, str]:
    """(status, body) of what the agent sent before closing; (None, '') when it closed without a word."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            data += chunk
    if not data:
        return None, ""
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload.decode("utf-8", "replace")


def settle(baseline: int, within: float = 10) -> int:
    deadline = time.monotonic() + within
    while (n := connection_threads()) > baseline and time.monotonic() < deadline:
        time.sleep(0.02)
    return n


# ----------------------------------------------------------------------------------- header deadline and cap
def test_stalled_headers_filling_the_cap_do_not_keep_a_valid_measurement_out():
    """3 x cap sockets send half a header and stall: no more than `cap` connection threads ever exist, the
    stalled ones are cut a wave at a time for those queued behind them, a valid measurement sent behind all of
    them is answered 200, every stalled socket gets a 408 and the threads end. (Before the cap, each stalled socket
    held its own thread for the whole read timeout, 30 s by default.)"""
    cap, header_s = 4, 3.0
    baseline = connection_threads()
    with serving(max_connections=cap, header_timeout_s=header_s) as srv:
        peak = PeakThreads()
        opened = time.monotonic()
        stalled = [raw(srv, STALL) for _ in range(3 * cap)]
        try:
            started = time.monotonic()
            status, record = request(srv, "POST", f"/v1/measure?{FAST}", BODY)
            valid_s = time.monotonic() - started
            assert status == 200 and record["latency"]["runs"] == 5, record
            answers = [answer(s) for s in stalled]
            all_cut_s = time.monotonic() - opened
        finally:
            for s in stalled:
                s.close()
        most = peak.stop()
        print(f"cap {cap}, {len(stalled)} stalled sockets: valid measurement answered in {valid_s:.2f} s, "
              f"all stalled cut after {all_cut_s:.2f} s, peak connection threads {most - baseline}")
        assert most - baseline <= cap, f"{most - baseline} connection threads for a cap of {cap}"
        assert [code for code, _ in answers] == [408] * len(stalled), answers
        cut = [text for _, text in answers if f"all --max-connections {cap} were taken; cut" in text]
        assert len(cut) >= cap, answers  # (9 when unloaded) cut after ~1 s for those queued behind them
        assert all("request headers not complete" in text for _, text in answers), answers
        # 12 stalled sockets ahead of it, accepted 4 at a time, each cut ~1 s after it was accepted: ~3 s.
        assert valid_s < 15, f"the valid request waited {valid_s:.1f} s"
        assert all_cut_s < 20
        assert settle(baseline) == baseline, "connection threads left behind"
        assert request(srv, "GET", "/v1/info")[1]["queue"] == {"busy": False, "waiting": 0, "size": 1, "jobs": 0}


def test_stalled_and_trickled_headers_are_cut_at_the_header_deadline():
    """Below the cap nothing is cut early: a stalled header block and one trickled a byte every 0.2 s (never
    tripping the per-read timeout) both get 408 at the header deadline, while /v1/info answers at once."""
    header_s = 1.5
    baseline = connection_threads()
    with serving(max_connections=8, header_timeout_s=header_s, read_timeout_s=10) as srv:
        started = time.monotonic()
        stalled = raw(srv, STALL)
        trickled = raw(srv, b"G")
        try:
            t0 = time.monotonic()
            assert request(srv, "GET", "/v1/info")[0] == 200
            assert time.monotonic() - t0 < 1.0
            for byte in b"ET /v1/info HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"y" * 100:
                if time.monotonic() - started > 10:
                    break
                try:
                    trickled.sendall(bytes([byte]))
                except OSError:
                    break  # cut: the agent closed its side
                time.sleep(0.2)
            trickled_s = time.monotonic() - started
            code, text = answer(trickled)
            assert code == 408 and f"not complete within {header_s:g} s (--header-timeout-s)" in text, (code, text)
            code, text = answer(stalled)
            stalled_s = time.monotonic() - started
            assert code == 408 and f"not complete within {header_s:g} s" in text, (code, text)
        finally:
            stalled.close()
            trickled.close()
        print(f"header deadline {header_s} s: trickled header cut by {trickled_s:.2f} s, stalled by {stalled_s:.2f} s")
        assert 0.9 * header_s <= stalled_s < header_s + 5
        assert trickled_s < header_s + 5  # ~25 s if only the per-read timeout applied
        assert settle(baseline) == baseline


def test_header_stall_longer_than_the_read_timeout_is_408_before_the_header_deadline():
    with serving(header_timeout_s=20, read_timeout_s=1) as srv:
        started = time.monotonic()
        s = raw(srv, STALL)
        try:
            code, text = answer(s)
        finally:
            s.close()
        assert code == 408 and "stalled for 1 s (--read-timeout-s)" in text, (code, text)
        assert time.monotonic() - started < 10


# ---------------------------------------------------------------------------------------- Content-Length
@pytest.mark.parametrize("value", [
    "²".encode(),  # UTF-8: read as latin-1 'Â²'
    b"\xb2",  # latin-1 '²': str.isdigit() is True, int() raised (the request crashed, the client saw a reset)
    b"\xb9\xb2",  # '¹²'
    "٣".encode(),  # Arabic-Indic three
    "１".encode(),  # fullwidth one
    b"-1", b"+5", b"1e3", b"0x10", b"12 12", b"", b"5\r\nContent-Length: 5",  # the last: two headers
], ids=lambda v: repr(v)[:24])
def test_content_length_other_than_ascii_digits_is_400(value):
    with serving() as srv:
        s = raw(srv, b"POST /v1/measure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                + b"\r\nContent-Length: " + value + b"\r\n\r\n")
        try:
            code, text = answer(s)
        finally:
            s.close()
        assert code == 400, (value, code, text)
        assert "Content-Length" in json.loads(text)["error"]
        assert request(srv, "POST", f"/v1/measure?{FAST}", BODY)[0] == 200  # and the agent carries on


def test_content_length_too_long_to_parse_is_413_not_a_crash():
    """5000 digits: int() refuses more than 4300, so the length must be judged without it."""
    with serving() as srv:
        for digits, body, expect in ((b"9" * 5000, b"", (413, "at most 2 MB")),
                                     (b"0" * 5000 + b"5", b"\x08" * 5, (400, "not an ONNX model"))):  # length 5
            s = raw(srv, b"POST /v1/reference HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                    + b"\r\nContent-Length: " + digits + b"\r\n\r\n" + body)
            try:
                code, text = answer(s)
            finally:
                s.close()
            assert code == expect[0] and expect[1] in text, (code, text)


def test_content_length_helper():
    assert agent.content_length(["123"]) == (123, None)
    assert agent.content_length([" 007\t"]) == (7, None)
    assert agent.content_length(["9" * 40])[0] > 2**40
    for bad in (["²"], ["1", "1"], [""], ["1_000"], ["٣"]):
        assert agent.content_length(bad)[0] is None, bad


# ------------------------------------------------------------------------------------------- work bound
def test_request_that_could_run_past_the_agent_limit_is_400():
    with serving(max_request_s=20) as srv:
        for query in ("rounds=3&timeout_s=10", "rounds=1", "rounds=20&timeout_s=1"):  # 40 s, 240 s, 21 s
            status, payload = request(srv, "POST", f"/v1/measure?{FAST}&{query}", BODY)
            assert status == 400, (query, payload)
            error = payload["error"]
            assert "at most 20 s per request (--max-request-seconds)" in error and "\n" not in error, error
        status, payload = request(srv, "POST", f"/v1/measure?{FAST}&rounds=3&timeout_s=10", BODY)
        assert "(rounds 3 + 1 overhead probe) x timeout_s 10 = 40 s" in payload["error"]
        assert "rounds <= 1 at this timeout_s" in payload["error"]
        status, payload = request(srv, "POST", f"/v1/measure?{FAST}&rounds=1&timeout_s=10", BODY)  # 20 s: allowed
        assert status == 200 and payload["rounds"] == 1, payload
        assert request(srv, "GET", "/v1/info")[1]["max_request_s"] == 20


def test_default_limit_admits_the_shipped_profiles_and_refuses_more():
    assert agent.DEFAULTS["max_request_s"] == 600
    agent.parse_params("")  # rounds 1 x timeout_s 120: 240 s
    agent.parse_params("rounds=1&timeout_s=300")  # the Raspberry Pi / Jetson profiles: exactly 600 s
    with pytest.raises(ValueError, match="at most 600 s per request"):
        agent.parse_params("rounds=20&timeout_s=3600")
    with pytest.raises(ValueError, match="a smaller timeout_s"):
        agent.parse_params("timeout_s=3600")


# -------------------------------------------------------------------------------------------- settings
def test_limit_settings_are_checked_and_reach_the_cli(tmp_path):
    for kw, expect in (({"max_connections": 2, "queue_size": 1}, "--max-connections must be"),
                       ({"max_connections": 3.5}, "--max-connections must be"),
                       ({"header_timeout_s": 0}, "--header-timeout-s must be"),
                       ({"header_timeout_s": float("nan")}, "--header-timeout-s must be"),
                       ({"max_request_s": -1}, "--max-request-seconds must be"),
                       ({"max_request_s": float("inf")}, "--max-request-seconds must be")):
        with pytest.raises(UserError, match=expect):
            agent.make_server("127.0.0.1", 0, TOKEN, **kw)
    # agent.py standalone, as on a device: the flags are parsed, checked and reported by /v1/info.
    for name in ("agent.py", "agent_checks.py", "agent_jobs.py", "agent_tls.py", "runner.py"):
        shutil.copy(Path(agent.__file__).parent / name, tmp_path / name)
    (tmp_path / "token").write_text(TOKEN)
    bad = subprocess.run([sys.executable, "agent.py", "--token-file", "token", "--port", "0", "--queue-size", "4",
                          "--max-connections", "5"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and ">= --queue-size + 2 = 6" in bad.stderr
    proc = subprocess.Popen([sys.executable, "agent.py", "--token-file", "token", "--port", "0",
                             "--max-connections", "7", "--header-timeout-s", "2.5", "--max-request-seconds", "90",
                             "--read-timeout-s", "12"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stderr.readline().split("http://127.0.0.1:")[1].split()[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/v1/info", headers={"Authorization": f"Bearer {TOKEN}"})
        info = json.loads(conn.getresponse().read())
        conn.close()
        assert (info["max_connections"], info["header_timeout_s"], info["max_request_s"],
                info["read_timeout_s"]) == (7, 2.5, 90, 12)
    finally:
        proc.terminate()
        proc.wait(20)
        proc.stderr.close()


def test_hwsearch_agent_takes_the_limit_flags(tmp_path):
    """`hwsearch agent` passes the limits through: a cap below the queue is refused in one line, exit 2."""
    from conftest import run_cli

    token = tmp_path / "token"
    token.write_text(TOKEN)
    r = run_cli("agent", "--token-file", str(token), "--port", "0", "--max-connections", "1", timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--max-connections must be a whole number >= --queue-size + 2" in r.stderr
    r = run_cli("agent", "--token-file", str(token), "--port", "0", "--header-timeout-s", "0", timeout=60)
    assert r.returncode == 2 and "--header-timeout-s must be a number of seconds > 0" in r.stderr
