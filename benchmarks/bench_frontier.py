"""The fast corner, measured: each sensitivity-seeded plan of a study, refined, on the held-out test split.

Copies a finished `--seed-plans` study to a scratch folder (default: results/frontier-src, which it runs first
when absent: `hwsearch run --task fashion-mnist --space spaces/default.yaml --device local-1core --trials 1
--seed-plans --study frontier-src`, i.e. the baselines and the seeded plans at the explore budget),
queues the space's refine budget for every seeded trial that trained (the same queueing `--refine` uses,
run by `search.run`, so the same Objective retrains and re-measures them), then scores the refined trials
on the test split once (`search.inspect.holdout.score_test`: paired standard error against the teacher).
Per latency target it reports: the additive model's predicted latency, the measured latency and speedup,
the explore-budget val top-1, the refined val top-1 and the refined test change ± se. With the sensitivity
table's measured floor (the fastest plan the space allows), this is the frontier of the fast corner.
Writes benchmarks/results/frontier.json.

    .venv/bin/python benchmarks/bench_frontier.py [--study frontier-src] [--from results] [--augment]
        [--epochs N] [--min-speedup X] [--scratch results/bench-frontier] [--out benchmarks/results/frontier.json]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from _common import REPO, BenchError, cli, fmt, header, load_task, open_study, share_teachers, shown, table, write_json

TARGET_PTS, TARGET_X = 1.0, 3.0  # the fast-corner target: 3x within 1 point of test top-1
SOURCE = "frontier-src"


def refined_space(view, scratch: Path, augment: bool, epochs: float | None) -> Path:
    """The study's own space (refine budget as it was, or with the live augmented teacher, or other epochs)."""
    import yaml

    data = view.space.model_dump(mode="json")
    data["distillation"]["refine"]["augment"] = augment
    if epochs is not None:
        data["distillation"]["refine"].update(epochs=epochs, steps=None)
    out = scratch / "space.yaml"
    out.write_text("# the copied study's space (bench_frontier.py)\n" + yaml.safe_dump(data, sort_keys=False))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=SOURCE, help=f"a --seed-plans study (default {SOURCE}: run when absent)")
    parser.add_argument("--from", dest="source", type=Path, default=REPO / "results", help="its results folder")
    parser.add_argument("--device", type=Path, default=REPO / "device_profiles" / "local-1core.yaml",
                        help="the study's device profile")
    parser.add_argument("--augment", action="store_true", help="refine from the live teacher on augmented inputs")
    parser.add_argument("--epochs", type=float, help="refine for this many epochs instead of the space's")
    parser.add_argument("--min-speedup", type=float, default=0.0,
                        help="refine only the seeded plans at least this much faster than the teacher")
    parser.add_argument("--results", type=Path, default=REPO / "results", help="where the cached teachers are")
    parser.add_argument("--scratch", type=Path, default=REPO / "results" / "bench-frontier")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "frontier.json")
    args = parser.parse_args()
    import optuna

    import search
    from search.config import load_space
    from search.inspect.holdout import score_test
    from search.study.record import S_SPACE, T_REFINED_FROM
    from search.study.refine import queue_refinement

    src = args.source / args.study
    if args.study == SOURCE and not (src / "study.db").is_file():  # the baselines and the seeded plans alone
        print(f"{SOURCE}: running the seeded source study ...", flush=True)
        search.run("fashion-mnist", REPO / "spaces" / "default.yaml", args.device, 1, SOURCE, results=args.source,
                   seed_plans=True, progress=True, write_outputs=False)
    if not (src / "study.db").is_file():
        raise BenchError(f"{shown(src)}: no study there (run bench_samplers.py with tpe+seeded first)")
    variant = ("augmented" if args.augment else "cached") + (f"-{args.epochs:g}ep" if args.epochs else "")
    scratch = (args.scratch / variant).resolve()
    name = args.study  # the folder name is the study name: the copy keeps it, in its own scratch folder
    if not (scratch / name).exists():
        scratch.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, scratch / name, ignore=shutil.ignore_patterns("tmp"))
    share_teachers(scratch, args.results.resolve())
    view = open_study(name, scratch)
    seeded = [r for r in view.trials if r.seeded is not None and r.state == "COMPLETE" and r.budget != "refine"
              and view.teacher["latency_ms"] / r.values[1] >= args.min_speedup]
    if not seeded:
        raise BenchError(f"{args.study}: no seeded trials at least {args.min_speedup:g}x faster (was it run with "
                         "--seed-plans?)")
    study = view.study
    frozen = study.get_trials(deepcopy=False)
    done = {t.user_attrs.get(T_REFINED_FROM) for t in frozen}
    for r in seeded:
        if r.trained and r.number not in done:
            queue_refinement(study, frozen[r.number])
    space = refined_space(view, scratch / name, args.augment, args.epochs)
    # A scratch copy: its recorded space takes the refine setting asked for (explore trials are unchanged).
    study.set_user_attr(S_SPACE, load_space(space).model_dump(mode="json"))
    result = header("bench_frontier.py", None)
    n_explore = sum(1 for r in view.trials if r.budget != "refine")
    waiting = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    print(f"{name}: refining {waiting} seeded plans ...", flush=True)
    search.run(view.task_spec, space, args.device, n_explore, name, results=scratch,
               refine=waiting + len(done - {None}), progress=True, write_outputs=False)
    view = open_study(name, scratch)
    task = load_task(view.task_spec, args.results)
    refined = {r.refined_from: r for r in view.trials if r.refined_from is not None and r.state == "COMPLETE"}
    scores = score_test(view, task, trials=[r.number for r in refined.values()])
    teacher = view.teacher
    rows = []
    for r in sorted(seeded, key=lambda r: -r.seeded):
        ref = refined.get(r.number)
        s = scores.get(str(ref.number), {}) if ref else {}
        rows.append({"target": r.seeded, "trial": r.number, "refined_trial": ref.number if ref else None,
                     "predicted_latency_ms": (r.predicted or {}).get("latency_ms"),
                     "allocated_ms": (r.predicted or {}).get("allocated_ms"),
                     "passes": (r.predicted or {}).get("passes"),
                     "latency_ms": r.values[1], "speedup": teacher["latency_ms"] / r.values[1],
                     "predicted_drop_pts": (r.predicted or {}).get("accuracy_drop"),
                     "explore_val": r.values[0], "refined_val": ref.values[0] if ref else None,
                     "refined_test": s.get("accuracy"), "test_change": s.get("change"), "test_se": s.get("se"),
                     "verdict": s.get("verdict"), "params": frozen[r.number].params})
    floor_ms = next(((r.predicted or {}).get("floor_ms") for r in seeded if r.predicted), None)
    reached = [x for x in rows if x["test_change"] is not None and x["speedup"] >= TARGET_X
               and x["test_change"] >= -TARGET_PTS]
    result.update(study=shown(src), scratch=shown(scratch / name), space=shown(space), augment=args.augment,
                  refine=view.space.distillation.refine.model_dump(mode="json"),
                  allocation=view.attrs.get("allocation"),
                  teacher={"val": teacher["accuracy"], "test": scores.get("teacher", {}).get("accuracy"),
                           "latency_ms": teacher["latency_ms"]},
                  floor={"floor_ms": floor_ms, "speedup": teacher["latency_ms"] / floor_ms if floor_ms else None,
                         "note": "the sensitivity stage's floor: every unit at the space's top ratio, fastest bits"},
                  rows=rows,
                  target={"speedup": TARGET_X, "within_pts": TARGET_PTS, "reached": bool(reached),
                          "best_within": max((x["speedup"] for x in rows if x["test_change"] is not None
                                              and x["test_change"] >= -TARGET_PTS), default=None)})
    table([[f"{x['target']:.3g}", f"{x['speedup']:.2f}x", fmt(x["predicted_latency_ms"], ".4f"),
            f"{x['latency_ms']:.4f}",
            f"{x['explore_val']:.2%}", fmt(x["refined_val"], ".2%"), fmt(x["refined_test"], ".2%"),
            "-" if x["test_change"] is None else f"{x['test_change']:+.2f} ± {x['test_se']:.2f}"] for x in rows],
          ["target", "speedup", "predicted ms", "measured ms", "explore val", "refined val", "refined test",
           "test change (pts)"])
    print(f"teacher {teacher['latency_ms']:.4f} ms; floor {fmt(floor_ms, '.4f')} ms; 3x within 1 pt: "
          f"{'reached' if reached else 'not reached'}")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    cli(main)
