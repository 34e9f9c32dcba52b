"""Which sensitivity ranks trained outcomes better: BatchNorm re-estimation on training batches, or none.

For each `--bn-batches` value, the sensitivity table of the Fashion-MNIST teacher (`hwsearch sensitivity
--bn-batches N`, cached under results/sensitivity/). Then, for every trained explore trial of the given
finished studies (default: the sampler benchmark's 40-trial TPE and random studies, which sampled plans all
over the space), the plan's predicted accuracy drop under each table (the allocation's cost: each change's
drop floored at 0, summed) against the drop the trial showed after training (val). A table that ranks
trained outcomes better has the higher rank correlation (Spearman, Kendall); the per-study median guards
against one study's temperature/alpha draws dominating. It also reports the same for single pruning changes
alone (how far the untrained drop is from what training recovers). Writes benchmarks/results/bn-rank.json.

    .venv/bin/python benchmarks/bench_bn_rank.py [--bn-batches 0 4 16] [--from results/bench-samplers-40]
        [--studies tpe-s0 ... random-s2]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from _common import REPO, BenchError, cli, header, open_study, shown, table, write_json

STUDIES = tuple(f"{s}-s{i}" for s in ("tpe", "random") for i in range(3))


def correlations(predicted: list[float], observed: list[float]) -> dict:
    from scipy.stats import kendalltau, spearmanr

    if len(predicted) < 3:
        return {"n": len(predicted), "spearman": None, "kendall": None}
    return {"n": len(predicted), "spearman": round(float(spearmanr(predicted, observed).statistic), 4),
            "kendall": round(float(kendalltau(predicted, observed).statistic), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bn-batches", type=int, nargs="+", default=[0, 4, 16])
    parser.add_argument("--from", dest="source", type=Path, default=REPO / "results" / "bench-samplers-40")
    parser.add_argument("--studies", nargs="+", default=list(STUDIES))
    parser.add_argument("--space", type=Path, default=REPO / "spaces" / "default.yaml",
                        help="the space of the tables (its ratios and bit-widths must be the studies')")
    parser.add_argument("--device", type=Path, default=REPO / "device_profiles" / "local-1core.yaml")
    parser.add_argument("--results", type=Path, default=REPO / "results", help="where the cached teachers are")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bn-rank.json")
    args = parser.parse_args()
    from search.seeding.allocate import additive
    from search.seeding.standalone import sensitivity

    views = {name: open_study(name, args.source) for name in args.studies}
    for name, view in views.items():
        if view.task_spec != "fashion-mnist":
            raise BenchError(f"{name}: a {view.task_spec!r} study; the tables are of the fashion-mnist teacher")
    result = header("bench_bn_rank.py", None)
    tables, rows = {}, []
    for n in args.bn_batches:
        print(f"sensitivity with --bn-batches {n} ...", flush=True)
        s = sensitivity("fashion-mnist", args.space, args.device, results=args.results, bn_batches=n,
                        progress=True)
        tables[n] = s
        result.setdefault("tables", {})[str(n)] = {"seconds": s.seconds, "cached": s.cached, "key": s.key,
                                                   "teacher_accuracy": s.teacher_accuracy}
    for n, s in tables.items():
        per_study, pooled_p, pooled_o = {}, [], []
        for name, view in views.items():
            teacher = view.teacher["accuracy"]
            p, o = [], []
            for r in view.trials:
                if r.state != "COMPLETE" or not r.trained or r.budget == "refine" or not r.values:
                    continue
                pred = additive(s, view.study.trials[r.number].params)  # the allocation's cost of the plan
                if pred is not None:
                    p.append(pred.cost)
                    o.append(100 * (teacher - r.values[0]))
            per_study[name] = correlations(p, o)
            pooled_p += p
            pooled_o += o
        singles = [(r.accuracy_drop, r.latency_saved_frac) for r in s.rows if r.kind == "prune"]
        rows.append({"bn_batches": n, "pooled": correlations(pooled_p, pooled_o), "per_study": per_study,
                     "median_spearman": statistics.median(v["spearman"] for v in per_study.values()
                                                          if v["spearman"] is not None),
                     "median_kendall": statistics.median(v["kendall"] for v in per_study.values()
                                                         if v["kendall"] is not None),
                     "prune_single_drop_pts": {"median": round(statistics.median(d for d, _ in singles), 2),
                                               "max": round(max(d for d, _ in singles), 2)},
                     "seconds": s.seconds})
    result.update(source=shown(args.source), studies=args.studies, space=shown(args.space), rows=rows)
    table([[str(x["bn_batches"]), str(x["pooled"]["n"]), f"{x['pooled']['spearman']:.3f}",
            f"{x['pooled']['kendall']:.3f}", f"{x['median_spearman']:.3f}", f"{x['median_kendall']:.3f}",
            f"{x['prune_single_drop_pts']['median']:.1f}", f"{x['prune_single_drop_pts']['max']:.1f}",
            f"{x['seconds']:.0f}"] for x in rows],
          ["bn batches", "trials", "spearman", "kendall", "median spearman", "median kendall",
           "single prune drop median", "max", "table s"])
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    cli(main)
