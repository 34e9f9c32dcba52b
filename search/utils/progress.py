"""Progress for long work, the same everywhere: live rich bars on a terminal, plain lines in a log.

Piped into a file, `tee`, `nohup` or a CI log, a rich bar prints nothing until it ends, so a long step
looks hung. There, `PlainLog` writes whole lines instead: at a steady pace while work advances, and a
heartbeat whenever nothing was written for `max_silence_s()` seconds (50, or `HWSEARCH_PROGRESS_S`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

# A heartbeat after this much silence, so no log stays silent for a minute while work runs (CI logs time out
# on silence): 50, not 60, because the watcher's polling and a busy machine add a second or two (a fresh
# `make demo` on a loaded box measured a 61 s gap with 60).
MAX_SILENCE_S = 50.0
PLAIN_EVERY_S = 30.0  # without an `every` hint, one line this often while work advances
MIN_GAP_S = 5.0  # with an `every` hint (one line per epoch, say), never more often than this


def max_silence_s() -> float:
    """The longest gap between plain lines: HWSEARCH_PROGRESS_S when set to a positive number, else 50."""
    try:
        value = float(os.environ.get("HWSEARCH_PROGRESS_S", ""))
    except ValueError:
        return MAX_SILENCE_S
    return value if value > 0 else MAX_SILENCE_S


def live_terminal(stream: IO[str] | None = None) -> bool:
    """Whether `stream` (default stderr) shows a live display: a terminal or a notebook, as rich decides."""
    from rich.console import Console

    console = Console(file=stream or sys.stderr)
    return console.is_terminal or console.is_jupyter


def fmt_duration(seconds: float) -> str:
    """42s, 3m07s, 1h02m: short, fixed-width-ish, readable in a log."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class PlainLog:
    """Whole lines on a stream, flushed at once, plus a heartbeat thread: `status()` is written whenever
    nothing else was for `silence_s` seconds, so a log never looks hung while work runs."""

    def __init__(self, status: Callable[[], str | None], stream: IO[str] | None = None,
                 silence_s: float | None = None) -> None:
        self._status = status
        self._stream = stream or sys.stderr
        self.silence_s = silence_s or max_silence_s()
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PlainLog:
        self._thread = threading.Thread(target=self._beat, name="progress-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def since_last(self) -> float:
        return time.monotonic() - self._last

    def emit(self, line: str) -> None:
        with self._lock:
            try:
                print(line, file=self._stream, flush=True)
            except (OSError, ValueError):  # a closed pipe or file must not stop the work it reports on
                pass
            self._last = time.monotonic()

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.silence_s / 4)):
            if self.since_last >= self.silence_s:
                try:
                    line = self._status()
                except Exception:  # a status read racing the main thread: skip this beat, not the run
                    line = None
                if line:
                    self.emit(line)
                else:
                    self._last = time.monotonic()


class _Bar:
    """What `progress_bar` yields: a rich task on a terminal, plain lines otherwise, or nothing."""

    def __init__(self, progress=None, task_id=None) -> None:  # noqa: ANN001 - rich Progress and TaskID
        self._p, self._id = progress, task_id

    def advance(self, n: float = 1, status: str | None = None) -> None:
        if self._p is not None:
            kw = {"status": status} if status is not None else {}
            self._p.update(self._id, advance=n, **kw)

    def update(self, *, total: float | None = None, status: str | None = None, description: str | None = None,
               completed: float | None = None) -> None:
        if self._p is None:
            return
        kw = {k: v for k, v in {"total": total, "status": status, "description": description,
                                 "completed": completed}.items() if v is not None}
        self._p.update(self._id, **kw)


class _LineBar(_Bar):
    """The plain-line bar: `training digits teacher: 460/920 steps (50%) loss 0.41 elapsed 7s eta 7s`."""

    def __init__(self, description: str, total: float | None, unit: str, every: float | None,
                 stream: IO[str] | None = None) -> None:
        super().__init__()
        self.description, self.total, self.unit, self.every = description, total, unit, every
        self.completed, self.status = 0.0, ""
        self._t0 = time.monotonic()
        self.log = PlainLog(self.line, stream)
        self._min_gap = min(MIN_GAP_S, self.log.silence_s)
        self._plain_every = min(PLAIN_EVERY_S, self.log.silence_s)

    def line(self, done: bool = False) -> str:
        elapsed = time.monotonic() - self._t0
        count = f"{self.completed:,.0f}"
        if self.total:
            count += f"/{self.total:,.0f} {self.unit} ({100 * self.completed / self.total:.0f}%)"
        else:
            count += f" {self.unit}"
        parts = [f"{self.description}: {count}", self.status]
        if done:
            parts.append(f"in {fmt_duration(elapsed)}")
        else:
            parts.append(f"elapsed {fmt_duration(elapsed)}")
            if self.total and self.completed:
                parts.append(f"eta {fmt_duration(elapsed * (self.total - self.completed) / self.completed)}")
        return " ".join(p for p in parts if p)

    def advance(self, n: float = 1, status: str | None = None) -> None:
        before = self.completed
        self.completed += n
        if status is not None:
            self.status = status
        self._maybe_emit(before)

    def update(self, *, total: float | None = None, status: str | None = None, description: str | None = None,
               completed: float | None = None) -> None:
        before = self.completed
        self.total = self.total if total is None else total
        self.status = self.status if status is None else status
        self.description = self.description if description is None else description
        self.completed = self.completed if completed is None else completed
        self._maybe_emit(before)

    def _maybe_emit(self, before: float) -> None:
        if self.total and self.completed >= self.total:
            return  # the closing line says it
        if self.every:  # a line per unit of `every` (an epoch), but never a flood of them
            due = self.completed // self.every > before // self.every and self.log.since_last >= self._min_gap
        else:
            due = self.log.since_last >= self._plain_every
        if due:
            self.log.emit(self.line())


@contextmanager
def progress_bar(description: str, total: float | None, enabled: bool = True, *, unit: str = "steps",
                 every: float | None = None) -> Iterator[_Bar]:
    """A progress bar with ETA on stderr; a no-op bar when disabled.

    On a terminal it is a live rich bar. Elsewhere (a file, a pipe, CI) it writes plain lines: one when it
    starts, one each `every` units (e.g. the steps of an epoch; at most one per 5 s) or else one per 30 s
    while work advances, a heartbeat after a minute of silence, and a closing line. `unit` names what
    `total` counts.
    """
    if not enabled:
        yield _Bar()
        return
    if live_terminal():
        with make_progress() as p:
            yield _Bar(p, p.add_task(description, total=total, status=""))
        return
    bar = _LineBar(description, total, unit, every)
    bar.log.emit(bar.line())
    with bar.log:
        try:
            yield bar
        except BaseException:
            bar.log.emit(bar.line() + " (stopped)")
            raise
    bar.log.emit(bar.line(done=True))


def make_progress(label_column: str = "{task.description}"):
    """A rich Progress on stderr: label, bar, done/total, elapsed, ETA and a free `status` field."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn(label_column), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                    console=Console(file=sys.stderr))
