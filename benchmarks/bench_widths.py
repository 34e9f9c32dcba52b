"""Where the latency goes: speedup of untrained pruned copies of the teacher, by uniform ratio and by unit.

Accuracy is not measured (nothing is trained): this is the latency side of the search space alone, what
hardware-first skipping reads before any training. Rows, on the Fashion-MNIST teacher and local-1core
(its channel_multiple rounds every pruned width): uniform pruning at each --ratios value over every
prunable unit; then each unit alone at --single (the others unpruned). Each model is exported and timed by
`search.measure.runner.measure` against the fp32 teacher in the same fresh-process rounds (speedup = 1 /
same-round p50 ratio). Writes benchmarks/results/widths.json.

    .venv/bin/python benchmarks/bench_widths.py [--quick | --full] [--ratios 0.5 0.6 0.7 0.8] [--single 0.7]

--quick (the default): 2 rounds per model. --full: 5 rounds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import REPO, BenchError, cli, fmt, header, load_task, mode_args, shown, table, time_model, write_json

ROUNDS = {"quick": 2, "full": 5}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode_args(parser)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--single", type=float, default=0.7, help="the ratio of the one-unit-at-a-time rows")
    parser.add_argument("--multiples", type=int, nargs="+",
                        help="channel multiples to compare for the uniform rows (default: the profile's), e.g. 8 16; "
                             "int8 copies of the uniform rows are timed too at the profile's multiple")
    parser.add_argument("--task", default="fashion-mnist")
    parser.add_argument("--results", type=Path, default=REPO / "results", help="cached teachers")
    parser.add_argument("--device", type=Path, default=REPO / "device_profiles" / "local-1core.yaml")
    parser.add_argument("--work", type=Path, default=REPO / "results" / "bench-widths", help="models")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "widths.json")
    args = parser.parse_args()
    if not all(0.0 < r < 1.0 for r in [*args.ratios, args.single]):
        raise BenchError("--ratios and --single must lie above 0 and below 1")
    rounds = ROUNDS[args.mode or "quick"]

    from search.compress import export_onnx, prune, prune_groups
    from search.config import load_profile
    from search.study.setup import example_input

    profile = load_profile(args.device)
    task = load_task(args.task, args.results)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    result = header("bench_widths.py", args.mode or "quick")
    example = example_input(task)
    units = list(prune_groups(task.teacher, example, never_prune=()))
    teacher = export_onnx(task.teacher, example_input(task, 3), work / "teacher_fp32.onnx")
    multiples = args.multiples or [profile.channel_multiple]
    cases = [(f"uniform {r:.0%}" + (f" at multiple {m}" if args.multiples else ""), dict.fromkeys(units, r), m, False)
             for m in multiples for r in args.ratios]
    if args.multiples:  # int8 (static QDQ) copies at the profile's multiple: does int8 pay once pruned?
        cases += [(f"uniform {r:.0%} at multiple {profile.channel_multiple}, int8", dict.fromkeys(units, r),
                   profile.channel_multiple, True) for r in args.ratios]
    cases += [(f"only {u} at {args.single:.0%}", {**dict.fromkeys(units, 0.0), u: args.single},
               profile.channel_multiple, False) for u in units]
    rows = []
    print(f"timing {len(cases)} pruned copies, {rounds} rounds each ...", flush=True)
    for i, (name, ratios, multiple, int8) in enumerate(cases):
        pr = prune(task.teacher, example, ratios, channel_multiple=multiple, importance="l2", never_prune=())
        path = export_onnx(pr.model.cpu(), example_input(task, 3), work / f"case-{i}.onnx")
        if int8:
            from search.compress import quantizable_layers, quantize
            from search.tasks.arrays import calibration_sample

            path = quantize(path, work / f"case-{i}-int8.onnx", dict.fromkeys(quantizable_layers(path), 8),
                            calibration_sample(task.train, 256, 0)).path
        row = {"name": name, "ratios": ratios, "channel_multiple": multiple, "int8": int8, "macs": pr.macs_after,
               "params": pr.params_after, "path": shown(path)}
        time_model(row, path, teacher, rounds, profile)
        rows.append(row)
    result.update(task=args.task, profile=profile.name, channel_multiple=profile.channel_multiple, rounds=rounds,
                  teacher_macs=(task.teacher_info or {}).get("macs"), models=rows)
    print()
    table([[r["name"], fmt(r.get("speedup"), ".2f") + "x", fmt(r.get("p50_ms") and r["p50_ms"] * 1000, ".1f"),
            f"{r['macs'] / 1e6:.2f}"] for r in rows], ["pruned copy (untrained)", "speedup", "p50 (us)", "MMACs"])
    write_json(args.out, result)
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    cli(main)
