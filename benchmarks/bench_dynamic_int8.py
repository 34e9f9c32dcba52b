"""Which int8 keeps a transformer's accuracy: static QDQ (per calibration method and sample count) against
dynamic int8 on the MatMul layers, on the real-text task's BERT-style teacher.

The `wordnet-supersense` teacher (4 post-LN layers, width 128, 4 heads, over WordNet glosses) is exported once
and quantized with `search.compress.quantize` at 8 bits on every layer:
  static-<method>-<n>  static QDQ everywhere (uint8 activations, int8 per-channel weights), calibrated on the
                       first n training samples with MinMax, percentile or entropy (ONNX Runtime's calibrators);
  dynamic-matmul       the MatMul layers dynamic (a profile's int8-dynamic: DynamicQuantizeMatMul), the Gemm
                       layers (pooler, classifier) static MinMax on 256 samples.
Each is scored on val (what decides: the best static calibration replaces the spaces' default, MinMax on 256,
only when its val gain exceeds 2 paired standard errors) and then, once, on test, paired with the fp32 teacher
(change and its per-sample standard error). Latency: hwsearch's own timer, every model interleaved with the
fp32 teacher in --rounds fresh-process rounds, the median same-round ratio (local-1core: one thread). Writes
benchmarks/results/dynamic-int8.json.

    .venv/bin/python benchmarks/bench_dynamic_int8.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from _common import REPO, cli, fmt, header, load_task, shown, table, time_model, write_json

STATIC = [(m, n) for m in ("minmax", "percentile", "entropy") for n in (128, 512)] + [("minmax", 256)]
DEFAULT = "static-minmax-256"  # the shipped spaces' calibration: {samples: 256, method: minmax}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="wordnet-supersense")
    parser.add_argument("--device", type=Path, default=REPO / "device_profiles" / "local-1core.yaml")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--work", type=Path, default=REPO / "results" / "bench-dynamic-int8")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "dynamic-int8.json")
    args = parser.parse_args()

    import torch

    from search.compress import compare, export_onnx, quantize, runs_as
    from search.compress.onnx_names import weighted_nodes
    from search.config import load_profile
    from search.measure.accuracy import onnx_correct
    from search.tasks.arrays import dataset_arrays
    from search.tasks.inputs import rows, to_torch

    torch.set_num_threads(1)
    profile = load_profile(args.device)
    task = load_task(args.task, args.results)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    result = header("bench_dynamic_int8.py", None)
    (train_x, _), (val_x, val_y) = dataset_arrays(task.train), dataset_arrays(task.val)  # ids (and mask)
    fp32 = export_onnx(task.teacher, to_torch(rows(val_x, slice(0, 4))), work / "teacher-fp32.onnx")
    layers = list(weighted_nodes(fp32))
    bits = dict.fromkeys(layers, 8)
    rt = profile.runtime

    variants = [{"name": "fp32", "path": fp32}]
    for method, n in STATIC:
        print(f"quantizing: static {method}, {n} samples ...", flush=True)
        q = quantize(fp32, work / f"static-{method}-{n}.onnx", bits, rows(train_x, slice(0, n)), method=method)
        variants.append({"name": f"static-{method}-{n}", "kind": "static", "method": method, "samples": n,
                         "path": q.path, "q": q})
    q = quantize(fp32, work / "dynamic-matmul.onnx", bits, rows(train_x, slice(0, 256)), dynamic_ops={"MatMul"})
    variants.append({"name": "dynamic-matmul", "kind": "dynamic", "path": q.path, "q": q})

    ref_val = onnx_correct(fp32, val_x, val_y)
    val_scores = {}
    rows = []
    for v in variants:
        row = {"name": v["name"], "kind": v.get("kind", "fp32"), "method": v.get("method"),
               "samples": v.get("samples"), "file": shown(v["path"]), "bytes": Path(v["path"]).stat().st_size}
        val = onnx_correct(v["path"], val_x, val_y)
        val_scores[v["name"]] = val
        row["val_top1"] = round(float(val.mean()), 5)
        row["val_change_pts"] = round(100 * float((val - ref_val).mean()), 3)
        if "q" in v:
            runs = runs_as(v["path"], fp32, graph_optimization=rt.graph_optimization, threads=rt.threads)
            rec = compare(bits, runs, v["q"].dynamic)
            row["runs_as"] = {k: e["runs_as"] for k, e in rec.items()}
            row["op_types"] = sorted({t for r in runs.values() for t in r.op_types})
            row["dynamic_layers"] = sorted(v["q"].dynamic)
        rows.append(row)
        print(f"  {v['name']}: val {row['val_top1']:.2%} ({row['val_change_pts']:+.2f} pts)", flush=True)

    # Decided on val, before test is read: the best static calibration replaces the default only when it beats
    # it by more than 2 paired standard errors on val (a smaller gain is noise, not a reason to change).
    static = [r for r in rows if r["kind"] == "static"]
    best = max(static, key=lambda r: r["val_top1"])
    default = next(r for r in static if r["name"] == DEFAULT)
    diff = val_scores[best["name"]] - val_scores[DEFAULT]
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    switch = float(diff.mean()) > 2 * se
    chosen = best if switch else default
    result["calibration_default_on_val"] = {
        "method": chosen["method"], "samples": chosen["samples"], "val_top1": chosen["val_top1"],
        "best_on_val": best["name"], "gain_over_default_pts": round(100 * float(diff.mean()), 3),
        "gain_se_pts": round(100 * se, 3), "rule": "switch only when the gain exceeds 2 paired se on val"}
    print(f"calibration on val: best {best['name']} ({100 * diff.mean():+.2f} ± {100 * se:.2f} pts over "
          f"{DEFAULT}): {'switch to it' if switch else 'keep the default'}", flush=True)

    test_x, test_y = dataset_arrays(task.test)
    ref_test = onnx_correct(fp32, test_x, test_y)
    for v, row in zip(variants, rows, strict=True):
        t = onnx_correct(v["path"], test_x, test_y)
        d = t - ref_test
        row["test_top1"] = round(float(t.mean()), 5)
        row["test_change_pts"] = round(100 * float(d.mean()), 3)
        row["test_change_se_pts"] = round(100 * float(d.std(ddof=1) / math.sqrt(len(d))), 3)
    print(f"timing {len(rows)} models against the fp32 teacher, {args.rounds} rounds ...", flush=True)
    for v, row in zip(variants, rows, strict=True):
        time_model(row, Path(v["path"]), fp32, args.rounds, profile)

    result.update(task=args.task, device=profile.name, rounds=args.rounds, teacher=task.teacher_info,
                  layers=layers, rows=rows)
    table([[r["name"], f"{r['val_top1']:.2%}", f"{r['val_change_pts']:+.2f}", f"{r['test_top1']:.2%}",
            f"{r['test_change_pts']:+.2f} ± {r['test_change_se_pts']:.2f}", fmt(r.get("speedup"), ".2f") + "x",
            fmt(r.get("p50_ms"), ".3f")] for r in rows],
          ["variant", "val", "val change", "test", "test change (pts)", "vs fp32", "p50 ms"])
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    cli(main)
