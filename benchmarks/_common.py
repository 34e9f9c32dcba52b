"""Helpers shared by the bench_*.py scripts (not a benchmark itself)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class BenchError(Exception):
    """A problem the user can fix (missing data or study, a bad flag): printed as one line, exit 2."""


def shown(path: Path | str) -> str:
    """A path as the user would type it from the repository root."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:400]


def load_task(name: str, results: Path, data_dir: Path | None = None):
    """A built-in (or file:function) task with its cached teacher; a missing data set is a BenchError."""
    from search.tasks import load_task as _load

    teachers = results / "teachers"
    if not list(teachers.glob(f"{name}-*.pt")):
        print(f"note: no cached {name} teacher under {shown(teachers)}: training it first", flush=True)
    try:
        return _load(name, data_dir=data_dir, results_dir=results, progress=False)
    except Exception as e:  # UserError for missing data; anything else is just as fatal here
        raise BenchError(f"cannot load the {name} task: {one_line(e)}") from None


def study_front(name: str, results: Path, task: str):
    """A finished study of `task` and its feasible front (a DataFrame, one row per trial), or a BenchError."""
    view = open_study(name, results)
    if view.task_spec != task:
        raise BenchError(f"--study {name}: its task is {view.task_spec!r}, this benchmark runs {task!r}")
    front = view.front
    if front.empty:
        raise BenchError(f"--study {name}: no feasible front trial (is the study finished?)")
    return view, front


def open_study(name: str, results: Path):
    """search.inspect.load_study with its UserError (no such study / folder) turned into a BenchError."""
    from search.errors import UserError
    from search.inspect import load_study

    try:
        return load_study(name, results=results)
    except UserError as e:
        raise BenchError(str(e)) from None


def share_teachers(scratch: Path, results: Path) -> None:
    """Let studies under `scratch` reuse the cached teachers and teacher logits of `results`
    (a study looks for them in <its results folder>/teachers): a symlink, so nothing is retrained."""
    scratch.mkdir(parents=True, exist_ok=True)
    link, target = scratch / "teachers", (results / "teachers").resolve()
    if link.resolve() == target or link.exists():
        return
    target.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)


def time_model(row: dict, model: Path, reference: Path, rounds: int, profile) -> None:
    """hwsearch's own timer on `model`, the fp32 teacher interleaved in every round (same-round ratio)."""
    from search.measure.runner import RoundError, measure

    m = profile.measure
    try:
        rec = measure(str(model), reference=str(reference), rounds=rounds, threads=profile.runtime.threads,
                      warmup=m.warmup, repeats=m.repeats, batch=m.batch,
                      graph_optimization=profile.runtime.graph_optimization, timeout_s=m.timeout_s)
    except RoundError as e:
        row["error"] = f"{e.kind}: {e}"
        return
    row.update(p50_ms=round(rec["latency"]["p50_ms"], 5), p90_ms=round(rec["latency"]["p90_ms"], 5),
               teacher_p50_ms=round(rec["reference"]["p50_ms"], 5),
               speedup=round(1.0 / rec["ratio_p50"], 3), memory_total_mb=_round(rec["memory_total_mb"], 2),
               memory_model_mb=_round(rec["memory_model_mb"], 2))


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def mode_args(parser: argparse.ArgumentParser) -> None:
    """--quick (the default) | --full, as args.mode (None when neither is given)."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="the default")
    mode.add_argument("--full", dest="mode", action="store_const", const="full")


def header(benchmark: str, mode: str | None) -> dict:
    from importlib.metadata import version

    from search.measure.runner import describe_device

    return {"benchmark": benchmark, "mode": mode,
            "command": " ".join(["python", f"benchmarks/{benchmark}", *sys.argv[1:]]),
            "machine": describe_device(), "load_avg_before": os.getloadavg(),
            "versions": {p: version(p) for p in ("hwsearch", "torch", "onnxruntime", "optuna")},
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def write_json(path: Path, result: dict) -> None:
    result["load_avg_after"] = os.getloadavg()
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {shown(path)}")


def table(rows: list[list[str]], head: list[str]) -> None:
    """A markdown table, columns padded (the first left-aligned, the rest right-aligned)."""
    cells = [head, *rows]
    width = [max(3, *(len(r[i]) for r in cells)) for i in range(len(head))]

    def line(r: list[str]) -> str:
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, width, strict=True)))
        return "| " + " | ".join(padded) + " |"

    print(line(head))
    print("| " + " | ".join("-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(width)) + " |")
    for r in rows:
        print(line(r))


def cli(main: Callable[[], int]) -> None:
    """Run `main`; a BenchError or the project's UserError is one line on stderr and exit status 2."""
    from search.errors import UserError

    try:
        sys.exit(main())
    except (BenchError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
