"""TLS for the measurement agent, for networks where an SSH tunnel is not an option.

The agent serves HTTPS with `--tls-cert FILE --tls-key FILE` (a self-signed certificate is enough); the client
trusts exactly that certificate: the device profile pins the SHA-256 of its DER bytes (`measure.tls_sha256`,
printed by the agent at start), so no certificate authority and no host name are involved, and a different
certificate (a man in the middle, a re-generated key) is refused before the token is sent. Without a pin, an
https:// URL is verified against the system's certificate authorities as usual.

Standard library only: on the device this file sits next to agent.py, as runner.py and agent_checks.py do.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import http.client
import re
import socket
import ssl
import urllib.request
from pathlib import Path

_HEX64 = re.compile(r"[0-9a-f]{64}")


class PinMismatch(OSError):
    """The agent presented a certificate other than the pinned one (an OSError: urllib wraps it in URLError)."""


def server_context(cert_file: str | Path | None, key_file: str | Path | None) -> ssl.SSLContext:
    """A TLS 1.2+ server context for the agent; ValueError naming the file and what is wrong with it."""
    if cert_file is None or key_file is None:
        raise ValueError("--tls-cert and --tls-key go together (the certificate and its private key)")
    for flag, path in (("--tls-cert", cert_file), ("--tls-key", key_file)):
        if not Path(path).is_file():
            raise ValueError(f"{flag} {path}: file not found")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except ssl.SSLError as e:
        raise ValueError(f"--tls-cert {cert_file} / --tls-key {key_file}: not a PEM certificate and its private "
                         f"key ({e.reason or e})") from None
    return ctx


def fingerprint(cert_file: str | Path) -> str:
    """SHA-256 of the certificate's DER bytes, lowercase hex: the value a profile pins as measure.tls_sha256."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(Path(cert_file).read_text(encoding="ascii"))).hexdigest()


def normalize_pin(value: str) -> str:
    """A pin as 64 lowercase hex digits; colons and spaces (as `openssl x509 -fingerprint` prints) are dropped.
    ValueError when it is not a SHA-256."""
    pin = re.sub(r"[\s:]", "", value).lower()
    if not _HEX64.fullmatch(pin):
        raise ValueError("must be the certificate's SHA-256: 64 hex digits, colons allowed "
                         "(the agent prints it at start)")
    return pin


def handshake(sock: socket.socket, timeout_s: float) -> bool:
    """The server side of the handshake, bounded in time (a client that connects and stays silent must not hold
    a connection past the header deadline); False when it failed."""
    try:
        sock.settimeout(timeout_s)
        sock.do_handshake()
    except (OSError, ValueError):
        return False
    return True


class _PinnedConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, *, pin: str, **kwargs) -> None:
        super().__init__(host, **kwargs)
        self.pin = pin

    def connect(self) -> None:
        super().connect()
        der = self.sock.getpeercert(binary_form=True) or b""
        got = hashlib.sha256(der).hexdigest()
        if not hmac.compare_digest(got, self.pin):
            self.sock.close()
            raise PinMismatch(f"the agent's certificate has sha256 {got}, the profile pins {self.pin}")


class _PinnedHandler(urllib.request.HTTPSHandler):
    def __init__(self, pin: str) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the pin below is the whole verification
        super().__init__(context=ctx)
        self.pin = pin

    def https_open(self, req: urllib.request.Request):  # noqa: ANN201 - urllib's response type
        return self.do_open(functools.partial(_PinnedConnection, pin=self.pin), req, context=self._context)


def opener(pin: str | None) -> urllib.request.OpenerDirector:
    """urllib's opener for the agent's URL: with a pin, https:// trusts only that certificate."""
    return urllib.request.build_opener(_PinnedHandler(pin)) if pin else urllib.request.build_opener()
