"""Local backend: measures on this machine, every round in a fresh interpreter running runner.py."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from search.config.profile import DeviceProfile
from search.errors import TrialFailure
from search.measure import runner
from search.measure.record import Baselines, LatencyStats, Measurement
from search.utils.files import sha256_file


def host_memory_mb() -> float | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit_mb(budget_mb: float | None) -> float | None:
    """The hard stop for a measurement process. Far above the budget (it only catches runaways; the budget
    itself is judged on the measured peak) and never above 3/4 of this machine's memory."""
    host = host_memory_mb()
    cap = 0.75 * host if host else None
    if budget_mb is None:
        return cap
    limit = max(4 * budget_mb, budget_mb + 512)
    return min(limit, cap) if cap else limit


def existing(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise TrialFailure(f"{what} {p} not found")
    return p


_THREAD_LOCK = threading.Lock()


def _lock_path(kind: str) -> Path:
    return Path(tempfile.gettempdir()) / f"hwsearch-{kind}-{os.getuid()}.lock"


@contextmanager
def exclusive() -> Iterator[None]:
    """One local measurement at a time on this host, across threads and study worker processes: two rounds
    at once would time each other. The CPU-heavy work of study workers (`cpu_work`) pauses meanwhile: the
    measurement waits for the work in flight, and none starts until it is done. flock is released
    by the kernel if a worker dies."""
    with _THREAD_LOCK:
        try:
            import fcntl
        except ImportError:  # not POSIX: threads are still serialised
            yield
            return
        with open(_lock_path("measure"), "a") as f, open(_lock_path("train"), "a") as steps:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                fcntl.flock(steps, fcntl.LOCK_EX)  # the training steps in flight have finished
                fcntl.flock(steps, fcntl.LOCK_UN)  # later ones see the measure lock held and wait
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


_HELD = threading.local()  # this thread's depth inside cpu_work: nested stages take the lock once


@contextmanager
def cpu_work() -> Iterator[None]:
    """Hold CPU-heavy work of a study worker off while a local measurement runs on this host: every distillation
    step, and the prune, export, quantize (calibration and the runs_as probe), evaluate and teacher-logit stages
    (`Context.step_guard`). Order matters: the work is announced first (shared `train` lock), then the measure
    lock is checked, so a measurement that starts in between waits for this work. Re-entrant in a thread: a
    nested stage (an export inside a quantize) must not announce itself twice, or it would wait on a
    measurement that waits on its outer stage."""
    if getattr(_HELD, "depth", 0):
        _HELD.depth += 1
        try:
            yield
        finally:
            _HELD.depth -= 1
        return
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(_lock_path("train"), "a") as steps, open(_lock_path("measure"), "a") as gate:
        while True:
            fcntl.flock(steps, fcntl.LOCK_SH)
            try:
                fcntl.flock(gate, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # a measurement runs: step back, wait for its end, try again
                fcntl.flock(steps, fcntl.LOCK_UN)
                fcntl.flock(gate, fcntl.LOCK_SH)
                fcntl.flock(gate, fcntl.LOCK_UN)
                continue
            fcntl.flock(gate, fcntl.LOCK_UN)
            break
        _HELD.depth = 1
        try:
            yield
        finally:
            _HELD.depth = 0
            fcntl.flock(steps, fcntl.LOCK_UN)


class LocalBackend:
    """Measure on this machine under the profile's runtime settings (threads pinned to as many cores)."""

    name = "local"

    def __init__(self, profile: DeviceProfile, *, reference_baseline: LatencyStats | None = None,
                 sample: str | None = None) -> None:
        self.profile = profile
        self.baselines = Baselines(reference_baseline)
        self.sample = sample  # runner.encode_sample of one task input: the feed

    def measure(self, onnx_path: str | os.PathLike, reference_path: str | os.PathLike | None = None, *,
                rounds: int | None = None, max_rounds: int | None = None) -> Measurement:
        """`rounds` / `max_rounds` override the profile's (the cache's one-round re-check)."""
        path = existing(onnx_path, "model")
        ref = existing(reference_path, "reference model") if reference_path is not None else None
        m, rt = self.profile.measure, self.profile.runtime
        settings = {"warmup": m.warmup, "repeats": m.repeats, "batch": m.batch, "threads": rt.threads,
                    "graph_optimization": rt.graph_optimization, "rounds": rounds or m.rounds,
                    "max_rounds": max_rounds or m.max_rounds, "agree": m.agree,
                    "memory_batch": m.memory_batch, "timeout_s": m.timeout_s,
                    "memory_limit_mb": memory_limit_mb(self.profile.budgets.memory_mb), "sample": self.sample}
        try:
            with exclusive():
                raw = runner.measure(str(path), str(ref) if ref else None, **settings)
        except runner.RoundError as e:
            raise TrialFailure(f"measuring {path.name}: {e}", kind=e.kind) from None
        record = Measurement.from_dict(raw)
        baseline = self.baselines.get(sha256_file(ref), record) if ref else None
        return record.finalize(baseline=baseline, memory_budget_mb=self.profile.budgets.memory_mb,
                               backend="local")
