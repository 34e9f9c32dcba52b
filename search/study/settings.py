"""What one `hwsearch run` / `search.run` is asked to do: a frozen, validated value.

The CLI flags and `search.run`'s keywords are these fields, under the same names; a worker process
started for `--workers W` gets the same settings back through `worker_command`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from search.errors import UserError

STORAGE_RETRY_S = 120.0  # default bound of one storage outage (`--storage-retry-s`, search.study.retry)
SEED_PLANS_FROM = 20  # explore trials from which a study seeds allocated plans unless told (`seed_plans`)
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Settings a spawned worker inherits as flags (progress, worker_id, workers and write_outputs are its own).
_WORKER_FLAGS = ("task", "space", "device", "trials", "study", "storage", "artifacts", "sampler", "seed", "timeout",
                 "results", "train_on", "data_dir", "max_failures", "storage_retry_s")


@dataclass(frozen=True)
class RunSettings:
    """Run (or resume) study `study` until it has `trials` explore trials, then refine `refine` front points."""

    task: str  # built-in name, path/to/file.py:function or package.module:function
    space: str | Path  # search-space YAML
    device: str | Path  # device-profile YAML
    trials: int
    study: str  # names the folder results/<study>/
    storage: str | None = None  # default: SQLite at results/<study>/study.db
    artifacts: str | Path | None = None  # default: results/<study>/artifacts
    workers: int = 1  # processes on this machine
    sampler: str = "tpe"
    seed: int = 0
    timeout: float | None = None  # seconds after which no trial is started
    results: str | Path = "results"
    refine: int = 0
    train_on: str = "auto"
    data_dir: str | Path | None = None
    progress: bool = True
    worker_id: int = 0  # 0: the process that seeds baselines, refines and writes the outputs
    write_outputs: bool = True  # test scores of the front, front.csv and report.html at the end
    max_failures: int = 10  # stop after this many failed trials in a row (0: never)
    storage_retry_s: float = STORAGE_RETRY_S  # ride out a database outage this long
    # Sensitivity first (cached under results/sensitivity/), then allocated plans. None: when the study has at
    # least SEED_PLANS_FROM trials; below that the stage (about a minute on Fashion-MNIST) costs more than it buys.
    seed_plans: bool | None = None
    # Every uniform plan of the space (each ratio, fp32 and int8) as baselines, so refinement can retrain the one
    # beside each searched point. None: from SEED_PLANS_FROM trials (a short study keeps its trials for the search).
    uniform_curve: bool | None = None

    def __post_init__(self) -> None:
        if self.trials <= 0:
            raise UserError(f"--trials must be a positive number, got {self.trials}")
        if self.workers <= 0:
            raise UserError(f"--workers must be a positive number, got {self.workers}")
        if self.refine < 0:
            raise UserError(f"--refine must be 0 or more, got {self.refine}")
        if not self.storage_retry_s >= 0:
            raise UserError(f"--storage-retry-s must be 0 or more seconds, got {self.storage_retry_s}")
        if self.max_failures < 0:
            raise UserError(f"--max-failures must be 0 or more, got {self.max_failures}")
        if not _STUDY_NAME.fullmatch(self.study):
            raise UserError(f"--study {self.study!r}: use letters, digits, '.', '_' or '-', starting with a letter "
                            "or digit (it names the folder results/<study>/)")

    @property
    def seeds_plans(self) -> bool:
        return self.trials >= SEED_PLANS_FROM if self.seed_plans is None else self.seed_plans

    @property
    def uniform_plans(self) -> bool:
        return self.trials >= SEED_PLANS_FROM if self.uniform_curve is None else self.uniform_curve

    @property
    def study_dir(self) -> Path:
        return Path(self.results) / self.study

    @property
    def storage_url(self) -> str:
        from search.study.storage import default_url

        return self.storage or default_url(self.study_dir)

    @property
    def artifacts_dir(self) -> Path:
        return Path(self.artifacts) if self.artifacts else self.study_dir / "artifacts"

    @property
    def sampler_seed(self) -> int | None:
        """Each worker samples with its own seed, so two workers do not propose the same plans."""
        return None if self.seed is None else self.seed + self.worker_id

    def worker_command(self, worker_id: int) -> list[str]:
        """The command line of worker `worker_id`: this run's settings, the storage and artifacts resolved."""
        import sys

        s = replace(self, storage=self.storage_url, artifacts=self.artifacts_dir)
        cmd = [sys.executable, "-m", "search", "run", "--worker-id", str(worker_id), "--no-progress", "--workers", "1"]
        for name in _WORKER_FLAGS:
            value = getattr(s, name)
            if value is not None:
                cmd += [f"--{name.replace('_', '-')}", str(value)]
        return cmd
