"""A study storage that rides out its database restarting.

Workers on many machines share a study through PostgreSQL, and databases restart (failover, maintenance, a
network blip). Every storage call goes through `RetryingStorage`: a transient error (connection refused or
reset, server closed the connection, a serialization failure or deadlock, SQLite's "database is locked") is
retried with backoff until `retry_s` seconds have passed since the outage began, with one line when the
outage starts and one when the storage is back. Past the bound the call raises `StorageUnavailable` (one
line, exit 1); the same command resumes the study. Heartbeats are not retried: a beat that cannot be written
is skipped (the next one follows in seconds), so a live trial is never failed over its own lost beats.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

from search.errors import RunStopped, disk_full, redact_url
from search.study.settings import STORAGE_RETRY_S

_BACKOFF_S = (0.5, 5.0)  # first wait, longest wait (doubling, with jitter)
# What a restarting or busy database says (psycopg2, SQLite), where the exception class does not tell.
_TRANSIENT_TEXT = ("connection refused", "server closed the connection", "terminating connection",
                   "could not connect", "connection reset", "connection timed out", "no route to host",
                   "the database system is starting up", "the database system is shutting down",
                   "database is locked", "could not serialize access", "deadlock detected", "ssl syscall error",
                   "connection already closed", "server has gone away", "lost connection")


class StorageUnavailable(RunStopped):
    """The storage stayed unreachable past the retry bound: the run stops (exit 1); rerunning resumes."""


def transient(exc: BaseException) -> bool:
    """Whether `exc` (or an exception in its cause chain) is an outage worth waiting for."""
    import sqlalchemy.exc as sa

    if disk_full(exc):  # a full disk does not heal by waiting; the run reports it and stops
        return False
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, sa.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, (sa.DisconnectionError, sa.InterfaceError)):
            return True
        if any(t in str(e).lower() for t in _TRANSIENT_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


def _first_line(exc: BaseException) -> str:
    e: BaseException = exc
    while e.__cause__ is not None:  # Optuna's StorageInternalError says little; its cause says what failed
        e = e.__cause__
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


class RetryingStorage(BaseStorage, BaseHeartbeat):
    """`inner` (an RDB storage, with Optuna's cache in front of it) with every call retried over an outage."""

    def __init__(self, inner: BaseStorage, url: str, retry_s: float = STORAGE_RETRY_S,
                 say: Callable[[str], None] | None = None) -> None:
        self._inner = inner
        self._url = redact_url(url)
        self._retry_s = float(retry_s)
        self._say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self._lock = threading.Lock()
        self._down_since: float | None = None  # the outage in progress, shared by this process's threads
        self.gave_up: StorageUnavailable | None = None  # set past the bound: Optuna may mask the raise (see runner)

    @property
    def inner(self) -> BaseStorage:
        return self._inner

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self._inner, name)
        wait = _BACKOFF_S[0]
        retried = False
        while True:
            try:
                out = method(*args, **kwargs)
            except UpdateFinishedTrialError:
                # A tell whose commit landed just before the connection dropped: retried, the trial is finished
                # already. Done if it holds what we asked for; otherwise the error is real.
                if retried and name == "set_trial_state_values" and self._holds(*args, **kwargs):
                    return True
                raise
            except Exception as e:
                if not transient(e):
                    raise
                since = self._outage(e)
                waited = time.monotonic() - since
                if waited >= self._retry_s:
                    self.gave_up = StorageUnavailable(
                        f"storage {self._url} unreachable for {waited:.0f} s (--storage-retry-s {self._retry_s:g}): "
                        f"{_first_line(e)}; rerun the same command to resume")
                    raise self.gave_up from None
                time.sleep(min(wait, self._retry_s - waited) * (0.5 + random.random() / 2))
                wait = min(wait * 2, _BACKOFF_S[1])
                retried = True
                continue
            if retried:
                self._back()
            return out

    def _holds(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        t = self._inner.get_trial(trial_id)
        return t.state == state and (values is None or list(t.values or []) == list(values))

    def _outage(self, e: BaseException) -> float:
        with self._lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
                self._say(f"storage {self._url} unreachable ({_first_line(e)}): retrying for up to "
                          f"{self._retry_s:g} s")
            return self._down_since

    def _back(self) -> None:
        with self._lock:
            if self._down_since is not None:
                self._say(f"storage {self._url} back after {time.monotonic() - self._down_since:.0f} s")
                self._down_since = None

    # Heartbeats: one attempt per beat (see the module docstring).
    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self._inner.record_heartbeat(trial_id)
        except Exception as e:
            if not transient(e):
                raise

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self._call("_get_stale_trial_ids", study_id)

    def get_heartbeat_interval(self) -> int | None:
        return self._inner.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self):
        return self._inner.get_heartbeat_stale_trial_callback()

    def remove_session(self) -> None:
        self._inner.remove_session()


def _retried(name: str) -> Callable[..., Any]:
    def call(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, *args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = getattr(BaseStorage, name).__doc__
    return call


# Every storage call Optuna makes (BaseStorage's whole interface), delegated through `_call`.
for _name in ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
              "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
              "get_study_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
              "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id", "get_trial_param",
              "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
              "set_trial_system_attr", "get_trial", "get_all_trials", "get_n_trials", "get_best_trial",
              "get_trial_params", "get_trial_user_attrs", "get_trial_system_attrs", "check_trial_is_updatable"):
    setattr(RetryingStorage, _name, _retried(_name))
RetryingStorage.__abstractmethods__ = frozenset()  # defined just above, after the class body
