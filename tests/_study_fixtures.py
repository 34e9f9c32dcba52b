"""Small real studies on the digits task: a tiny space, a quick local profile, the teacher cache copied in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import RESULTS, run_cli


def space_text(name: str = "tiny", budget: str = "{steps: 40}", refine: str = "{steps: 160}",
               max_drop: float = 0.3) -> str:
    """A small real search space: short distillation, three ratios, fp32 or int8."""
    return f"""name: {name}
distillation:
  temperature: {{low: 1.0, high: 8.0, log: true}}
  alpha: {{low: 0.0, high: 0.7}}
  budget: {budget}
  refine: {refine}
  lr: 0.003
  batch_size: 64
pruning:
  ratios: [0.0, 0.25, 0.5]
  granularity: block
quantization:
  bits: [32, 8]
  calibration: {{samples: 64}}
accuracy:
  max_drop: {max_drop}
"""


TINY_SPACE = space_text()


# One or two rounds: the agreement rule has its own tests (test_measure_agreement.py); studies here test the rest.
QUICK_MEASURE = "backend: local, warmup: 5, repeats: 30, batch: 1, timeout_s: 60, rounds: 1, max_rounds: 2"
# For studies whose front is exported with `--verify` (which re-measures): rounds until they agree (2-5, 3%), each
# the median of 200 runs. One round beside the other test worker landed 21-28% slow (a coverage-matrix ResNet, the
# language model), and with 30 runs per round the two-input encoder's verify re-measured +27% (0.398 vs 0.315 ms),
# outside verify's 15% bound.
AGREEING_MEASURE = QUICK_MEASURE.replace("warmup: 5, repeats: 30", "warmup: 20, repeats: 200").replace(
    "rounds: 1, max_rounds: 2", "rounds: 2, max_rounds: 5")


# Per op type, what the local transformer studies run: MatMul's 8 bits dynamic (and int4 where a test offers it).
TRANSFORMER_PRECISIONS = "{Conv: [fp32, int8], Gemm: [fp32, int8], MatMul: [fp32, int8-dynamic]}"
TRANSFORMER_INT4_PRECISIONS = "{Conv: [fp32, int8], Gemm: [fp32, int8], MatMul: [fp32, int8-dynamic, int4]}"


def profile_text(latency_ms: float = 5.0, memory_mb: float = 200.0, model_mb: float = 5.0,
                 measure: str = QUICK_MEASURE, precisions: str = "[fp32, int8]") -> str:
    return f"""name: quick-1core
description: 1 core, few repeats (tests)
runtime: {{threads: 1}}
precisions: {precisions}
channel_multiple: 8
budgets: {{latency_ms: {latency_ms}, memory_mb: {memory_mb}, model_mb: {model_mb}}}
measure: {{{measure}}}
"""


def make_results(folder: Path, digits_task) -> Path:
    """A results folder holding the cached digits teacher (so no test retrains it)."""
    teachers = folder / "teachers"
    teachers.mkdir(parents=True, exist_ok=True)
    key = digits_task.teacher_info["key"]
    for p in (RESULTS / "teachers").glob(f"digits-{key}.*"):
        shutil.copy(p, teachers / p.name)
    return folder


def write_configs(folder: Path, space_text: str = TINY_SPACE, **profile) -> tuple[Path, Path]:
    space, prof = folder / "space.yaml", folder / "profile.yaml"
    space.write_text(space_text)
    prof.write_text(profile_text(**profile))
    return space, prof


def cli_study(folder: Path, task: str, study: str, space: str, profile: str, trials: int, *extra: str):
    """`hwsearch run` of a short seeded study (CPU training, no progress) with `space` and `profile` written into
    `folder`, results under folder/results: the finished process."""
    (folder / "space.yaml").write_text(space)
    (folder / "profile.yaml").write_text(profile)
    return run_cli("run", "--task", task, "--space", str(folder / "space.yaml"), "--device",
                   str(folder / "profile.yaml"), "--trials", str(trials), "--study", study, "--results",
                   str(folder / "results"), "--seed", "0", "--train-on", "cpu", "--no-progress", *extra, timeout=900)


def export_fastest(study: str, results: Path, out: Path) -> dict:
    """`hwsearch front` (every point with its held-out score), then `hwsearch export --verify` of the fastest
    front point into `out`: its manifest."""
    points = json.loads(run_cli("front", "--study", study, "--results", str(results), "--format", "json").stdout)
    assert points and all(p.get("test_accuracy") is not None for p in points), points[:1]
    fastest = min(points, key=lambda p: p["latency_ms"])["trial"]
    e = run_cli("export", "--study", study, "--results", str(results), "--trial", str(fastest), "--out", str(out),
                "--verify")
    assert e.returncode == 0 and "verified" in e.stdout, e.stdout[-2000:] + e.stderr[-2000:]
    return json.loads((out / "manifest.json").read_text())
