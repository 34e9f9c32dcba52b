"""Remote backend: the client of the measurement agent (search/measure/agent.py) running on the device.

Drift design: the reference model is uploaded once (POST /v1/reference, answered with its sha256) and each
measurement names it, so the agent interleaves candidate and reference in the same fresh-process rounds,
exactly as the local backend does. An agent that restarted answers 409; the client then re-uploads.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import math
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlencode

from search.config.profile import DeviceProfile
from search.errors import TrialFailure, UserError
from search.measure import agent_tls
from search.measure.agent import IF_IDLE
from search.measure.local import existing, memory_limit_mb
from search.measure.record import Baselines, LatencyStats, Measurement

T = TypeVar("T")
_TRANSIENT = (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine)


class AgentUnreachable(TrialFailure):
    """The agent did not answer (refused, reset, name not found) after the retries."""


class AgentBusy(TrialFailure):
    """A leased job was refused: the agent is running or queueing another (its IF_IDLE answer)."""


@dataclass
class _Agent:
    """One board of the pool, as this client knows it."""

    url: str
    max_upload_mb: float | None = None  # read from /v1/info before the first measurement
    max_request_s: float = 600.0  # the agent's --max-request-seconds
    uploaded: set[str] = field(default_factory=set)  # reference models it holds
    down_until: float = 0.0  # time.monotonic() before which it is set aside (it did not answer)


class RemoteBackend:
    """Measure on a device running `hwsearch agent`; the token comes from $<profile.measure.token_env>.

    A pool (`measure.url` plus `measure.pool`: boards of one model) is shared by leasing: each job (measure,
    optimize) goes to a board with nothing running, starting at this process's own (by pid); the board itself
    grants the lease (IF_IDLE), so workers of any study never queue on one board while another is free. While
    every board is busy the client polls their /v1/info, and queues at its own board after LEASE_WAIT_S. An
    agent that does not answer is set aside for DOWN_S while the same request goes to the next. A request is
    answered by one agent only, so nothing is measured twice."""

    name = "remote"
    DOWN_S = 30.0
    POLL_S = 0.25  # between rounds of /v1/info while every board of the pool is busy
    LEASE_WAIT_S = 600.0  # then queue at this process's own board (the agent's default --max-request-seconds)

    def __init__(self, profile: DeviceProfile, *, reference_baseline: LatencyStats | None = None,
                 sample: str | None = None, retries: int = 4, backoff_s: float = 0.5) -> None:
        m = profile.measure
        if not m.url or not m.token_env:
            raise UserError(f"profile {profile.name}: the remote backend needs measure.url and token_env")
        self.profile = profile
        self.agents = [_Agent(u) for u in dict.fromkeys(u.rstrip("/") for u in (m.url, *m.pool))]
        self._at = os.getpid() % len(self.agents)  # the workers of a study spread over the pool
        token = os.environ.get(m.token_env, "").strip()
        if not token:
            raise UserError(f"environment variable {m.token_env} is not set; it must hold the token of the "
                            f"agent at {self.url}")
        self._auth = f"Bearer {token}"
        self._opener = agent_tls.opener(m.tls_sha256)  # https:// with a pin trusts that certificate alone
        self.retries, self.backoff_s = max(1, retries), backoff_s
        self.baselines = Baselines(reference_baseline)
        self.sample = sample  # runner.encode_sample of one task input: the feed, sent in the query

    @property
    def url(self) -> str:
        """The agent this process talks to now."""
        return self.agents[self._at].url

    def _failover(self, work: Callable[[_Agent], T]) -> T:
        """`work(agent)` on this process's agent; one that is unreachable is set aside for DOWN_S and the next is
        tried (agents set aside come last, not never: a whole pool down is still tried once each)."""
        start, n, now = self._at, len(self.agents), time.monotonic()
        ring = sorted(((start + k) % n for k in range(n)), key=lambda i: self.agents[i].down_until > now)
        errors: list[str] = []
        for i in ring:
            self._at, agent = i, self.agents[i]
            try:
                return work(agent)
            except AgentUnreachable as e:
                agent.down_until = time.monotonic() + self.DOWN_S
                errors.append(str(e))
        raise AgentUnreachable(errors[0] if n == 1 else f"every agent of the pool is unreachable: {'; '.join(errors)}")

    def _leased(self, work: Callable[[_Agent, bool], T]) -> T:
        """`work(agent, True)` on a board of the pool that runs nothing (one agent: `_failover`, queueing there)."""
        n = len(self.agents)
        if n == 1:
            return self._failover(lambda agent: work(agent, False))
        deadline = time.monotonic() + self.LEASE_WAIT_S
        while time.monotonic() < deadline:
            start, now = self._at, time.monotonic()
            live = [i for i in ((start + k) % n for k in range(n)) if self.agents[i].down_until <= now]
            if not live:
                break  # every board set aside: each is tried once below, as a lone client would
            for i in live:
                self._at, agent = i, self.agents[i]
                try:
                    if self._idle(agent):
                        return work(agent, True)
                except AgentBusy:
                    continue  # taken between its /v1/info and the job: the next board
                except AgentUnreachable:
                    agent.down_until = time.monotonic() + self.DOWN_S
            self._at = start
            time.sleep(self.POLL_S)
        return self._failover(lambda agent: work(agent, False))

    def _idle(self, agent: _Agent) -> bool:
        """Whether the board runs and queues no job, by its /v1/info (an agent before 1.1 reports no `jobs`)."""
        queue = self._check(*self._request("GET", "/v1/info", timeout=10), "info").get("queue", {})
        return not queue.get("jobs", int(bool(queue.get("busy"))) + int(queue.get("waiting", 0)))

    # ---- HTTP ---------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: bytes | None = None,
                 timeout: float = 30.0, lease: bool = False) -> tuple[int, dict]:
        """One call with retries on transient failures (refused/reset connection, 503). `lease`: the job only if
        the agent runs no other (IF_IDLE), else AgentBusy at once."""
        reason = ""
        headers = {"Authorization": self._auth, "Content-Type": "application/onnx", **({IF_IDLE: "1"} if lease else {})}
        # A full queue (503) is a busy board, not a dead one: wait for it as long as a job may run, apart from the
        # retries that count connection failures (more workers than a board's queue must not fail trials).
        attempt, full_until = 0, time.monotonic() + self.LEASE_WAIT_S
        while attempt < self.retries:
            req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
            try:
                with self._opener.open(req, timeout=timeout) as resp:
                    return resp.status, _json(resp.read())
            except urllib.error.HTTPError as e:
                status, payload = e.code, _json(e.read())
                if status == 503 and lease and payload.get("busy") is True:
                    raise AgentBusy(f"agent at {self.url} is running another job") from None
                if status != 503:
                    return status, payload
                reason = "busy (measurement queue full)"
                if time.monotonic() < full_until:
                    time.sleep(_retry_after(e.headers, self.backoff_s))
                    continue
            except TimeoutError:
                raise TrialFailure(f"agent at {self.url} gave no answer in {timeout:g} s") from None
            except urllib.error.URLError as e:
                if isinstance(e.reason, ssl.SSLError | agent_tls.PinMismatch):  # retrying cannot fix a certificate
                    raise UserError(f"agent at {self.url}: TLS refused: {_reason(e.reason)} (check the profile's "
                                    "measure.tls_sha256 against the sha256 the agent prints at start)") from None
                reason = _reason(e.reason)
            except _TRANSIENT as e:
                reason = _reason(e)
            attempt += 1
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        raise AgentUnreachable(f"measurement agent at {self.url} is unreachable: {reason} "
                               f"({self.retries} attempts); is `hwsearch agent` running there?")

    def _check(self, status: int, payload: dict, what: str) -> dict:
        if status == 200:
            return payload
        message = payload.get("error", "no reason given")
        if status == 401:
            env = self.profile.measure.token_env
            raise UserError(f"agent at {self.url} rejected the token (check ${env})")
        raise TrialFailure(f"agent at {self.url} refused {what} ({status}): {message}")

    def info(self) -> dict:
        """The device description the agent reports (platform, cpu, cores, versions, limits)."""
        return self._failover(lambda _: self._check(*self._request("GET", "/v1/info"), "info"))

    def agent_infos(self) -> list[tuple[str, dict | str]]:
        """[(url, its /v1/info or why it did not answer)] for every agent of the pool, each asked once."""
        out: list[tuple[str, dict | str]] = []
        start = self._at
        for i, agent in enumerate(self.agents):
            self._at = i
            try:
                out.append((agent.url, self._check(*self._request("GET", "/v1/info", timeout=10), "info")))
            except (TrialFailure, UserError) as e:
                out.append((agent.url, str(e)))
        self._at = start
        return out

    def optimized_model(self, onnx_path: str | os.PathLike) -> tuple[bytes, dict] | None:
        """(the graph the device's ONNX Runtime executes for the model, with the profile's session options; where
        it was made): the board's own view of what each layer runs as (search.compress.runs.classify). None from
        an agent that predates /v1/optimize (404)."""
        return self._leased(lambda _, lease: self._optimized_here(onnx_path, lease))

    def _optimized_here(self, onnx_path: str | os.PathLike, lease: bool = False) -> tuple[bytes, dict] | None:
        path = existing(onnx_path, "model")
        m, rt = self.profile.measure, self.profile.runtime
        query = urlencode({"threads": rt.threads, "graph_optimization": rt.graph_optimization,
                           "timeout_s": m.timeout_s})
        status, payload = self._request("POST", "/v1/optimize?" + query, path.read_bytes(), m.timeout_s * 3 + 30,
                                        lease=lease)
        if status == 404:
            return None
        payload = self._check(status, payload, f"to optimize {path.name}")
        try:
            graph = base64.b64decode(payload.pop("onnx"), validate=True)
        except (KeyError, ValueError, TypeError):
            raise TrialFailure(f"agent at {self.url} answered /v1/optimize without a graph; is it older than "
                               "this client? (update agent.py and runner.py on the device)") from None
        return graph, payload

    def run_outputs(self, onnx_path: str | os.PathLike, inputs: dict) -> tuple[dict, dict]:
        """({output name: array} of the model run once on the device on `inputs` ({input name: array}), where it
        ran): `export --verify` compares them with this machine's outputs."""
        return self._failover(lambda _: self._run_here(onnx_path, inputs))

    def _run_here(self, onnx_path: str | os.PathLike, inputs: dict) -> tuple[dict, dict]:
        import numpy as np

        data = existing(onnx_path, "model").read_bytes()
        key = hashlib.sha256(data).hexdigest()
        body = io.BytesIO()
        np.savez(body, **inputs)
        m, rt = self.profile.measure, self.profile.runtime
        query = urlencode({"model": key, "threads": rt.threads, "graph_optimization": rt.graph_optimization,
                           "timeout_s": m.timeout_s})
        for _ in range(2):  # 409: the agent restarted (or evicted the model); upload it again
            self._check(*self._request("POST", "/v1/reference", data), "the model")
            status, payload = self._request("POST", "/v1/run?" + query, body.getvalue(), m.timeout_s * 3 + 30)
            if status != 409:
                break
        payload = self._check(status, payload, f"to run {Path(onnx_path).name}")
        try:
            with np.load(io.BytesIO(base64.b64decode(payload.pop("outputs"), validate=True)),
                         allow_pickle=False) as out:
                return {k: out[k] for k in out.files}, payload
        except (KeyError, ValueError, TypeError, OSError):
            raise TrialFailure(f"agent at {self.url} answered /v1/run without outputs; is it older than this "
                               "client? (update the agent's files on the device)") from None

    # ---- measurement --------------------------------------------------------------------------------------
    def measure(self, onnx_path: str | os.PathLike, reference_path: str | os.PathLike | None = None, *,
                rounds: int | None = None, max_rounds: int | None = None) -> Measurement:
        """`rounds` / `max_rounds` override the profile's (the cache's one-round re-check)."""
        return self._leased(lambda agent, lease: self._measure_here(agent, onnx_path, reference_path, rounds,
                                                                    max_rounds, lease))

    def _measure_here(self, agent: _Agent, onnx_path: str | os.PathLike, reference_path: str | os.PathLike | None,
                      rounds: int | None, max_rounds: int | None, lease: bool = False) -> Measurement:
        path = existing(onnx_path, "model")
        data = path.read_bytes()
        if agent.max_upload_mb is None:
            info = self._check(*self._request("GET", "/v1/info"), "info")
            agent.max_upload_mb = float(info.get("max_upload_mb", 64))
            agent.max_request_s = float(info.get("max_request_s", agent.max_request_s))
        if len(data) > agent.max_upload_mb * 2**20:  # refused mid-upload, it would look like a reset socket
            raise TrialFailure(f"{path.name} is {len(data) / 2**20:.1f} MB; the agent at {self.url} accepts "
                               f"at most {agent.max_upload_mb:g} MB")
        m, rt = self.profile.measure, self.profile.runtime
        rounds = rounds or m.rounds
        # Extra rounds only as far as the agent's bound (max_rounds + 1) x timeout_s allows; `rounds` itself
        # over it is the agent's clear 400.
        fits = math.floor(agent.max_request_s / m.timeout_s) - 1
        max_rounds = max(rounds, min(max_rounds or m.max_rounds, fits))
        # An agent from before the agreement rule refuses max_rounds and agree by name (400): update it.
        params: dict = {"warmup": m.warmup, "repeats": m.repeats, "batch": m.batch, "threads": rt.threads,
                        "rounds": rounds, "max_rounds": max_rounds, "agree": m.agree, "timeout_s": m.timeout_s,
                        "graph_optimization": rt.graph_optimization}
        if m.memory_batch:
            params["memory_batch"] = m.memory_batch
        if self.sample:
            params["sample"] = self.sample
        limit = memory_limit_mb(self.profile.budgets.memory_mb) if self.profile.budgets.memory_mb else None
        if limit:  # the agent caps it at 3/4 of the device's memory, and applies that cap when absent
            params["memory_limit_mb"] = round(limit, 1)
        ref_data, ref_key = None, None
        if reference_path is not None:
            ref_data = existing(reference_path, "reference model").read_bytes()
            ref_key = hashlib.sha256(ref_data).hexdigest()
            params["reference"] = ref_key
        # A request may wait for the queue, then runs up to `max_rounds` rounds each bounded by timeout_s.
        timeout = m.timeout_s * (max_rounds + 1) * 3 + 30
        for attempt in range(2):
            if ref_data is not None and ref_key is not None and (attempt or ref_key not in agent.uploaded):
                self._check(*self._request("POST", "/v1/reference", ref_data), "the reference model")
                agent.uploaded.add(ref_key)
            status, payload = self._request("POST", "/v1/measure?" + urlencode(params), data, timeout, lease)
            if status != 409:  # 409: the agent restarted and lost the reference; upload it again
                break
        record = Measurement.from_dict(self._check(status, payload, f"to measure {path.name}"))
        baseline = self.baselines.get(ref_key, record) if ref_key else None
        return record.finalize(baseline=baseline, memory_budget_mb=self.profile.budgets.memory_mb,
                               backend=f"remote {self.url}")


def _retry_after(headers, default: float) -> float:
    """The agent's Retry-After in seconds (bounded to 0.1-10 s), else `default`."""
    try:
        return min(10.0, max(0.1, float(headers.get("Retry-After", default))))
    except (TypeError, ValueError):
        return default


def _json(raw: bytes) -> dict:
    try:
        out = json.loads(raw or b"{}")
    except ValueError:
        return {"error": raw[:200].decode("utf-8", "replace")}
    return out if isinstance(out, dict) else {"error": str(out)[:200]}


def _reason(exc: object) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    return " ".join(str(exc).split()) or type(exc).__name__

