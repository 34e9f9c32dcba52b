"""Cost of a trial: seconds per stage in a finished study, and what hardware-first skipping saves.

Part 1 reads a finished study (--study NAME --results DIR, e.g. results/demo after `make demo`): the mean
seconds of each stage a trial records (prune, measure, distill, export, quantize, evaluate, store; `other` is
the trial's wall time outside them: sampling, storage writes), separately for explore trials that trained,
refine trials and untrained trials (training-free plans and those skipped for a broken budget), and the share
of trial wall time that is neither training (distill) nor accuracy evaluation. Target: at most 25% for the
trials that train.

Part 2 runs (or, with --tight-study, reads) a study under a tight latency budget: a copy of the study's
profile with budgets.latency_ms = --tight-fraction x the study's fp32 teacher latency, so most students are
infeasible, same task and space (--steps cuts its distillation budget). Trials that skipped training are the
COMPLETE ones that were pruned, are untrained and broke a hardware budget. Saved seconds are estimated as
skipped trials x the mean cost of what they skipped in trained explore trials: distill plus the second
export + quantize (a trained trial exports and quantizes twice, structure then final: half its export and
quantize time). Writes benchmarks/results/stages.json.

    .venv/bin/python benchmarks/bench_stages.py --study demo [--results results] [--quick | --full]
        [--tight-study NAME --tight-results DIR] [--tight-fraction 0.5] [--tight-trials N] [--steps K]

--quick (the default): an 8-trial tight study; --full: 24 trials. The tight study goes to
results/bench-stages/<study>-tight (started afresh each run; --tight-study <study>-tight rereads it).
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import time
from pathlib import Path

from _common import REPO, BenchError, cli, fmt, header, mode_args, open_study, share_teachers, shown, table, write_json

STAGES = ("prune", "measure", "distill", "export", "quantize", "evaluate", "store")
TRAINING = ("distill", "evaluate")  # what a trial is for; the rest is overhead
TARGET = 0.25
HW_BUDGETS = ("latency_ms", "memory_mb", "model_mb")
MODES = {"quick": {"tight_trials": 8}, "full": {"tight_trials": 24}}


def wall_seconds(view) -> dict[int, float]:
    return {t.number: (t.datetime_complete - t.datetime_start).total_seconds()
            for t in view.study.get_trials(deepcopy=False) if t.datetime_complete and t.datetime_start}


def category(r) -> str:
    if not r.trained:
        return "untrained"
    return "refine" if r.budget == "refine" else "explore"


def stage_table(view) -> dict:
    """Per category: trials, mean seconds per stage, mean wall seconds, overhead share of the summed wall time."""
    wall = wall_seconds(view)
    groups: dict[str, list] = {"explore": [], "refine": [], "untrained": []}
    for r in view.trials:
        if r.state == "COMPLETE" and r.stage_seconds and r.number in wall:
            groups[category(r)].append(r)
    groups["trained (explore + refine)"] = groups["explore"] + groups["refine"]
    out = {}
    for name, recs in groups.items():
        if not recs:
            out[name] = {"trials": 0}
            continue
        walls = [max(wall[r.number], sum(r.stage_seconds.values())) for r in recs]
        mean = {s: statistics.fmean(r.stage_seconds.get(s, 0.0) for r in recs) for s in STAGES}
        mean["other"] = statistics.fmean(w - sum(r.stage_seconds.values()) for w, r in zip(walls, recs, strict=True))
        useful = sum(r.stage_seconds.get(s, 0.0) for r in recs for s in TRAINING)
        out[name] = {"trials": len(recs), "mean_seconds": {k: round(v, 3) for k, v in mean.items()},
                     "mean_wall_seconds": round(statistics.fmean(walls), 3),
                     "overhead_share": round(1.0 - useful / sum(walls), 4), "trial_numbers": [r.number for r in recs]}
    return out


def tight_inputs(view, fraction: float, steps: int | None, folder: Path) -> tuple[Path, Path, float]:
    """The study's profile with a tight latency budget, and its space (distillation cut to `steps`)."""
    import yaml

    from search.config import load_profile, load_space

    budget = round(fraction * float(view.teacher["latency_ms"]), 6)
    profile = view.profile.model_dump(mode="json")
    profile["budgets"]["latency_ms"] = budget
    profile["name"] = f"{profile['name']}-tight"
    space = view.space.model_dump(mode="json")
    if steps:
        space["distillation"]["budget"] = {"steps": steps, "epochs": None, "max_samples": None}
    folder.mkdir(parents=True, exist_ok=True)
    p_file, s_file = folder / "profile-tight.yaml", folder / "space.yaml"
    p_file.write_text(f"# study {view.name}'s profile, latency budget {fraction} x its teacher ({budget} ms)\n"
                      + yaml.safe_dump(profile, sort_keys=False))
    s_file.write_text(f"# study {view.name}'s space{f', distillation cut to {steps} steps' if steps else ''}\n"
                      + yaml.safe_dump(space, sort_keys=False))
    load_profile(p_file)  # fail here, not inside the run
    load_space(s_file)
    return p_file, s_file, budget


