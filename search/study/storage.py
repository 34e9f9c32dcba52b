"""Where a study lives: SQLite by default, PostgreSQL (or any RDB URL) for many workers, or a journal file."""

from __future__ import annotations

import itertools
import os
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from search.errors import UserError, redact_url
from search.study.retry import STORAGE_RETRY_S, RetryingStorage

HEARTBEAT_S = 10  # a worker proves it is alive this often...
# ...and is declared dead (trial FAIL, then retried) after this long without a beat.
GRACE_S = int(os.environ.get("HWSEARCH_GRACE_S", "40"))
MAX_RETRY = 2
SCHEMA_RETRIES = 5  # see open_storage
SCHEMA_RACE = ("already exists", "UNIQUE constraint failed", "duplicate key value")  # SQLite's and PostgreSQL's


def default_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


def open_storage(url: str, retry_s: float = STORAGE_RETRY_S) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`. RDB storages get heartbeats, so a dead worker's trial is retried, and ride out
    an outage of up to `retry_s` seconds (search.study.retry); opening one that cannot be reached fails at once."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = url.removeprefix("journal:").removeprefix("//")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(path))
        except (OSError, ValueError) as e:  # an unwritable folder; a file that is not an Optuna journal
            reason = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())[:200]
            raise UserError(f"--storage {url}: cannot open the journal file ({reason}; expected "
                            "journal:PATH to a new or existing Optuna journal)") from None
    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        raise UserError(f"--storage {url!r}: expected sqlite:///path, postgresql://user@host/db or journal:PATH")
    if url.startswith(("postgresql://", "postgres://")):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; we ship psycopg2.
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in itertools.count():
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5, and we rely on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                rdb = optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=min(HEARTBEAT_S, max(1, GRACE_S // 3)),
                    grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                )
                # Optuna's own cache in front of the database, as `optuna.create_study(storage=url)` builds it.
                return RetryingStorage(optuna.storages._CachedStorage(rdb), url, retry_s)
        except Exception as e:  # unreachable server, bad credentials, missing driver
            reason = str(e).splitlines()[0]
            # Two processes opening a NEW database at once (workers starting together, or a reader) both create
            # Optuna's tables and its version row; the loser fails with one of SCHEMA_RACE, the schema is there now.
            if any(m in reason for m in SCHEMA_RACE) and attempt < SCHEMA_RETRIES:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise UserError(f"--storage {redact_url(url)}: cannot open the study storage: {reason}") from None


def fail_stale(study: optuna.Study, storage: optuna.storages.BaseStorage, seen: set[int]) -> None:
    """Fail, and so re-queue, the trials whose worker died. Optuna judges a RUNNING trial only by its heartbeat
    row, and a worker that dies between creating a trial and its first beat (a database outage can do that)
    leaves none: that trial would be waited for forever. So every RUNNING trial seen here gets one beat on its
    behalf: a live worker's own beats overwrite it; a dead worker's trial goes stale one grace period later."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t._trial_id not in seen:
            seen.add(t._trial_id)
            storage.record_heartbeat(t._trial_id)
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5, and we rely on them
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def make_sampler(name: str, seed: int | None, n_trials: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=max(4, min(10, n_trials // 3)))
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(6, min(50, n_trials // 4)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=max(4, min(10, n_trials // 3)))
    raise UserError(f"--sampler {name!r}: expected one of tpe, nsga2, random, gp")
