"""The agent over TLS: a real agent serving HTTPS on loopback, a client that trusts the pinned certificate only."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _measure_fixtures import agent_serving, models
from pydantic import ValidationError

from search.config.profile import DeviceProfile
from search.errors import UserError
from search.measure import agent, agent_tls
from search.measure.remote import RemoteBackend

TOKEN = "tls-test-token"
AGENT_DIR = Path(agent.__file__).parent
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _cert(folder: Path, name: str) -> tuple[Path, Path, str]:
    """A self-signed certificate, its key, and its SHA-256 as `openssl x509 -fingerprint` prints it."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}"],
                   check=True, capture_output=True)
    out = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
                         check=True, capture_output=True, text=True).stdout
    return cert, key, out.strip().split("=", 1)[1]  # AB:CD:...: the profile accepts it as printed


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    return {"agent": _cert(folder, "agent"), "other": _cert(folder, "other")}


@pytest.fixture(scope="module")
def tls_agent(certs):
    cert, key, _ = certs["agent"]
    with agent_serving(TOKEN, tls=agent_tls.server_context(cert, key), header_timeout_s=2.0) as srv:
        yield srv


def _backend(srv, monkeypatch, pin: str | None, scheme: str = "https") -> RemoteBackend:
    monkeypatch.setenv("HWSEARCH_TLS_TOKEN", TOKEN)
    url = f"{scheme}://127.0.0.1:{srv.server_address[1]}"
    profile = DeviceProfile(name="tls", measure={"backend": "remote", "url": url, "token_env": "HWSEARCH_TLS_TOKEN",
                                                 "warmup": 5, "repeats": 20, "tls_sha256": pin})
    return RemoteBackend(profile, backoff_s=0.05, retries=2)


def test_the_pinned_client_measures_over_https(tls_agent, certs, monkeypatch):
    backend = _backend(tls_agent, monkeypatch, certs["agent"][2])
    assert backend.info()["runner_version"]
    record = backend.measure(models()["tiny"], models()["tiny"])
    assert record.latency.p50_ms > 0 and record.backend.startswith("remote https://")


def test_another_certificate_is_refused_before_the_token_is_sent(tls_agent, certs, monkeypatch):
    with pytest.raises(UserError, match="TLS refused: the agent's certificate has sha256 .* the profile pins"):
        _backend(tls_agent, monkeypatch, certs["other"][2]).info()
    # Unpinned, https:// verifies against the system's authorities: a self-signed certificate is refused.
    with pytest.raises(UserError, match="TLS refused: .*CERTIFICATE_VERIFY_FAILED"):
        _backend(tls_agent, monkeypatch, None).info()


def test_a_silent_or_plain_http_client_does_not_hold_the_agent(tls_agent, certs, monkeypatch):
    """The handshake runs in the connection's own thread, bounded by the header deadline: a client that
    connects and sends nothing, or speaks plain HTTP, gets no answer and does not delay the next one."""
    port = tls_agent.server_address[1]
    silent = socket.create_connection(("127.0.0.1", port))
    plain = socket.create_connection(("127.0.0.1", port))
    plain.sendall(f"GET /v1/info HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    try:
        started = time.monotonic()
        assert _backend(tls_agent, monkeypatch, certs["agent"][2]).info()["runner_version"]
        assert time.monotonic() - started < 1.5  # not after the silent client's 2 s handshake deadline
        plain.settimeout(5)
        try:
            answer = plain.recv(4096)  # a TLS alert at most, then the close
        except ConnectionResetError:
            answer = b""
        assert b"HTTP/" not in answer and b"runner_version" not in answer  # nothing served in the clear
    finally:
        silent.close()
        plain.close()


def test_profile_pin_must_be_a_sha256_of_an_https_agent():
    measure = {"backend": "remote", "url": "https://board:8765", "token_env": "T"}
    ok = DeviceProfile(name="p", measure={**measure, "tls_sha256": "AB:" * 31 + "CD"})
    assert ok.measure.tls_sha256 == "ab" * 31 + "cd"
    # Transport, not measurement: pinning an agent does not orphan its studies or caches (they key on the digest).
    assert ok.digest() == DeviceProfile(name="p", measure=measure).digest()
    with pytest.raises(ValidationError, match="64 hex digits"):
        DeviceProfile(name="p", measure={**measure, "tls_sha256": "abc"})
    with pytest.raises(ValidationError, match="not https://"):
        DeviceProfile(name="p", measure={**measure, "url": "http://board:8765", "tls_sha256": "ab" * 32})


def test_standalone_agent_prints_its_pin_and_refuses_half_a_tls_setup(tmp_path, certs):
    """agent.py with agent_tls.py next to it, as copied to a device: the banner names https and the pin a
    profile needs; --tls-cert without --tls-key, or a missing file, is one line and exit status 2."""
    for name in ("agent.py", "agent_checks.py", "agent_jobs.py", "agent_tls.py", "runner.py"):
        shutil.copy(AGENT_DIR / name, tmp_path / name)
    (tmp_path / "token").write_text(TOKEN)
    cert, key, pin = certs["agent"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    base = [sys.executable, "agent.py", "--port", "0", "--token-file", "token"]
    for extra, says in ((["--tls-cert", str(cert)], "--tls-cert and --tls-key go together"),
                        (["--tls-cert", "nope.pem", "--tls-key", str(key)], "--tls-cert nope.pem: file not found"),
                        (["--tls-cert", str(key), "--tls-key", str(key)], "not a PEM certificate")):
        bad = subprocess.run(base + extra, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and says in bad.stderr and bad.stderr.strip().count("\n") == 0, bad.stderr
    proc = subprocess.Popen(base + ["--host", "0.0.0.0", "--tls-cert", str(cert), "--tls-key", str(key)],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert "https://0.0.0.0:" in proc.stderr.readline()
        pinned = proc.stderr.readline()
        assert pinned.startswith("certificate sha256 ") and agent_tls.normalize_pin(pin) in pinned
        assert agent_tls.fingerprint(cert) == agent_tls.normalize_pin(pin)
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()
