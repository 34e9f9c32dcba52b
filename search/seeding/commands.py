"""`hwsearch sensitivity`: parse, call search.seeding.standalone.sensitivity, print the table (or JSON)."""

from __future__ import annotations

import argparse
import json


def _targets(value: str) -> tuple[float, ...]:
    """argparse type: comma-separated shares of the teacher's latency, each > 0 (0.7,0.5,0.4,0.33)."""
    try:
        out = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {value!r}") from None
    if not out or not all(0 < t < float("inf") for t in out):
        raise argparse.ArgumentTypeError(f"every target must be a share of the teacher's latency > 0, got {value!r}")
    return out


def _batches(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sensitivity", help="accuracy cost and latency gain of each unit's pruning ratio and "
                       "bit-width, one change to the teacher at a time")
    p.add_argument("--task", required=True, help="digits, fashion-mnist, path/to/file.py:function or pkg.mod:function")
    p.add_argument("--space", required=True, metavar="FILE", help="search-space YAML (spaces/default.yaml)")
    p.add_argument("--device", required=True, metavar="FILE", help="device-profile YAML")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--results", default="results", metavar="DIR")
    p.add_argument("--study", help="share results/<study>/ (its structure cache and drift anchor; an existing "
                   "study must match task, space and profile); default a scratch folder results/sensitivity/")
    p.add_argument("--bn-batches", type=_batches, default=None, metavar="N",
                   help="re-estimate BatchNorm statistics of each pruned variant on N training batches of 128 "
                        "(default 4, as a study's sensitivity stage; 0: none)")
    p.add_argument("--targets", type=_targets, metavar="LIST",
                   help="also plan for these shares of the teacher's latency, e.g. 0.7,0.5,0.4,0.33")
    p.add_argument("--refresh", action="store_true", help="compute again even when the cached table matches")
    p.add_argument("--seed", type=_batches, default=0, help="calibration and BatchNorm sample seed")
    p.add_argument("--train-on", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--data-dir", metavar="DIR", help="folder of Fashion-MNIST IDX files (or $HWSEARCH_DATA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sensitivity)


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from search.config import load_profile
    from search.seeding.allocate import allocate_many
    from search.seeding.standalone import sensitivity

    s = sensitivity(args.task, args.space, args.device, study=args.study, results=args.results, seed=args.seed,
                    bn_batches=args.bn_batches, refresh=args.refresh, data_dir=args.data_dir, train_on=args.train_on,
                    progress=not args.no_progress)
    budget = load_profile(args.device).budgets.model_mb  # the seeded plans honour the profile's size budget
    plans = allocate_many(s, args.targets, max_model_mb=budget) if args.targets else []
    if args.format == "json":
        out = s.to_dict()
        if plans:
            out["plans"] = [{"params": a.params, "predicted": a.predicted()} for a in plans]
        print(json.dumps(out, indent=2))
        return 0
    print(format_table(s))
    for a in plans:
        print(format_plan(a))
    return 0


def _runs(kernels: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for k in kernels.values():
        counts[k] = counts.get(k, 0) + 1
    return ", ".join(k if n == 1 else f"{k} x{n}" for k, n in counts.items())


def format_table(s) -> str:
    """The rows, most accuracy lost first (the units to keep at the top; the cheap speed-ups at the bottom)."""
    from search.metrics import show

    how = "cached, nothing measured now" if s.cached else f"{s.measurements} new measurements"
    percent = bool(s.metric.get("percent", True))
    # accuracy_drop is 100 x the difference: points for a share, the metric's own unit shown otherwise
    drop = (lambda d: f"{d:>9.2f}") if percent else (lambda d: f"{d / 100:>9.4g}")
    label = s.metric["name"] if len(s.metric["name"]) <= 7 else "metric"
    lines = [f"sensitivity of the {s.task} teacher on '{s.profile}' ({s.statistic}): val {s.metric['name']} "
             f"{show(s.teacher_accuracy, percent)}, latency {s.teacher_latency_ms:.4g} ms, floor {s.floor_ms:.4g} ms; "
             f"{len(s.rows)} single changes in {s.seconds:.0f} s ({how})" +
             (f", BatchNorm re-estimated on {s.bn_batches} batches" if s.bn_batches else ""),
             f"{'parameter':<28} {'value':>6} {label:>7} {'drop pts' if percent else 'drop':>9} "
             f"{'latency ms':>11} {'saved ms':>10} {'saved':>7} {'file MB':>8}  runs / note"]
    rows = sorted(s.rows, key=lambda r: (-r.accuracy_drop, -r.latency_saved_ms, r.param, r.value))
    for r in rows:
        extra = _runs(r.runs) if r.runs else ""
        if r.note:
            extra = f"{extra}; {r.note}" if extra else r.note
        lines.append(f"{r.param:<28} {r.value:>6g} {show(r.accuracy, percent):>7} {drop(r.accuracy_drop)} "
                     f"{r.latency_ms:>11.4g} {r.latency_saved_ms:>10.4g} {r.latency_saved_frac:>7.1%} "
                     f"{r.model_mb:>8.3f}  {extra[:120]}")
    return "\n".join(lines)


def format_plan(a) -> str:
    if not a.feasible:
        return f"plan {a.target:g}x: infeasible: {a.reason}"
    changes = ", ".join(f"{k}={v:g}" for k, v in a.changes.items()) or "the teacher"
    return (f"plan {a.target:g}x ({a.target_ms:.4g} ms): predicted {a.predicted_latency_ms:.4g} ms, "
            f"-{a.predicted_drop:.2f} pts: {changes}")
