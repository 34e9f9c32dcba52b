"""One real study for the inspection tests: `search.run` on digits, 6 trials, a tiny distillation budget.

Built once per process (memoised, so the three test files that use it share one run) into a
temporary results folder removed at exit. The digits teacher comes from the repo's cache
(results/teachers), trained there first if missing.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STUDY = "inspect"
TRIALS = 6  # the 4 seeded baselines + 2 sampled plans
# max_drop 0.05 with 10 KD steps: the pruned baselines fall below the floor, so the study holds
# infeasible trials (greyed in plots, a warning on export) next to feasible ones.
SPACE_YAML = """name: inspect-tests
distillation:
  temperature: {low: 1.0, high: 8.0, log: true}
  alpha: {low: 0.0, high: 0.7}
  budget: {steps: 10, max_samples: 512}
  refine: {steps: 10}
  batch_size: 64
pruning:
  ratios: [0.0, 0.25, 0.5]
  granularity: block
quantization:
  bits: [32, 8]
  calibration: {samples: 64, method: minmax}
accuracy:
  max_drop: 0.05
"""

_TMP = Path(tempfile.mkdtemp(prefix="hwsearch-inspect-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


@dataclass(frozen=True)
class StudyFixture:
    name: str
    results: Path  # the results folder holding <name>/study.db

    @property
    def folder(self) -> Path:
        return self.results / self.name


@functools.cache
def real_study_once() -> StudyFixture:
    """The shared study; each test module wraps it in its own `real_study` fixture."""
    import torch

    import search
    from search.tasks import load_task

    load_task("digits", results_dir=REPO / "results", progress=False)  # cached teacher (trained if missing)
    results = _TMP / "results"
    (results / "teachers").mkdir(parents=True)
    for f in (REPO / "results" / "teachers").glob("digits-*"):
        shutil.copy2(f, results / "teachers" / f.name)
    space = _TMP / "space.yaml"
    space.write_text(SPACE_YAML)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops on a busy 2-core box: one thread is faster than two fighting
    try:
        out = search.run(task="digits", space=space, device=REPO / "device_profiles" / "local-1core.yaml",
                         trials=TRIALS, study=STUDY, results=results, seed=0, progress=False, train_on="cpu")
    finally:
        torch.set_num_threads(threads)
    assert out.study_name == STUDY
    return StudyFixture(name=STUDY, results=results)


def copy_study(src: StudyFixture, dest: Path) -> StudyFixture:
    """A private copy (database, artifacts, reference model, cached teacher) a test may tamper with."""
    shutil.copytree(src.folder, dest / src.name, ignore=shutil.ignore_patterns("tmp", "measure-cache"))
    shutil.copytree(src.results / "teachers", dest / "teachers")  # else verify would retrain the teacher
    return StudyFixture(name=src.name, results=dest)


def cli_args(study: StudyFixture) -> list[str]:
    return ["--study", study.name, "--results", str(study.results)]
