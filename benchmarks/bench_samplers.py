"""Search efficiency of the samplers: hypervolume of the feasible front after N trials, S seeds per sampler.

For each sampler (tpe, nsga2, gp, random) and seed 0..S-1 this runs a fresh hwsearch study of N trials
(same task, space and profile; each its own folder under --scratch, default results/bench-samplers), seed by
seed with the samplers interleaved so machine drift hits them alike. The first 4 trials of every study are
the same enqueued baselines (teacher fp32/int8, uniform 50% pruning + KD in fp32 and int8), so the samplers differ
only in the N - 4 trials they choose.

Hypervolume (search.inspect.front.hypervolume: the share, 0..1, of the box between the ideal point and the
reference point that the feasible complete trials dominate), with ONE reference point for every study:
  accuracy  = the teacher's top-1 minus the space's max_drop (its min_accuracy when it sets one; else 0):
              the accuracy floor, below which no trial is feasible anyway;
  latency   = 1.5 x the fp32 teacher, latencies taken as each study's latency / its own teacher latency (the
              same-round ratio the measurement is built on), so each study's drift anchor cancels out;
  memory    = the profile's memory_mb budget (else 2 x the teacher's peak), in MB.
Reported per sampler: median, min and max over seeds, and each median / random's median. Also per study:
feasible/trained/failed counts, front size, wall seconds, and the hypervolume after every trial.
Writes benchmarks/results/samplers.json.

    .venv/bin/python benchmarks/bench_samplers.py [--quick | --full] [--samplers tpe nsga2 gp random]
        [--task T] [--space FILE] [--device FILE] [--trials N] [--seeds S] [--steps K]

--quick (the default): digits, spaces/default.yaml with its distillation budget cut to 30 steps, N=8, 2 seeds.
--full: fashion-mnist, spaces/default.yaml as is (1 KD epoch on 20k images per trial), N=16, 3 seeds.
On digits at local-1core any int8 block makes the tiny model slower than its teacher and only fp32-pruned
students beat it (1.2-1.4x): with 8 trials most fronts are the teacher alone, so --quick checks the pipeline
more than it ranks samplers (`--quick --task fashion-mnist --steps 100` is a cheap, more telling variant).
The studies find the cached teachers through a symlink <scratch>/teachers -> <results>/teachers.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import time
from pathlib import Path

from _common import REPO, BenchError, cli, fmt, header, mode_args, open_study, share_teachers, shown, table, write_json

SAMPLERS = ("tpe", "nsga2", "gp", "random")
SEEDED = "+seeded"  # a variant: the same sampler after the --seed-plans plans (`tpe+seeded`)
VARIANTS = SAMPLERS + tuple(s + SEEDED for s in SAMPLERS)
MODES = {"quick": {"task": "digits", "trials": 8, "seeds": 2, "steps": 30},
         "full": {"task": "fashion-mnist", "trials": 16, "seeds": 3, "steps": None}}
LATENCY_REF = 1.5  # x the fp32 teacher


def short_space(space: Path, steps: int, scratch: Path) -> Path:
    """A copy of `space` whose distillation budget is `steps` steps (the cheap setting of --quick)."""
    import yaml

    from search.config import load_space

    data = load_space(space).model_dump(mode="json")
    data["distillation"]["budget"] = {"steps": steps, "epochs": None, "max_samples": None}
    data["name"] = f"{data['name']}-steps{steps}"
    out = scratch / f"{space.stem}-steps{steps}.yaml"
    out.write_text(f"# {shown(space)} with a {steps}-step distillation budget (bench_samplers.py)\n"
                   + yaml.safe_dump(data, sort_keys=False))
    load_space(out)
    return out


def run_study(name: str, scratch: Path, args, space: Path, variant: str, seed: int) -> dict:
    import search
    from search.errors import RunStopped

    folder = scratch / name
    if folder.exists() and not args.keep:
        shutil.rmtree(folder)
    sampler = variant.removesuffix(SEEDED)
    print(f"{name}: {args.trials} trials ...", flush=True)
    start, stopped = time.perf_counter(), None
    try:  # the seeded variants share one cached sensitivity table under <scratch>/sensitivity/
        search.run(args.task, space, args.device, args.trials, name, sampler=sampler, seed=seed, results=scratch,
                   data_dir=args.data_dir, progress=False, write_outputs=False, seed_plans=variant != sampler)
    except RunStopped as e:  # too many failures in a row: score what it has, say so
        stopped = str(e)
        print(f"  stopped: {stopped}")
    trials = open_study(name, scratch).study.get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    # The study's own span (its first trial's start to its last trial's end, setup excluded): a resumed study
    # keeps the time it took when it ran, not this invocation's.
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    return {"study": name, "sampler": variant, "seed": seed, "wall_seconds": round(time.perf_counter() - start, 1),
            "trials_span_seconds": round(span, 1) if span is not None else None, "stopped": stopped}


def reference(view, profile) -> tuple[float, float]:
    """(accuracy floor, memory reference in MB): see the module docstring."""
    teacher, acc = view.teacher, view.space.accuracy
    if acc.min_accuracy is not None:
        floor = float(acc.min_accuracy)
    elif acc.max_drop is not None:
        floor = float(teacher["accuracy"]) - float(acc.max_drop)
    else:
        floor = 0.0
    memory = profile.budgets.memory_mb or 2.0 * float(teacher["memory_mb"])
    return floor, float(memory)


def score(row: dict, scratch: Path, ref) -> None:
    from search.inspect.front import hypervolume
    from search.study.pareto import is_feasible

    view = open_study(row["study"], scratch)
    t_lat = float(view.teacher["latency_ms"])
    recs = sorted((r for r in view.trials if r.budget != "refine"), key=lambda r: r.number)[: row["trials"]]
    points, history = [], []
    for r in recs:
        if r.state == "COMPLETE" and r.values is not None and is_feasible(r):
            acc, lat, mem = r.values[:3]
            points.append((acc, lat / t_lat, mem))
        history.append(round(hypervolume(points, ref), 6) if points else 0.0)
    front = {t.number for t in view.study.best_trials} & {r.number for r in recs if is_feasible(r)}
    row.update(hypervolume=history[-1] if history else 0.0, hv_history=history, n_trials=len(recs),
               complete=sum(r.state == "COMPLETE" for r in recs), failed=sum(r.state == "FAIL" for r in recs),
               trained=sum(r.trained for r in recs), feasible=len(points), front_size=len(front),
               teacher_accuracy=view.teacher["accuracy"], teacher_latency_ms=t_lat,
               best_accuracy=max((p[0] for p in points), default=None),
               min_memory_mb=min((p[2] for p in points), default=None),
               best_speedup=max((1.0 / p[1] for p in points), default=None))


def sensitivity_cost(scratch: Path) -> list[dict]:
    """What the seeded studies' sensitivity stage cost (computed once, cached under <scratch>/sensitivity/),
    against the demo's search time (benchmarks/results/study-demo.json: `make demo` from a fresh clone)."""
    import json

    demo = REPO / "benchmarks" / "results" / "study-demo.json"
    demo_s = json.loads(demo.read_text())["wall_s"] if demo.is_file() else None
    out = []
    for path in sorted((scratch / "sensitivity").glob("sensitivity-*.json")):
        d = json.loads(path.read_text())
        out.append({"file": shown(path), "task": d["task"], "seconds": d["seconds"], "rows": len(d["rows"]),
                    "measurements": d["measurements"], "stage_seconds": d.get("stage_seconds"),
                    "floor_ms": d["floor_ms"], "teacher_latency_ms": d["teacher_latency_ms"],
                    "demo_wall_s": demo_s, "share_of_demo": d["seconds"] / demo_s if demo_s else None})
    return out