def skipped(r) -> bool:
    pruned = any(float(v) > 0 for v in ((r.plan or {}).get("prune") or {}).values())
    broken = any(float(r.constraints.get(k, 0.0)) > 0 for k in HW_BUDGETS)
    return r.state == "COMPLETE" and not r.trained and pruned and broken


def skip_cost(recs) -> float | None:
    """Mean seconds a skipped trial would have spent on top: distill + second export + second quantize."""
    costs = [r.stage_seconds.get("distill", 0.0) + (r.stage_seconds.get("export", 0.0)
                                                    + r.stage_seconds.get("quantize", 0.0)) / 2
             for r in recs if r.state == "COMPLETE" and r.trained and r.budget != "refine"]
    return statistics.fmean(costs) if costs else None


def hardware_first(tight, main_view, budget: float | None, same_budget: bool) -> dict:
    recs = [r for r in tight.trials if r.budget != "refine"]
    wall = wall_seconds(tight)
    skips = [r for r in recs if skipped(r)]
    cost, source = skip_cost(recs), f"trained explore trials of {tight.name}"
    if cost is None:
        note = "same distillation budget" if same_budget else "its distillation budget, not necessarily the same"
        cost, source = skip_cost(main_view.trials), f"trained explore trials of {main_view.name} ({note})"
    total = sum(wall.get(r.number, 0.0) for r in recs)
    saved = None if cost is None else len(skips) * cost
    return {"study": tight.name, "latency_budget_ms": budget if budget is not None
            else tight.profile.budgets.latency_ms, "teacher_latency_ms": tight.teacher.get("latency_ms"),
            "trials": len(recs), "complete": sum(r.state == "COMPLETE" for r in recs),
            "skipped_training": len(skips), "trained": sum(r.trained for r in recs),
            "feasible": sum(r.feasible for r in recs),
            "mean_skipped_trial_seconds": round(statistics.fmean(wall[r.number] for r in skips), 3)
            if skips and all(r.number in wall for r in skips) else None,
            "skip_cost_seconds": None if cost is None else round(cost, 3), "skip_cost_source": source,
            "estimated_saved_seconds": None if saved is None else round(saved, 1),
            "study_wall_seconds": round(total, 1),
            "saved_share": None if saved is None else round(saved / (total + saved), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode_args(parser)
    parser.add_argument("--study", default="demo", help="a finished study (default demo)")
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--tight-study", help="read this tight-budget study instead of running one")
    parser.add_argument("--tight-results", type=Path, help="where --tight-study is (default --scratch)")
    parser.add_argument("--tight-fraction", type=float, default=0.5, help="latency budget / teacher latency")
    parser.add_argument("--tight-trials", type=int, help="trials of the tight study (quick 8, full 24)")
    parser.add_argument("--steps", type=int, help="cut the tight study's distillation budget to K steps")
    parser.add_argument("--no-tight", action="store_true", help="part 1 only")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--scratch", type=Path, default=REPO / "results" / "bench-stages")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "stages.json")
    args = parser.parse_args()
    mode_name = args.mode or "quick"
    trials = args.tight_trials or MODES[mode_name]["tight_trials"]
    if not args.tight_fraction > 0 or trials < 1:
        raise BenchError("--tight-fraction must be above 0 and --tight-trials at least 1")

    view = open_study(args.study, args.results)
    result = header("bench_stages.py", mode_name)
    stages = stage_table(view)
    if not any(v["trials"] for v in stages.values()):
        raise BenchError(f"study '{args.study}' has no completed trial with stage timings")
    tight_part = None
    if args.tight_study:
        tight = open_study(args.tight_study, args.tight_results or args.scratch)
        tight_part = hardware_first(tight, view, None, False)
    elif not args.no_tight:
        import search

        scratch = args.scratch.resolve()
        share_teachers(scratch, args.results.resolve())
        name = f"{view.name}-tight"
        shutil.rmtree(scratch / name, ignore_errors=True)
        p_file, s_file, budget = tight_inputs(view, args.tight_fraction, args.steps, scratch / name)
        print(f"tight study {name}: {trials} trials, latency budget {budget:.4g} ms "
              f"({args.tight_fraction} x teacher) ...", flush=True)
        start = time.perf_counter()
        search.run(view.task_spec, s_file, p_file, trials, name, results=scratch, data_dir=args.data_dir,
                   progress=False, write_outputs=False)
        tight_part = hardware_first(open_study(name, scratch), view, budget, not args.steps)
        tight_part["run_seconds"] = round(time.perf_counter() - start, 1)

    result.update(study=view.name, results=shown(args.results), task=view.task_spec, target_overhead=TARGET,
                  stages=stages, hardware_first=tight_part,
                  settings={"tight_fraction": args.tight_fraction, "tight_trials": trials, "steps": args.steps})
    cols = (*STAGES, "other")
    print(f"\nmean seconds per stage, study {view.name} ({view.task_spec}):")
    table([[name, str(v["trials"]), *(f"{v['mean_seconds'][c]:.2f}" for c in cols), f"{v['mean_wall_seconds']:.1f}",
            f"{v['overhead_share']:.0%}"] for name, v in stages.items()
           if v["trials"] and (name != "trained (explore + refine)" or stages["refine"]["trials"])],
          ["trials", "n", *cols, "wall s", "overhead"])
    trained = stages["trained (explore + refine)"]
    verdict = None
    if trained["trials"]:
        verdict = trained["overhead_share"] <= TARGET
        print(f"overhead (wall time that is not distill or evaluate) of trials that train: "
              f"{trained['overhead_share']:.0%}, target <= {TARGET:.0%}: {'met' if verdict else 'MISSED'}")
    result["target_met"] = verdict
    if tight_part:
        h = tight_part
        print(f"\nhardware-first skipping, study {h['study']} (latency budget {fmt(h['latency_budget_ms'], '.4g')} ms, "
              f"teacher {fmt(h['teacher_latency_ms'], '.4g')} ms):")
        table([[str(h["trials"]), str(h["skipped_training"]), str(h["trained"]), str(h["feasible"]),
                fmt(h["mean_skipped_trial_seconds"], ".1f"), fmt(h["skip_cost_seconds"], ".1f"),
                fmt(h["estimated_saved_seconds"], ".0f"), fmt(h["study_wall_seconds"], ".0f"),
                "-" if h["saved_share"] is None else f"{h['saved_share']:.0%}"]],
              ["trials", "skipped", "trained", "feasible", "s per skipped trial", "s saved per skip",
               "saved s", "study wall s", "saved share"])
        print(f"saved share: estimated saved / (study wall time + saved); per-skip cost from {h['skip_cost_source']}")
    write_json(args.out, result)
    finite = all(math.isfinite(v.get("overhead_share", 0.0)) for v in stages.values())
    return 0 if verdict is not False and finite else 1


if __name__ == "__main__":
    cli(main)
