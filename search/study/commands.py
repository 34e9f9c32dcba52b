"""`hwsearch run`: parse, call search.run (search.pipeline), print the front and where the results are."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.study.settings import STORAGE_RETRY_S


def _int_at_least(low: int, high: int | None = None):
    """argparse type: a whole number >= low (and <= high)."""

    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {v!r}") from None
        if n < low or (high is not None and n > high):
            allowed = f"from {low} to {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {n}")
        return n

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)
_seed = _int_at_least(0, 2**32 - 1 - 10_000)  # numpy seeds are 32-bit; workers add their id


def _seconds(v: str, zero_ok: bool = False) -> float:
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {v!r}") from None
    if not (x >= 0 if zero_ok else x > 0) or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number {'>=' if zero_ok else '>'} 0, got {v}")
    return x


def _positive_float(v: str) -> float:
    return _seconds(v)


def _non_negative_float(v: str) -> float:
    return _seconds(v, zero_ok=True)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run (or resume) a search study")
    p.add_argument("--task", required=True, help="digits, fashion-mnist, path/to/file.py:function or pkg.mod:function")
    p.add_argument("--space", required=True, metavar="FILE", help="search-space YAML (spaces/default.yaml)")
    p.add_argument("--device", required=True, metavar="FILE", help="device-profile YAML")
    p.add_argument("--trials", required=True, type=_positive_int, help="explore trials (baselines included)")
    p.add_argument("--study", required=True, help="study name (results/<study>/)")
    p.add_argument("--storage", help="sqlite:///..., postgresql://... or journal:PATH "
                   "(default results/<study>/study.db)")
    p.add_argument("--storage-retry-s", type=_non_negative_float, default=STORAGE_RETRY_S, metavar="SEC",
                   help="ride out a database outage (restart, failover) this long before stopping (0: do not wait)")
    p.add_argument("--artifacts", metavar="DIR", help="shared artifact folder (default results/<study>/artifacts)")
    p.add_argument("--workers", type=_positive_int, default=1, help="worker processes on this machine")
    p.add_argument("--sampler", choices=("tpe", "nsga2", "random", "gp"), default="tpe")
    p.add_argument("--seed", type=_seed, default=0, help="same seed, same plans (0 to 4294957295)")
    p.add_argument("--timeout", type=_positive_float, metavar="SEC", help="stop starting trials after this long")
    p.add_argument("--results", default="results", metavar="DIR")
    p.add_argument("--refine", type=_non_negative_int, default=0, metavar="K",
                   help="retrain K front points with the space's longer refine budget")
    p.add_argument("--train-on", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--data-dir", metavar="DIR", help="folder of Fashion-MNIST IDX files (or $HWSEARCH_DATA)")
    p.add_argument("--max-failures", type=_non_negative_int, default=10, metavar="N",
                   help="stop after N failed trials in a row, keeping every finished one (0: never stop)")
    p.add_argument("--seed-plans", action=argparse.BooleanOptionalAction, default=None,
                   help="measure per-unit sensitivity first (cached), then enqueue plans allocated from it at "
                        "latency targets from the teacher's down to the measured floor (each measured on the "
                        "device and solved again until it meets its target), within the profile's size budget, "
                        "after the baselines (default: on from 20 trials)")
    p.add_argument("--uniform-curve", action=argparse.BooleanOptionalAction, default=None,
                   help="queue every uniform plan of the space (each pruning ratio, fp32 and int8) as baselines, so "
                        "--refine retrains the uniform plan nearest each searched point it refines (default: on "
                        "from 20 trials)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--worker-id", type=_non_negative_int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    # The CLI layer: `hwsearch run` is the whole pipeline (search.pipeline), and it ends with the front table.
    from search.inspect.commands import print_front
    from search.pipeline import run

    try:
        result = run(args.task, args.space, args.device, args.trials, args.study, storage=args.storage,
                     artifacts=args.artifacts, workers=args.workers, sampler=args.sampler, seed=args.seed,
                     timeout=args.timeout, results=args.results, refine=args.refine, train_on=args.train_on,
                     data_dir=args.data_dir, progress=not args.no_progress, worker_id=args.worker_id,
                     max_failures=args.max_failures, seed_plans=args.seed_plans,
                     uniform_curve=args.uniform_curve, storage_retry_s=args.storage_retry_s)
    except KeyboardInterrupt:
        print(f"stopped: study '{args.study}' keeps every finished trial; rerun the same command to resume",
              file=sys.stderr)
        return 130
    if args.worker_id:
        return 0
    print(f"study '{result.study_name}': {result.n_complete} complete, {result.n_failed} failed, "
          f"{len(result.front_trials)} feasible front points")
    print_front(result)
    print(f"results: {result.results_dir}/ (storage {result.storage_url})")
    report = Path(result.results_dir) / "report.html"
    if report.is_file():
        print(f"report: {report} (open it in a browser; `hwsearch export --study {result.study_name} --trial N "
              "--out DIR --verify` deploys a point)")
    return 0
