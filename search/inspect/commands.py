"""Inspection subcommands: `front`, `plot`, `export`. They parse, call search.inspect and print."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FORMATS = ("table", "csv", "json")


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, metavar="NAME", help="study name (results/NAME/study.db)")
    p.add_argument("--results", default="results", metavar="DIR",
                   help="results folder holding NAME/ (study.db, reference.onnx, report.html; default: results)")
    p.add_argument("--storage", metavar="URL",
                   help="the study's storage instead of results/NAME/study.db (postgresql://..., journal:PATH)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("front", help="print the Pareto front of a study")
    _study_args(p)
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    p.add_argument("--all", action="store_true", help="every trial, with state and failure reason")
    p.add_argument("--score-test", action="store_true",
                   help="first score the front points that lack a held-out test score (a run stopped early)")
    p.set_defaults(func=cmd_front)

    p = sub.add_parser("plot", help="write the study's self-contained HTML report")
    _study_args(p)
    p.add_argument("--out", metavar="FILE", help="HTML file (default: results/NAME/report.html)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("export", help="write one trial's model.onnx and manifest.json")
    _study_args(p)
    p.add_argument("--trial", required=True, type=int, metavar="N", help="trial number (see `hwsearch front`)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--verify", action="store_true",
                   help="re-evaluate accuracy (must be exact) and re-measure latency/memory on the profile")
    p.set_defaults(func=cmd_export)


def _open(args: argparse.Namespace):
    import optuna

    from search.errors import UserError
    from search.inspect.api import is_storage_url, load_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.storage:
        if not is_storage_url(args.storage):  # else load_study would take it for a second study name
            raise UserError(f"--storage {args.storage!r}: expected sqlite:///path, postgresql://user@host/db or "
                            "journal:PATH")
        return load_study(args.storage, results=args.results, study_name=args.study)
    return load_study(args.study, results=args.results)


def cmd_front(args: argparse.Namespace) -> int:
    view = _open(args)
    if args.score_test:
        from search.inspect.holdout import score_test

        scored = score_test(view, view.load_task())
        print(f"test split: {len(scored) - 1 if scored else 0} front points scored", file=sys.stderr)
        view = _open(args)  # re-read: the scores are study attributes
    df = view.all_trials if args.all else view.front
    if args.format == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif args.format == "json":
        sys.stdout.write(df.to_json(orient="records", indent=2) + "\n")
    else:
        _print_table(view, df, every=args.all)
    return 0


# Columns the printed table leaves to --format csv|json (and the report), so a piped table fits in 250 characters.
TABLE_HIDDEN = ("temperature", "model_mb")


def _print_table(view, df, *, every: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from search.inspect.report import format_cell
    from search.metrics import show

    complete = view.all_trials[view.all_trials.state == "COMPLETE"]
    title = (f"study {view.name}: {len(view.front)} on the front, {int(complete.feasible.sum())} feasible of "
             f"{len(complete)} complete trials ({len(view.all_trials)} in all)")
    table = Table(title=title, title_justify="left")
    df = df.drop(columns=[c for c in TABLE_HIDDEN if c in df.columns])
    for col in df.columns:
        table.add_column(col, justify="left" if col in ("baseline", "origin", "budget", "state", "fail_reason")
                         else "right", no_wrap=col != "fail_reason", min_width=len(col))
    for row in df.to_dict("records"):
        on_front = bool(row.get("on_front", True))
        table.add_row(*(format_cell(c, v, view.percent) for c, v in row.items()),
                      style="bold" if every and on_front else None)
    console = Console()
    # Piped: no terminal width to honour, and a cut-off table is useless; a terminal wraps reasons.
    (console if console.is_terminal else Console(width=250)).print(table)
    if not len(df):
        print("no feasible trial on the front yet (see --all for every trial)")
    elif not view.has_test:
        print("note: this task has no test split: accuracy is the selection set's (val), not a held-out estimate")
    else:
        t = view.teacher_test.get("accuracy")
        what = "" if view.metric_name == "top-1" else f" ({view.metric_name}, changes in its unit)"
        print(f"accuracy/acc_change{what}: val, which selected the front; test_*: held-out test split, scored once "
              "per front point" + (f" (teacher {show(t, view.percent)})" if t is not None else "")
              + "; test_se: paired standard error of test_change; within noise: |test_change| <= 2 test_se")


def print_front(result) -> None:
    """The front table after `hwsearch run` (result: search.pipeline.RunResult)."""
    from search.inspect.api import load_study

    view = load_study(result.storage_url, results=Path(result.results_dir).parent, study_name=result.study_name)
    _print_table(view, view.front, every=False)


def cmd_plot(args: argparse.Namespace) -> int:
    view = _open(args)
    path = view.report(Path(args.out) if args.out else None)
    print(f"wrote {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from search.inspect.export import export_trial
    from search.inspect.verify import VerifyError

    view = _open(args)

    def warn(msg: str) -> None:
        print(f"hwsearch export: warning: {msg}", file=sys.stderr)

    try:
        result = export_trial(view, args.trial, args.out, verify=args.verify, warn=warn)
    except VerifyError as e:
        print(f"hwsearch export: verification FAILED for trial {e.trial}: the exported model does not "
              f"reproduce its record\n{e.report.table()}", file=sys.stderr)
        return 1
    print(f"wrote {result.model} and {result.manifest} (trial {result.trial})")
    if result.verification is not None:
        print(f"verified: accuracy identical, latency and memory within the noise bounds\n"
              f"{result.verification.table()}")
    return 0
