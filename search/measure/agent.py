"""Remote measurement agent: a small HTTP server run ON the device (`hwsearch agent` or `python agent.py`).

Needs only the standard library, numpy and onnxruntime, plus runner.py, agent_checks.py, agent_jobs.py and
agent_tls.py in the same folder. With --tls-cert/--tls-key it serves HTTPS (the profile pins the certificate).
API (every call needs `Authorization: Bearer TOKEN`):
  GET  /v1/info       device description, versions, limits, queue state
  POST /v1/reference  body = ONNX bytes; stores a reference model, answers {"sha256": ...}
  POST /v1/optimize   body = ONNX bytes; query: threads, graph_optimization, timeout_s; answers the graph this
                      device's ONNX Runtime executes ({"onnx": base64, "device", "ort_version", ...})
  POST /v1/run        body = inputs as an uncompressed .npz; query: model=<sha256 from /v1/reference>, threads,
                      graph_optimization, timeout_s; answers the model's outputs ({"outputs": base64 .npz, ...})
  POST /v1/measure    body = ONNX bytes; query: warmup, repeats, batch, threads, rounds, max_rounds, agree,
                      memory_batch, memory_limit_mb, timeout_s, graph_optimization,
                      reference=<sha256 from /v1/reference>, sample=dtype:AxB:base64 (one input of the
                      task's data, repeated to the batch as the feed);
                      answers the Measurement record as JSON (candidate and reference interleaved in the
                      same fresh-process rounds, as locally). 409 when the reference is unknown (re-upload).
Errors: 400 bad model/params, Content-Length not ASCII digits, or a request that may run longer than
--max-request-seconds ((max_rounds + 1) x timeout_s: every round and the one-off ONNX Runtime overhead probe are
each stopped at timeout_s); 401 token; 408 request headers not complete within --header-timeout-s, or a stalled
or too slow upload; 411/413 no/too large Content-Length; 422 hung or crashed while measured; 503 queue full, or
(with the X-Hwsearch-If-Idle: 1 header a pool's client sends) another job running or waiting.

Connections: at most --max-connections are served at once, each by its own thread. When all are taken the agent
stops accepting (new clients wait in the kernel's listen queue, first come first served) and cuts the oldest
connection that has spent a second without completing its headers, so sockets that send half a header and stall
cannot hold the agent: a valid request waits about a second per --max-connections stalled sockets queued ahead
of it, and a stalled connection never lives past the header deadline anyway. Install and use: docs/agent.md.

What a client sends (the model bytes, the query) is checked in agent_checks.py before anything opens it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import io
import json
import math
import mmap
import shutil
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

if __package__:  # imported as search.measure.agent
    from search.errors import UserError
    from search.measure import agent_checks, agent_jobs, agent_tls, runner
else:  # standalone on the device: runner.py, agent_checks.py and agent_tls.py sit next to this file
    import agent_checks  # type: ignore[no-redef]
    import agent_jobs  # type: ignore[no-redef]
    import agent_tls  # type: ignore[no-redef]
    import runner  # type: ignore[no-redef]

    class UserError(Exception):  # type: ignore[no-redef]
        """Bad input: printed as one line, exit status 2."""

ALLOWED_DOMAINS, MAX_REQUEST_S, InvalidModel = agent_checks.ALLOWED_DOMAINS, agent_checks.MAX_REQUEST_S, \
    agent_checks.InvalidModel
check_model, content_length, parse_params = agent_checks.check_model, agent_checks.content_length, \
    agent_checks.parse_params

AGENT_VERSION = "1.1"  # 1.1: the IF_IDLE lease header
# A client of a pool sends this header (value "1") with a job to lease the agent: an agent already running or
# queueing a job answers 503 {"busy": true} at once instead of queueing it, and the client tries another board.
IF_IDLE = "X-Hwsearch-If-Idle"
MAX_REFERENCES = 4
# An upload may stall for at most read_timeout_s at a time, and must arrive as a whole within read_timeout_s plus
# one second per MIN_UPLOAD_RATE bytes: a client trickling a byte now and then cannot hold a queue slot forever.
MIN_UPLOAD_RATE = 64 * 2**10
LINGER_S, LINGER_BYTES = 1.0, 4 * 2**20  # what a closing connection may still drain (see shutdown_request)
# When every connection is taken, one that has not sent its whole header block after EVICT_AFTER_S (or half the
# header deadline, if shorter) is cut to make room: a real client sends its headers in one packet, at once.
EVICT_AFTER_S = 1.0
DEFAULTS = {"max_upload_mb": 64.0, "queue_size": 2, "read_timeout_s": 30.0, "header_timeout_s": 5.0,
            "max_connections": 64, "max_request_s": MAX_REQUEST_S}


# ----------------------------------------------------------------------------------------------- server
class _Reader(io.RawIOBase):
    """The request's socket, read against a deadline for the whole phase (header block, then body) as well as
    a per-read stall timeout: a client trickling a byte now and then cannot stretch either phase."""

    def __init__(self, sock: socket.socket, stall_s: float, deadline: float) -> None:
        super().__init__()
        self.sock, self.stall_s, self.deadline = sock, stall_s, deadline
        self.expired = ""  # why the last read raised TimeoutError: cut | deadline | stall

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001 - io's signature (a writable buffer)
        try:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline passed")
            self.sock.settimeout(min(self.stall_s, left))
            n = self.sock.recv_into(b)
            if self.deadline == -math.inf:  # cut while waiting (see AgentServer.get_request)
                raise TimeoutError("connection cut")
            return n
        except TimeoutError:
            left = self.deadline - time.monotonic()
            self.expired = "cut" if self.deadline == -math.inf else "deadline" if left <= 0.01 else "stall"
            raise

    def cut(self) -> None:
        """End the read in progress now (from another thread): the waiting recv returns, readinto raises."""
        self.deadline = -math.inf
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)


class FifoLock:
    """A lock granted in arrival order. threading.Lock lets a newly arrived thread take it before a woken waiter
    runs: on a board at a fifth of a core, a queued job lost to newer ones for 390 s (its client's timeout) while a
    6-worker study kept the queue full."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._next = self._serving = 0

    def __enter__(self) -> FifoLock:
        with self._cv:
            ticket, self._next = self._next, self._next + 1
            self._cv.wait_for(lambda: self._serving == ticket)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cv:
            self._serving += 1
            self._cv.notify_all()


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's server_close() joins every connection thread, daemon ones too: a stop (SIGTERM) then waited
    # for a client mid-header (up to --header-timeout-s) or a job in flight (once past a test's 20 s). A stopping
    # agent answers nobody; its rounds end at their own deadline.
    block_on_close = False
    allow_reuse_address = True
    # The listen backlog (socketserver's default is 5): a burst of clients beyond it overflowed the kernel's accept
    # queue and some got a connection reset instead of the agent's 503 (seen in 1 of ~15 floods of 13 clients).
    # It is also where new clients wait, first come first served, while all --max-connections are taken.
    request_queue_size = 128

    def __init__(self, host: str, port: int, token: str, max_upload_mb: float, queue_size: int,
                 read_timeout_s: float, verbose: bool = False, *,
                 header_timeout_s: float = DEFAULTS["header_timeout_s"],
                 max_connections: int = DEFAULTS["max_connections"],
                 max_request_s: float = DEFAULTS["max_request_s"], tls: ssl.SSLContext | None = None) -> None:
        if not token or not token.strip():
            raise UserError("the agent refuses to start without a token (pass a non-empty token file)")
        if not (math.isfinite(max_upload_mb) and max_upload_mb > 0):
            raise UserError(f"--max-upload-mb must be a number > 0, got {max_upload_mb}")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 0:
            raise UserError(f"--queue-size must be a whole number >= 0, got {queue_size}")
        if not (math.isfinite(read_timeout_s) and read_timeout_s > 0):
            raise UserError(f"--read-timeout-s must be a number of seconds > 0, got {read_timeout_s}")
        if not (math.isfinite(header_timeout_s) and header_timeout_s > 0):
            raise UserError(f"--header-timeout-s must be a number of seconds > 0, got {header_timeout_s}")
        if not (math.isfinite(max_request_s) and max_request_s > 0):
            raise UserError(f"--max-request-seconds must be a number of seconds > 0, got {max_request_s}")
        # The running request and the waiting ones each hold a connection; one more answers /v1/info or a 503.
        if (isinstance(max_connections, bool) or not isinstance(max_connections, int)
                or max_connections < queue_size + 2):
            raise UserError(f"--max-connections must be a whole number >= --queue-size + 2 = {queue_size + 2}, "
                            f"got {max_connections}")
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.token = token.strip().encode()
        self.max_upload, self.max_upload_mb = int(max_upload_mb * 2**20), max_upload_mb
        self.queue_size, self.read_timeout_s, self.verbose = queue_size, read_timeout_s, verbose
        self.header_timeout_s, self.max_request_s = header_timeout_s, max_request_s
        self.max_connections, self.tls = max_connections, tls
        self.evict_after_s = min(EVICT_AFTER_S, header_timeout_s / 2)
        self.connections = threading.BoundedSemaphore(max_connections)  # one per connection thread
        self.slots = threading.BoundedSemaphore(1 + queue_size)  # the running request + the waiting ones
        self.lock = FifoLock()  # one job at a time (two at once would time each other), in arrival order
        self.state_lock = threading.Lock()
        self.pending, self.busy = 0, False  # requests holding a slot; whether one is being measured
        self.jobs = 0  # of those, the jobs (measure, optimize, run): what a pool's lease waits on
        self.in_headers: dict[_Reader, float] = {}  # connections still reading their headers -> since when
        self.quick_close: set[socket.socket] = set()  # cut connections: closed without lingering
        self.stopping = threading.Event()
        self.workdir = agent_jobs.make_workdir()
        self.references: OrderedDict[str, Path] = OrderedDict()

    def info(self) -> dict:
        with self.state_lock:
            queue = {"busy": self.busy, "waiting": self.pending - int(self.busy), "size": self.queue_size,
                     "jobs": self.jobs}
        return {**runner.describe_device(), "agent_version": AGENT_VERSION, "queue": queue,
                "runner_version": runner.RUNNER_VERSION, "max_upload_mb": self.max_upload_mb,
                "max_request_s": self.max_request_s, "max_connections": self.max_connections,
                "header_timeout_s": self.header_timeout_s, "read_timeout_s": self.read_timeout_s,
                "domains": sorted(ALLOWED_DOMAINS)}

    def store_reference(self, data: bytes | memoryview) -> str:
        digest = hashlib.sha256(data).hexdigest()
        with self.state_lock:
            if digest not in self.references:
                path = self.workdir / f"reference-{digest}.onnx"
                path.write_bytes(data)
                self.references[digest] = path
                while len(self.references) > MAX_REFERENCES:
                    self.references.popitem(last=False)[1].unlink(missing_ok=True)
            self.references.move_to_end(digest)
        return digest

    # ---- connection cap: accept only while a connection thread is free -----------------------------------------
    def get_request(self) -> tuple[socket.socket, object]:
        """Accept the next connection once fewer than max_connections are open. While all are taken nothing is
        accepted (clients wait in the listen queue, no thread is started) and the oldest connection that is
        still reading its headers after evict_after_s is cut; all others end at the header deadline."""
        while not self.connections.acquire(blocking=False):
            if self.connections.acquire(timeout=self._cut_stalled()):
                break
            if self.stopping.is_set():  # shutdown() while all were taken: serve_forever gives up this accept
                raise OSError("the agent is stopping")
        try:
            sock, address = super().get_request()
            if self.tls is not None:  # the handshake runs in the connection's thread, bounded by the header deadline
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            return sock, address
        except BaseException:
            self.connections.release()
            raise

    def _cut_stalled(self) -> float:
        """Cut the oldest connection stalled in its headers, if one is old enough; return how long to wait for a
        free connection before looking again."""
        with self.state_lock:
            now = time.monotonic()
            oldest = min(self.in_headers.items(), key=lambda kv: kv[1], default=None)
            if oldest is None:  # every connection is past its headers (uploads, answers): wait for one to end
                return 0.25
            reader, since = oldest
            if now - since < self.evict_after_s:
                return max(0.01, min(0.25, since + self.evict_after_s - now))
            del self.in_headers[reader]
            reader.cut()
            return 0.5  # its thread answers 408 and ends right away

    def process_request(self, request: socket.socket, client_address: object) -> None:
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self.connections.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:
        try:
            if self.tls is not None and not agent_tls.handshake(request, self.header_timeout_s):
                self.close_request(request)  # not TLS, or too slow: nothing to answer in
                return
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def handle_error(self, request: socket.socket, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # the client went away mid-answer: nothing to report
            if self.verbose:
                print(f"connection from {client_address} ended: {sys.exc_info()[1]}", file=sys.stderr)
            return
        super().handle_error(request, client_address)

    def shutdown(self) -> None:
        self.stopping.set()
        super().shutdown()

    def shutdown_request(self, request: socket.socket) -> None:
        if request in self.quick_close:  # cut in its headers: drain what is already there (an RST could overtake
            self.quick_close.discard(request)  # the 408), but do not wait for a client that stalls
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_WR)
                request.setblocking(False)
                drained = 0
                while drained < LINGER_BYTES and (chunk := request.recv(2**16)):
                    drained += len(chunk)
            self.close_request(request)
            return
        # Lingering close: a request answered before its body was read (503, 401, 413, ...) leaves bytes in the
        # receive buffer, and closing on them sends an RST that can reach the client before the answer. So stop
        # writing, drain what the client already sent (bounded in bytes and time), then close.
        with contextlib.suppress(OSError):
            request.shutdown(socket.SHUT_WR)
            deadline, drained = time.monotonic() + LINGER_S, 0
            while drained < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                request.settimeout(left)
                chunk = request.recv(2**16)
                if not chunk:
                    break
                drained += len(chunk)
        self.close_request(request)

    def server_close(self) -> None:
        super().server_close()
        if hasattr(self, "workdir"):  # not yet made when binding failed (the base class closes right away)
            shutil.rmtree(self.workdir, ignore_errors=True)


Answer = agent_jobs.Answer


class _Handler(BaseHTTPRequestHandler):
    server: AgentServer
    server_version = f"hwsearch-agent/{AGENT_VERSION}"

    def setup(self) -> None:
        self.timeout = self.server.read_timeout_s  # socket timeout on every read (and write) of the request
        super().setup()
        # Until the header block is in, every read also counts against the header deadline.
        self.requestline, self.request_version, self.command = "", "HTTP/1.0", None  # for a 408 sent early
        self.accepted = time.monotonic()
        self.reader = _Reader(self.connection, self.server.read_timeout_s, self.accepted + self.server.header_timeout_s)
        self.rfile.close()
        self.rfile = io.BufferedReader(self.reader)
        with self.server.state_lock:
            self.server.in_headers[self.reader] = self.accepted

    def _headers_done(self) -> bool:
        """Leave the header phase; False when this connection was already cut (it must not go on)."""
        with self.server.state_lock:
            if self.server.in_headers.pop(self.reader, None) is None:
                return False
        self.reader.deadline = math.inf
        self.connection.settimeout(self.server.read_timeout_s)  # the last read may have left it shorter
        return True

    def parse_request(self) -> bool:
        ok = super().parse_request()  # reads the header block
        return self._headers_done() and ok

    def handle_one_request(self) -> None:
        super().handle_one_request()  # answers nothing when the request line or headers timed out
        with self.server.state_lock:
            in_headers = self.server.in_headers.pop(self.reader, None) is not None
        srv, age = self.server, time.monotonic() - self.accepted
        if self.reader.deadline == -math.inf:
            why = (f"request headers not complete after {age:.1f} s while all --max-connections "
                   f"{srv.max_connections} were taken; cut to make room")
        elif in_headers and self.reader.expired == "stall":
            why = f"request headers stalled for {srv.read_timeout_s:g} s (--read-timeout-s); dropped"
        elif in_headers and self.reader.expired:
            why = f"request headers not complete within {srv.header_timeout_s:g} s (--header-timeout-s); dropped"
        else:
            return
        srv.quick_close.add(self.request)
        with contextlib.suppress(OSError):
            self.connection.settimeout(1.0)  # a few hundred bytes into an empty send buffer
            self._send(408, {"error": why})

    def finish(self) -> None:
        with self.server.state_lock:
            self.server.in_headers.pop(self.reader, None)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, code: int, payload: dict, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        for key, value in {"Content-Type": "application/json", "Content-Length": str(len(body)),
                           "Connection": "close", **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _authorized(self) -> bool:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.server.token):
            return True
        self._send(401, {"error": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"})
        return False

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if urlsplit(self.path).path != "/v1/info":
            return self._send(404, {"error": "not found; see GET /v1/info, POST /v1/measure, /v1/reference"})
        if self._authorized():
            self._send(200, self.server.info())

    def do_POST(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        if url.path not in ("/v1/measure", "/v1/reference", "/v1/optimize", "/v1/run"):
            return self._send(404, {"error": "not found"})
        if not self._authorized():
            return
        values = self.headers.get_all("Content-Length") or []
        if not values:  # checked before reading anything: no unbounded or chunked uploads
            return self._send(411, {"error": "Content-Length required"})
        length, why = content_length(values)
        if length is None:
            return self._send(400, {"error": why})
        if length > self.server.max_upload:
            return self._send(413, {"error": f"model is {length / 2**20:.1f} MB; this agent accepts at "
                                             f"most {self.server.max_upload_mb:g} MB (--max-upload-mb)"})
        try:
            params = parse_params(url.query, self.server.max_request_s) if url.path != "/v1/reference" else {}
        except ValueError as e:
            return self._send(400, {"error": str(e)})
        if not self.server.slots.acquire(blocking=False):
            return self._send(503, {"error": "agent busy: measurement queue full"}, {"Retry-After": "2"})
        job = url.path != "/v1/reference"
        with self.server.state_lock:
            # A pool's lease (IF_IDLE header): refused while another job holds a slot, decided under the same lock
            # that counts this one, so two clients can never both take an idle agent.
            taken = job and self.headers.get(IF_IDLE) == "1" and self.server.jobs > 0
            if not taken:
                self.server.pending += 1
                self.server.jobs += job
        if taken:
            self.server.slots.release()
            return self._send(503, {"error": "agent busy: another job is running", "busy": True},
                              {"Retry-After": "1"})
        try:
            answer = self._post(url.path, length, params)
        finally:  # the slot is free before the client reads its answer, so it may send the next at once
            with self.server.state_lock:
                self.server.pending -= 1
                self.server.jobs -= job
            self.server.slots.release()
        self._send(*answer)

    def _read_body(self, into: memoryview) -> int:
        """Fill `into` from the request body against a per-read timeout (a stall) and an overall deadline (a
        trickle): TimeoutError. Returns the bytes read, fewer when the client closed early."""
        timeout = self.server.read_timeout_s
        self.reader.deadline = time.monotonic() + timeout + len(into) / MIN_UPLOAD_RATE
        got = 0
        try:
            while got < len(into):
                n = self.rfile.readinto1(into[got:got + 2**20])
                if not n:
                    break
                got += n
        finally:
            self.reader.deadline = math.inf
            self.connection.settimeout(timeout)  # for writing the answer
        return got

    def _post(self, path: str, length: int, params: dict) -> Answer:
        # The body goes to anonymous memory, committed page by page as bytes arrive and handed back to the OS
        # when the request ends: a heap buffer would stay in the agent's resident memory after each upload.
        buf = mmap.mmap(-1, max(length, 1))
        try:
            return self._upload(path, memoryview(buf)[:length], params)
        finally:
            with contextlib.suppress(BufferError):  # a view still alive: freed with it instead
                buf.close()

    def _upload(self, path: str, data: memoryview, params: dict) -> Answer:
        try:
            length, got = len(data), self._read_body(data)
        except TimeoutError:
            return 408, {"error": f"upload slower than {self.server.read_timeout_s:g} s (a stall) or "
                                  f"{MIN_UPLOAD_RATE // 2**10} KiB/s (on average); dropped"}
        if got != length:
            return 400, {"error": "body shorter than Content-Length"}
        if path != "/v1/run":  # /v1/run's body is the inputs (.npz), read in the job's fresh process
            try:
                check_model(data)
            except InvalidModel as e:
                return 400, {"error": str(e)}
        if path == "/v1/reference":
            return 200, {"sha256": self.server.store_reference(data)}
        job = {"/v1/measure": agent_jobs.measure, "/v1/optimize": agent_jobs.optimize, "/v1/run": agent_jobs.run}
        return job[path](self.server, data, params, uuid.uuid4().hex)


# ----------------------------------------------------------------------------------------- entry points
def read_token(path: str | Path) -> str:
    p = Path(path)
    try:
        token = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise UserError(f"{p}: token file not found (the agent refuses to start without a token)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read the token file ({e})") from None
    if not token:
        raise UserError(f"{p}: token file is empty (the agent refuses to start without a token)")
    return token


def make_server(host: str, port: int, token: str, max_upload_mb: float = DEFAULTS["max_upload_mb"],
                queue_size: int = DEFAULTS["queue_size"], read_timeout_s: float = DEFAULTS["read_timeout_s"],
                verbose: bool = False, *, header_timeout_s: float = DEFAULTS["header_timeout_s"],
                max_connections: int = DEFAULTS["max_connections"],
                max_request_s: float = DEFAULTS["max_request_s"], tls: ssl.SSLContext | None = None) -> AgentServer:
    """Bind the agent (port 0 picks a free one) without serving yet; tests run serve_forever in a thread."""
    try:
        return AgentServer(host, port, token, max_upload_mb, queue_size, read_timeout_s, verbose,
                           header_timeout_s=header_timeout_s, max_connections=max_connections,
                           max_request_s=max_request_s, tls=tls)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve(host: str, port: int, token: str, max_upload_mb: float = DEFAULTS["max_upload_mb"],
          queue_size: int = DEFAULTS["queue_size"], read_timeout_s: float = DEFAULTS["read_timeout_s"], *,
          tls_cert: str | None = None, tls_key: str | None = None, **limits: float) -> None:
    """Serve until interrupted; HTTPS with `tls_cert` and `tls_key` (both or neither); `limits`: make_server's."""
    try:
        tls = agent_tls.server_context(tls_cert, tls_key) if tls_cert or tls_key else None
    except ValueError as e:
        raise UserError(str(e)) from None
    # Before the banner: a service manager (or a test) may send SIGTERM the moment it reads it.
    if threading.current_thread() is threading.main_thread():  # a service stop also removes the work folder
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = make_server(host, port, token, max_upload_mb, queue_size, read_timeout_s, verbose=True, tls=tls,
                         **limits)
    try:
        bound, scheme = server.server_address[1], "https" if tls else "http"
        print(f"hwsearch agent {AGENT_VERSION} on {scheme}://{host}:{bound} "
              f"({runner.describe_device()['summary']})", file=sys.stderr)
        if tls_cert:
            print(f"certificate sha256 {agent_tls.fingerprint(tls_cert)} (the profile's measure.tls_sha256)",
                  file=sys.stderr)
        elif host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {host}, reachable from other machines over plain HTTP; anyone with "
                  "the token can run models here (prefer 127.0.0.1 and an SSH tunnel, a firewall, or "
                  "--tls-cert/--tls-key)", file=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent.py", description="hwsearch measurement agent (device side)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token-file", required=True, help="file holding the bearer token")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULTS["max_upload_mb"])
    parser.add_argument("--queue-size", type=int, default=DEFAULTS["queue_size"],
                        help="requests that may wait for the running one; more get 503 (default: %(default)s)")
    parser.add_argument("--max-connections", type=int, default=DEFAULTS["max_connections"],
                        help="connections served at once, one thread each; more wait to be accepted "
                             "(default: %(default)s)")
    parser.add_argument("--header-timeout-s", type=float, default=DEFAULTS["header_timeout_s"],
                        help="seconds a client has to send its whole header block (default: %(default)s)")
    parser.add_argument("--read-timeout-s", type=float, default=DEFAULTS["read_timeout_s"],
                        help="seconds an upload may stall (default: %(default)s)")
    parser.add_argument("--max-request-seconds", type=float, default=DEFAULTS["max_request_s"],
                        help="most seconds one measurement may run, as (rounds + 1) x timeout_s "
                             "(default: %(default)s)")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (with --tls-key)")
    parser.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    args = parser.parse_args(argv)
    try:
        serve(args.host, args.port, read_token(args.token_file), args.max_upload_mb, args.queue_size,
              args.read_timeout_s, tls_cert=args.tls_cert, tls_key=args.tls_key,
              header_timeout_s=args.header_timeout_s, max_connections=args.max_connections,
              max_request_s=args.max_request_seconds)
    except UserError as e:
        print(f"agent: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
