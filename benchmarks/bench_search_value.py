"""Does the search beat the uniform recipe? At equal measured latency and equal training, over training seeds.

Per training seed s, on one task and device profile, all under --scratch (resumable: a finished study, trial or
timing round is skipped when the command runs again; the JSON is rewritten after every stage):
  search-<variant>-s{s}  the default search (`hwsearch run` with the space, --trials, --refine, --seed s): its refined
                points from the sampler or the allocation are the search's output ("searched");
  bench-s{s}    the same Objective and refine budget (the space's `refine`) trains, with T=4 and alpha=0.5 (the
                baselines' recipe): every uniform plan of the space and of --uniform-ratios (each ratio, fp32 and
                int8: the uniform curve); one random per-unit plan per searched point, drawn from a pool of --pool
                random plans measured untrained and within 5% of that point's latency ("random"); and each searched
                plan's structure again with the baselines' recipe ("searched-kd": without the searched T/alpha).
Then every trained model and the teacher are re-timed side by side (--rounds interleaved rounds in shuffled
order, each a fresh process timing the model and the fp32 teacher: the median same-round ratio), and only then is
the test split opened (it is sealed until the report: `search.tasks.sealed`): each point's test change against the
teacher with its paired standard error, and its gap to the uniform curve of its own seed at its re-timed latency
(the curve: the teacher plus the non-dominated uniform points, linear in log-latency; beyond its fastest point
the gap to that point is a lower bound, `*_gap_bound`; the gap's standard error is the paired per-image one).
The same on val (what decides). Summary per operating point (the searched points of a
seed by latency rank): mean gap and its standard error over seeds.

    .venv/bin/python benchmarks/bench_search_value.py [--task fashion-mnist] [--seeds 0 1 2] [--trials 24]
        [--refine 6] [--pool 30] [--rounds 7] [--variant A B --search-space SPACE_A SPACE_B] [--no-study-rows]
        [--train-only [--stage search|rows]]
        [--scratch results/bench-search-value] [--out benchmarks/results/search-value-<task>-<variant>.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
from pathlib import Path

from _common import REPO, BenchError, cli, header, load_task, open_study, share_teachers, shown, table, write_json

KD = {"temperature": 4.0, "alpha": 0.5}  # the baselines' recipe (search.study.sampling.baseline_params)
MATCH = 0.05  # a random plan stands beside a searched point when its untrained latency is within 5%
BENCH_TAG = "bench"  # trial user attribute: which bench row a trial trains


def searched_rows(scratch: Path, seed: int, variant: str, space: Path, trials: int, args) -> list[dict]:
    """Run (or resume) search `variant` (with `space`) of seed `seed`; its refined points, tagged by origin."""
    import search
    from search.study.record import trial_origin

    name = f"search-{variant}-s{seed}"
    search.run(args.task, space, args.device, trials, name, results=scratch, seed=seed,
               refine=args.refine, progress=True, write_outputs=False)
    view = open_study(name, scratch)
    by_number = {r.number: r for r in view.trials}
    rows = []
    for r in view.trials:
        if r.refined_from is None or r.budget == "promote" or r.state != "COMPLETE" or not r.onnx_artifact:
            continue
        origin = trial_origin(r, by_number)
        kind = "searched" if origin in ("sampled", "allocated") else f"study-{origin}"
        if kind != "searched" and not args.study_rows:
            continue
        rows.append({"seed": seed, "kind": kind, "variant": variant,
                     "origin": origin, "study": name, "trial": r.number, "refined_from": r.refined_from,
                     "params": view.study.trials[r.number].params, "val": r.values[0],
                     "recorded_ms": r.values[1]})
    return rows


class BenchStudy:
    """One study per seed that trains the bench's own rows with the search's Objective and refine budget."""

    def __init__(self, task, scratch: Path, seed: int, args) -> None:
        import optuna

        from search.config import load_profile, load_space
        from search.config.profile import Budgets
        from search.study.objective import Objective
        from search.study.record import DIRECTIONS, S_ARTIFACTS
        from search.study.setup import build_context

        self.name, self.folder = f"bench-s{seed}", scratch / f"bench-s{seed}"
        self.folder.mkdir(parents=True, exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self.study = optuna.create_study(study_name=self.name, storage=f"sqlite:///{self.folder / 'study.db'}",
                                         directions=list(DIRECTIONS), load_if_exists=True)
        space, profile = load_space(args.space), load_profile(args.device)
        # Every row is trained, whatever the profile's budgets say: on a slower host uniform 25% + int8 of the
        # ResNet-18-class teacher (0.59 ms) broke local-1core's 0.5 ms and was left untrained at 29% val.
        profile = profile.model_copy(update={"budgets": Budgets()})
        # Depth allowed: the probe rows remove blocks. The uniform curve is denser than the space's staircase
        # (--uniform-ratios): the simple recipe may prune by any ratio, so the search is compared with its best.
        self.search_ratios = [float(r) for r in space.pruning.ratios]  # what the random plans draw from
        ratios = tuple(sorted({*self.search_ratios, *(float(r) for r in args.uniform_ratios)}))
        space = space.model_copy(update={"pruning": space.pruning.model_copy(update={"depth": True,
                                                                                     "ratios": ratios})})
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None  # taskset: one core
        self.ctx = build_context(self.study, task, space, profile, self.folder, seed=seed, train_on="cpu",
                                 threads=threads, task_spec=args.task, space_file=str(args.space),
                                 profile_file=str(args.device))
        (self.folder / "artifacts").mkdir(exist_ok=True)
        store = optuna.artifacts.FileSystemArtifactStore(str(self.folder / "artifacts"))
        self.study.set_user_attr(S_ARTIFACTS, str((self.folder / "artifacts").resolve()))
        self.objective = Objective(self.ctx, store)

    def done(self) -> dict[str, int]:
        """Finished rows by tag: trained, or with nothing to train (the teacher's PTQ); the latest wins."""
        import optuna

        from search.study.record import T_PLAN, T_TRAINED

        return {t.user_attrs[BENCH_TAG]: t.number for t in self.study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if BENCH_TAG in t.user_attrs
            and (t.user_attrs.get(T_TRAINED) or not any(t.user_attrs.get(T_PLAN, {}).get("prune", {}).values()))}

    def train(self, tag: str, params: dict) -> int:
        """Train `params` with the refine budget as the trial tagged `tag` (the finished one when it exists)."""
        from search.study.record import T_BUDGET

        if tag in (done := self.done()):
            return done[tag]
        print(f"{self.name}: training {tag} ...", flush=True)
        self.study.enqueue_trial(params, user_attrs={BENCH_TAG: tag, T_BUDGET: "refine"})
        self.study.optimize(self.objective, n_trials=1, catch=())
        return self.done()[tag]

    def random_pool(self, n: int, seed: int) -> list[dict]:
        """`n` random per-unit plans (the space's choices, uniformly), each with its untrained latency."""
        from search.seeding.sensitivity import PlanMeter

        path = self.folder / "random-pool.json"
        pool = json.loads(path.read_text()) if path.is_file() else []
        rng = random.Random(seed)
        (self.folder / "tmp-pool").mkdir(exist_ok=True)
        ctx, meter = self.ctx, PlanMeter(self.ctx, self.folder / "tmp-pool")
        draws = [random_params(rng, ctx, self.search_ratios) for _ in range(n)]
        for params in draws[len(pool):]:
            pool.append({"params": params, "latency_ms": meter(params)})
            path.write_text(json.dumps(pool))
        return pool


def random_params(rng: random.Random, ctx, ratios: list[float]) -> dict:
    layers, space = ctx.layers, ctx.space
    p = _kd(space)
    for unit in layers.prune_units(space.pruning.granularity):
        p[f"prune.{unit}"] = rng.choice(ratios)
    for unit, members in layers.bit_units(space.quantization.granularity).items():
        choices = layers.unit_bits(members, ctx.bits, ctx.profile)
        if len(choices) > 1:
            p[f"bits.{unit}"] = rng.choice(choices)
    return p


def _searched(space, name: str) -> bool:
    r = getattr(space.distillation, name)
    return r.low != r.high


def with_kd(params: dict, space) -> dict:
    return {**params, **_kd(space)}


def _kd(space) -> dict:
    """The baselines' T and alpha, as parameters where the space searches them."""
    return {k: v for k, v in KD.items() if _searched(space, k)}


def bench_rows(task, scratch: Path, seed: int, searched: list[dict], args) -> list[dict]:
    """Uniform curve, random plans at the searched points' latencies, searched structures with the KD recipe."""
    from search.study.record import is_uniform
    from search.study.sampling import baseline_params

    bench = BenchStudy(task, scratch, seed, args)
    ctx = bench.ctx
    uniform = baseline_params(ctx.space, ctx.layers, ctx.bits, ctx.profile, uniform_curve=True)
    # Uniform int8 PTQ of the teacher (no training: nothing is pruned) is the int8 curve's ratio 0.
    rows = [{"seed": seed, "kind": "uniform", "tag": name, "params": params} for name, params in uniform.items()
            if (is_uniform(name) or name == "teacher-int8")
            and (args.int8_curve if name.endswith("int8") else args.fp32_curve)]
    precisions = [b for b, on in ((32, args.fp32_curve), (8, args.int8_curve)) if on]
    for spec in args.depth_sets if args.depth_probe else []:
        removed = ctx.layers.droppable if spec == "all" else spec.split("+")
        if unknown := sorted(set(removed) - set(ctx.layers.droppable)):
            raise BenchError(f"--depth-sets: {', '.join(unknown)} cannot be removed whole (removable: "
                             f"{', '.join(ctx.layers.droppable) or 'none'})")
        rows += depth_rows(uniform, removed, seed, args.depth_widths, precisions)
    pool = bench.random_pool(args.pool, seed) if searched and args.pool else []  # --pool 0: no random rows
    used: set[int] = set()
    for s in (r for r in searched if r["kind"] == "searched"):
        target = s["recorded_ms"]
        near = sorted((abs(math.log(p["latency_ms"] / target)), i) for i, p in enumerate(pool)
                      if i not in used and math.isfinite(p["latency_ms"]))
        if near and near[0][0] <= math.log1p(MATCH):
            used.add(near[0][1])
            rows.append({"seed": seed, "kind": "random", "tag": f"random@{s['study']}:{s['trial']}",
                         "beside": f"{s['study']}-t{s['trial']}", "params": pool[near[0][1]]["params"]})
        else:
            print(f"seed {seed}: no random plan within {MATCH:.0%} of trial {s['trial']}'s {target:.4f} ms", flush=True)
        if args.recipe_rows:
            rows.append({"seed": seed, "kind": "searched-kd", "tag": f"searched-kd@{s['study']}:{s['trial']}",
                         "beside": f"{s['study']}-t{s['trial']}", "params": with_kd(s["params"], ctx.space)})
    for row in rows:
        n = bench.train(row["tag"], row["params"])
        t = bench.study.trials[n]
        row.update(study=bench.name, trial=n, val=t.values[0], recorded_ms=t.values[1])
    return rows


DEPTH_WIDTHS = (0.5, 0.7)  # the uniform widths the depth probe removes every removable block at


def depth_rows(uniform: dict[str, dict], droppable: list[str], seed: int, widths=DEPTH_WIDTHS,
               precisions=(32,)) -> list[dict]:
    """Uniform width plus removed blocks (depth), in each precision of the uniform curve, with the baselines'
    recipe: every removable block at each width. Not a search: a probe of whether depth buys latency the width
    staircase does not (at a fast end where per-operator overhead, which width does not touch, dominates)."""
    from search.study.sampling import DROP, uniform_name

    if not droppable:
        return []
    removed = {f"prune.{blk}": DROP for blk in droppable}
    return [{"seed": seed, "kind": "uniform-depth", "tag": f"{uniform_name(width, b)}-drop-{'+'.join(droppable)}",
             "params": {**base, **removed}}
            for width in widths for b in precisions if (base := uniform.get(uniform_name(width, b))) is not None]


def onnx_file(scratch: Path, row: dict) -> Path:
    """The row's trained ONNX file, copied out of its study's artifact store once."""
    out = scratch / "onnx" / f"{row['study']}-t{row['trial']}.onnx"
    if not out.is_file():
        view = open_study(row["study"], scratch)
        rec = next(r for r in view.trials if r.number == row["trial"])
        out.parent.mkdir(parents=True, exist_ok=True)
        view.download_artifact(rec.onnx_artifact, out)
    return out


def retime(files: dict[str, Path], reference: Path, profile, rounds: int, state: dict, save) -> dict[str, dict]:
    """Side by side: `rounds` rounds, each timing every file (shuffled) in a fresh process with the teacher
    interleaved; per file the median same-round ratio. Finished rounds are kept in `state` (resumable)."""
    from search.measure.runner import measure

    m = profile.measure
    done = state.setdefault("ratios", {})
    for r in range(rounds):
        order = sorted(files)
        random.Random(r).shuffle(order)
        for key in order:
            got = done.setdefault(key, [])
            if len(got) > r:
                continue
            rec = measure(str(files[key]), reference=str(reference), rounds=1, max_rounds=1,
                          threads=profile.runtime.threads, warmup=m.warmup, repeats=m.repeats, batch=m.batch,
                          graph_optimization=profile.runtime.graph_optimization, timeout_s=m.timeout_s)
            got.append(rec["ratio_p50"])
        save()
        print(f"timing: round {r + 1}/{rounds} done ({len(files)} models)", flush=True)
    out = {}
    for key in files:
        ratios = done[key][:rounds]
        q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
        out[key] = {"speedup": 1.0 / statistics.median(ratios), "ratio_iqr_pct": (q[2] - q[0]) / q[1] * 100}
    return out


def envelope(points: list[dict]) -> list[dict]:
    """The non-dominated points (higher speedup, higher change), slowest first."""
    pts = sorted(points, key=lambda p: -p["speedup"])
    out, best = [], -math.inf
    for p in pts:
        if p["change"] > best:
            out.append(p)
            best = p["change"]
    return out[::-1]


def curve_at(curve: list[dict], speedup: float, split: str):
    """(change, weights {row key: w}) of the curve at `speedup` (linear in log-speedup), None beyond its ends."""
    x = math.log(speedup)
    for a, b in zip(curve, curve[1:], strict=False):
        xa, xb = math.log(a["speedup"]), math.log(b["speedup"])
        if xa <= x <= xb:
            w = 0.0 if xb == xa else (x - xa) / (xb - xa)
            return a[split] * (1 - w) + b[split] * w, {a["key"]: 1 - w, b["key"]: w}
    return None


def gaps(rows: list[dict], correct: dict, teacher: dict, split: str) -> None:
    """Each non-uniform row's gap to its seed's uniform curve on `split` (points), with its paired se."""
    import numpy as np

    for seed in {r["seed"] for r in rows}:
        mine = [r for r in rows if r["seed"] == seed]
        curve = envelope([{"key": "teacher", "speedup": 1.0, "change": 0.0, split: 0.0},
                          *({**r, "change": r[split]} for r in mine if r["kind"] == "uniform")])
        for r in mine:
            if r["kind"] == "uniform":
                continue
            at = curve_at(curve, r["speedup"], split)
            fastest = curve[-1]
            if at is None and r["speedup"] > fastest["speedup"] and fastest["key"] != "teacher":
                # Faster than every uniform plan: the curve can reach no higher there than its fastest point,
                # so the gap to that point is a lower bound (positive: the point dominates the uniform recipe).
                at, r[f"{split}_gap_bound"] = (fastest[split], {fastest["key"]: 1.0}), True
            if at is None:
                r[f"{split}_gap"] = r[f"{split}_gap_se"] = None
                continue
            value, weights = at
            ref = sum(w * correct[split][k].astype(np.float64) for k, w in weights.items())
            d = (correct[split][r["key"]] - ref) * 100.0
            r[f"{split}_gap"] = round(r[split] - value, 3)
            r[f"{split}_gap_se"] = round(float(d.std(ddof=1) / math.sqrt(len(d))), 3)


def _gap_stats(pts: list[dict]) -> dict:
    """Speedup, test change and gap to the uniform curve of points across seeds: mean, std, se over seeds."""
    g = [p["test_gap"] for p in pts if p.get("test_gap") is not None]
    sd = statistics.stdev(g) if len(g) > 1 else None
    return {"seeds": len(pts), "speedup_mean": round(statistics.fmean(p["speedup"] for p in pts), 3),
            "speedups": [round(p["speedup"], 3) for p in pts],
            "test_change_mean": round(statistics.fmean(p["test"] for p in pts), 3),
            "test_gap_mean": _mean(g), "test_gap_std": round(sd, 3) if sd is not None else None,
            "test_gap_se_seeds": round(sd / math.sqrt(len(g)), 3) if sd is not None else None,
            "test_gap_se_images": [p.get("test_gap_se") for p in pts],
            "test_gap_is_bound": [bool(p.get("test_gap_bound")) for p in pts],  # beyond the fastest uniform plan
            "val_gap_mean": _mean([p.get("val_gap") for p in pts]),
            "above_by_2se": bool(g and sd and statistics.fmean(g) >= 2 * sd / math.sqrt(len(g)))}


def summary(rows: list[dict]) -> list[dict]:
    """Per kind and operating point (a seed's searched points by latency rank; a depth probe by its plan)."""
    out = []
    variants = sorted({r["variant"] for r in rows if r["kind"] == "searched"})
    for variant in variants:
        for kind in ("searched", "searched-kd", "random"):
            by_seed: dict[int, list[dict]] = {}
            for r in rows:
                if r["kind"] == kind and _variant_of(r, rows) == variant:
                    by_seed.setdefault(r["seed"], []).append(r)
            for k in range(max((len(v) for v in by_seed.values()), default=0)):
                pts = [sorted(v, key=lambda r: r["beside_speedup"])[k] for v in by_seed.values() if len(v) > k]
                out.append({"variant": variant, "kind": kind, "point": k, **_gap_stats(pts)})
    for tag in sorted({r["tag"] for r in rows if r["kind"] == "uniform-depth"}):
        out.append({"kind": "uniform-depth", "point": tag, **_gap_stats([r for r in rows if r.get("tag") == tag])})
    return out


def _variant_of(row: dict, rows: list[dict]) -> str | None:
    """A searched row's variant; a random or searched-kd row's is that of the searched point it stands beside."""
    if "beside" not in row:
        return row.get("variant")
    return next((r.get("variant") for r in rows if r.get("key") == row["beside"]), None)


def _mean(values: list) -> float | None:
    v = [x for x in values if x is not None]
    return round(statistics.fmean(v), 3) if v else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="fashion-mnist")
    parser.add_argument("--space", type=Path, default=REPO / "spaces" / "default.yaml")
    parser.add_argument("--device", type=Path, default=REPO / "device_profiles" / "local-1core.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, nargs="+", default=[24], help="explore trials of each search (one, "
                        "or one per --variant: a variant that spends compute elsewhere, e.g. on promotions, gets "
                        "fewer at equal total compute)")
    parser.add_argument("--refine", type=int, default=6, help="refinements of each search (2 per latency band)")
    parser.add_argument("--pool", type=int, default=30, help="random plans measured per seed (0: no random rows)")
    parser.add_argument("--rounds", type=int, default=7, help="side-by-side timing rounds")
    parser.add_argument("--results", type=Path, default=REPO / "results", help="where the cached teachers are")
    parser.add_argument("--scratch", type=Path, default=REPO / "results" / "bench-search-value")
    parser.add_argument("--variant", nargs="+", default=["default"],
                        help="names the search studies (search-<variant>-s<seed>) and the JSON; the uniform curve "
                        "and random pool are shared by every variant of a task")
    parser.add_argument("--search-space", type=Path, nargs="+",
                        help="each variant's space (default: --space); the uniform curve and the bench rows "
                        "always train with --space's refine budget")
    parser.add_argument("--uniform-ratios", type=float, nargs="*", default=[0.1, 0.4, 0.8],
                        help="uniform pruning ratios trained beside the space's own (the uniform curve)")
    parser.add_argument("--no-depth-probe", dest="depth_probe", action="store_false",
                        help="skip the uniform plans with removed blocks")
    parser.add_argument("--depth-widths", type=float, nargs="+", default=list(DEPTH_WIDTHS),
                        help="the uniform widths the depth probe removes every removable block at (each a ratio "
                        "of the uniform curve)")
    parser.add_argument("--depth-sets", nargs="+", default=["all"], metavar="BLOCKS",
                        help="the block sets the depth probe removes: 'all' (every removable block) or blocks "
                        "joined by '+' (stages.0.1+stages.1.1)")
    parser.add_argument("--no-search", dest="search", action="store_false",
                        help="no search studies: only the uniform curve and the depth probe (a recipe probe)")
    parser.add_argument("--refine-epochs", type=float, help="refine budget (epochs over the whole training set) "
                        "for every row and the searches' own refinements, instead of the space's")
    parser.add_argument("--int8-curve", action=argparse.BooleanOptionalAction, default=True,
                        help="train the int8 uniform plans too (on local-1core they are slower than fp32 once pruned)")
    parser.add_argument("--fp32-curve", action=argparse.BooleanOptionalAction, default=True,
                        help="train the fp32 uniform plans (where int8 pays at every ratio, as on the ResNet-18 "
                        "task, the int8 plans alone are the curve)")
    parser.add_argument("--recipe-rows", action=argparse.BooleanOptionalAction, default=True,
                        help="each searched structure again with the baselines' T and alpha")
    parser.add_argument("--train-only", action="store_true", help="train the seeds' rows, then stop (several such "
                        "processes, one per seed, can run at once; a last run without it times and reports)")
    parser.add_argument("--stage", choices=("search", "rows"), help="with --train-only: train only the searches, "
                        "or only the bench rows (two processes can then share one seed; rows beside searched "
                        "points still need the searches)")
    parser.add_argument("--study-rows", action=argparse.BooleanOptionalAction, default=True,
                        help="also time and score the uniform plans each search refined itself (the bench's own "
                        "uniform rows are the curve either way)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    spaces = args.search_space or [args.space]
    if len(spaces) not in (1, len(args.variant)):
        parser.error(f"--search-space: give one space or one per --variant ({len(args.variant)}), got {len(spaces)}")
    args.search_space = spaces * len(args.variant) if len(spaces) == 1 else spaces
    if len(args.trials) not in (1, len(args.variant)):
        parser.error(f"--trials: give one count or one per --variant ({len(args.variant)}), got {len(args.trials)}")
    args.trials = args.trials * len(args.variant) if len(args.trials) == 1 else args.trials
    if args.stage and not args.train_only:
        parser.error("--stage: only with --train-only (the report needs every stage)")
    return run(args)


def run(args) -> int:
    import numpy as np

    from search.config import load_profile
    from search.measure.accuracy import onnx_correct
    from search.tasks.arrays import dataset_arrays
    from search.tasks.sealed import seal_test

    label = "+".join(args.variant)
    out = args.out or REPO / "benchmarks" / "results" / f"search-value-{args.task}-{label}.json"
    scratch = (args.scratch / args.task).resolve()
    share_teachers(scratch, args.results.resolve())
    task, seal = seal_test(load_task(args.task, args.results))  # test stays shut until the report
    if seal is None:
        raise BenchError(f"{args.task}: no test split to report on")
    state_path = scratch / f"state-{label}.json"  # the variants of one run are re-timed side by side
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    result = header("bench_search_value.py", None)
    result.update(task=args.task, variant=args.variant, space=shown(args.space),
                  search_space=[shown(p) for p in args.search_space], device=shown(args.device), seeds=args.seeds,
                  trials=args.trials, refine=args.refine, pool=args.pool, rounds=args.rounds, kd=KD,
                  uniform_ratios=args.uniform_ratios, search=args.search,
                  depth_widths=args.depth_widths if args.depth_probe else [],
                  depth_sets=args.depth_sets if args.depth_probe else [])

    def save() -> None:
        state_path.write_text(json.dumps(state))

    if args.refine_epochs:  # one space file for the searches and the bench rows: the same refine budget
        args.space = _with_refine(scratch, args.space, args.refine_epochs)
        args.search_space = [_with_refine(scratch, p, args.refine_epochs) for p in args.search_space]
        result.update(refine_epochs=args.refine_epochs, space_used=shown(args.space),
                      search_space_used=[shown(p) for p in args.search_space])
    rows: list[dict] = []
    beside = bool(args.pool or args.recipe_rows)  # bench rows that stand beside searched points
    for seed in args.seeds:
        searched = [] if not args.search or (args.stage == "rows" and not beside) else [
            r for v, sp, n in zip(args.variant, args.search_space, args.trials, strict=True)
            for r in searched_rows(scratch, seed, v, sp, n, args)]
        rows += searched + ([] if args.stage == "search" else bench_rows(task, scratch, seed, searched, args))
        if not args.train_only:
            result["rows"] = rows
            write_json(out, result)
    if args.train_only:
        return 0
    for r in rows:
        r["key"] = f"{r['study']}-t{r['trial']}"
    files = {r["key"]: onnx_file(scratch, r) for r in rows}
    reference = scratch / f"bench-s{args.seeds[0]}" / "reference.onnx"
    timed = retime(files, reference, load_profile(args.device), args.rounds, state.setdefault("timing", {}), save)
    # The decisions are taken (every plan chosen and trained on val); now the held-out split, once.
    test_x, test_y = dataset_arrays(seal.unseal())
    val_x, val_y = dataset_arrays(task.val)
    teacher = {"val": onnx_correct(reference, val_x, val_y), "test": onnx_correct(reference, test_x, test_y)}
    correct = {"val": {"teacher": teacher["val"]}, "test": {"teacher": teacher["test"]}}
    for r in rows:
        for split, (x, y) in (("val", (val_x, val_y)), ("test", (test_x, test_y))):
            c = onnx_correct(files[r["key"]], x, y)
            correct[split][r["key"]] = c
            r[split] = round(float((c.astype(np.float64) - teacher[split]).mean() * 100.0), 3)
        r.update(timed[r["key"]])
    for split in ("val", "test"):
        gaps(rows, correct, teacher, split)
    speed = {r["key"]: r["speedup"] for r in rows if r["kind"] == "searched"}
    for r in rows:  # a random or searched-kd row stands at its searched point's operating point
        r["beside_speedup"] = speed.get(r.get("beside", r["key"]), r["speedup"])
    result.update(rows=rows, summary=summary(rows),
                  teacher={"val": float(teacher["val"].mean()), "test": float(teacher["test"].mean())})
    table([[s.get("variant", "-"), s["kind"], str(s["point"]), str(s["seeds"]), f"{s['speedup_mean']:.2f}x",
            f"{s['test_change_mean']:+.2f}", _pm(s["test_gap_mean"], s["test_gap_std"]),
            "-" if s["val_gap_mean"] is None else f"{s['val_gap_mean']:+.2f}", "yes" if s["above_by_2se"] else "no"]
           for s in result["summary"]],
          ["variant", "kind", "point", "seeds", "speedup", "test change", "test gap to uniform", "val gap", ">= 2 se"])
    write_json(out, result)
    return 0


def _with_refine(scratch: Path, space: Path, epochs: float) -> Path:
    """`space` with its refine budget set to `epochs` over the whole training set, written under `scratch`."""
    import yaml

    data = yaml.safe_load(Path(space).read_text())
    data["distillation"]["refine"] = {"epochs": epochs}
    out = scratch / f"{Path(space).stem}-refine{epochs:g}ep.yaml"
    text = f"# {shown(space)} with refine: {{epochs: {epochs:g}}} (bench_search_value.py)\n" + yaml.safe_dump(
        data, sort_keys=False)
    if not out.is_file() or out.read_text() != text:
        out.write_text(text)
    return out


def _pm(mean: float | None, sd: float | None) -> str:
    return "-" if mean is None else f"{mean:+.2f}" + ("" if sd is None else f" ± {sd:.2f}")


if __name__ == "__main__":
    cli(main)