def ceiling(rows: list[dict], sens: list[dict] | None, ref) -> dict | None:
    """The hypervolume of one point no study can beat in practice: the teacher's accuracy at the measured
    latency floor (every unit at the top ratio, fastest bits) and the least memory any trial had. It bounds
    what any sampler can reach in this box, so a ratio to random reads against it."""
    from search.inspect.front import hypervolume

    if not sens:
        return None
    floor = min(d["floor_ms"] / d["teacher_latency_ms"] for d in sens)
    acc = max(r["teacher_accuracy"] for r in rows)
    mem = min(r["min_memory_mb"] for r in rows if r["min_memory_mb"] is not None)
    return {"accuracy": acc, "latency_x_teacher": floor, "memory_mb": mem,
            "hypervolume": round(hypervolume([(acc, floor, mem)], ref), 6)}


def summarise(rows: list[dict], samplers: list[str]) -> dict:
    out = {}
    for s in samplers:
        hv = [r["hypervolume"] for r in rows if r["sampler"] == s]
        out[s] = {"median": statistics.median(hv), "min": min(hv), "max": max(hv), "mean": statistics.fmean(hv),
                  "seeds": len(hv), "median_wall_seconds": statistics.median(r["wall_seconds"] for r in rows
                                                                            if r["sampler"] == s),
                  "median_span_seconds": statistics.median(r["trials_span_seconds"] or 0.0 for r in rows
                                                           if r["sampler"] == s)}
    base = out.get("random", {}).get("median")
    for s in out.values():
        s["median_vs_random"] = s["median"] / base if base else None
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode_args(parser)
    parser.add_argument("--samplers", nargs="+", choices=VARIANTS, default=list(SAMPLERS),
                        help="samplers; `X+seeded` runs X after the --seed-plans plans (allocated from sensitivity)")
    parser.add_argument("--task", help="built-in task or file.py:function (quick: digits, full: fashion-mnist)")
    parser.add_argument("--space", type=Path, default=REPO / "spaces" / "default.yaml")
    parser.add_argument("--device", type=Path, default=REPO / "device_profiles" / "local-1core.yaml")
    parser.add_argument("--trials", type=int, help="N trials per study, the 4 baselines included (quick 8, full 16)")
    parser.add_argument("--seeds", type=int, help="S seeds per sampler: 0..S-1 (quick 2, full 3)")
    parser.add_argument("--steps", type=int, help="cut the space's distillation budget to K steps (quick 30; "
                                                  "0 = the space as is)")
    parser.add_argument("--data-dir", type=Path, help="Fashion-MNIST IDX files, if not in the default place")
    parser.add_argument("--results", type=Path, default=REPO / "results", help="where the cached teachers are")
    parser.add_argument("--scratch", type=Path, default=REPO / "results" / "bench-samplers", help="the studies")
    parser.add_argument("--keep", action="store_true", help="resume existing studies instead of starting afresh")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "samplers.json")
    args = parser.parse_args()
    mode_name = args.mode or "quick"
    settings = MODES[mode_name]
    args.task = args.task or settings["task"]
    args.trials = args.trials or settings["trials"]
    seeds = list(range(args.seeds or settings["seeds"]))
    steps = settings["steps"] if args.steps is None else (args.steps or None)
    if args.trials < 5 or not seeds:
        raise BenchError("--trials must be at least 5 (4 are the enqueued baselines) and --seeds at least 1")
    for flag, p in (("--space", args.space), ("--device", args.device)):
        if not p.is_file():
            raise BenchError(f"{flag} {p}: no such file")

    from search.config import load_profile

    profile = load_profile(args.device)
    scratch = args.scratch.resolve()
    share_teachers(scratch, args.results.resolve())
    space = short_space(args.space, steps, scratch) if steps else args.space
    result = header("bench_samplers.py", mode_name)
    rows = [run_study(f"{s.replace(SEEDED, '-seeded')}-s{seed}", scratch, args, space, s, seed)
            for seed in seeds for s in args.samplers]
    for r in rows:
        r["trials"] = args.trials

    from search.inspect.front import Reference

    first = open_study(rows[0]["study"], scratch)
    floor, memory = reference(first, profile)
    ref = Reference(floor, LATENCY_REF, memory,
                    f"accuracy {floor:.4f} (teacher - max_drop), latency {LATENCY_REF} x the study's fp32 teacher, "
                    f"memory {memory:g} MB (profile budget); ideal: accuracy 1, latency 0, memory 0")
    for r in rows:
        score(r, scratch, ref)
        if SEEDED.removeprefix("+") in r["study"]:  # the seeding stage's cost: sensitivity + measured allocation
            r["allocation"] = open_study(r["study"], scratch).attrs.get("allocation")
    accs = {r["teacher_accuracy"] for r in rows}
    if len(accs) > 1:
        print(f"warning: the studies' teachers differ in accuracy ({sorted(accs)}): the reference point assumes one")
    summary = summarise(rows, args.samplers)
    result["sensitivity"] = sensitivity_cost(scratch) if any(SEEDED in s for s in args.samplers) else None
    result["hv_ceiling"] = ceiling(rows, result["sensitivity"], ref)
    result.update(task=args.task, space=shown(space), profile=shown(args.device), trials=args.trials, seeds=seeds,
                  distill_steps=steps, scratch=shown(scratch),
                  reference_point={"accuracy": floor, "latency_x_teacher": LATENCY_REF, "memory_mb": memory,
                                   "note": ref.note},
                  summary=summary, studies=rows)
    print()
    table([[s, f"{v['median']:.4f}", f"{v['min']:.4f}-{v['max']:.4f}", str(v["seeds"]),
            fmt(v["median_vs_random"], ".2f") + ("x" if v["median_vs_random"] else ""),
            f"{v['median_wall_seconds']:.0f}", f"{v['median_span_seconds']:.0f}"] for s, v in summary.items()],
          ["sampler", "median HV", "min-max", "seeds", "vs random", "wall s (this run)", "trials span s"])
    print(f"hypervolume after {args.trials} trials ({args.task}, {shown(space)}, {profile.name}); reference point: "
          f"{ref.note}")
    for r in rows:
        if r["stopped"] or r["failed"]:
            print(f"  {r['study']}: {r['failed']} failed trials{'; ' + r['stopped'] if r['stopped'] else ''}")
    write_json(args.out, result)
    return 0 if all(math.isfinite(r["hypervolume"]) for r in rows) else 1


if __name__ == "__main__":
    cli(main)
