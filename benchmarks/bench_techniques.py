"""Technique comparison: each compression technique alone vs the fp32 teacher, and (optionally) an hwsearch
front, all scored and timed side by side in one run.

Rows, all on the Fashion-MNIST teacher and the local-1core profile:
  (a) the fp32 teacher;
  (b) distillation alone: the teacher's architecture at 50% uniform width (the teacher pruned 50% uniformly,
      channel counts rounded to the profile's channel_multiple, then every weight RE-INITIALISED) distilled
      from scratch (T=4, alpha=0.5: the search's own baselines);
  (c) pruning alone: uniform 50% pruning of the teacher fine-tuned with plain cross-entropy (alpha=1), fp32;
  (d) ONNX Runtime uniform int8 PTQ of the teacher alone (static QDQ, u8 activations, per-channel s8 weights,
      the space's calibration samples);
  (+) pruning + distillation, uniform 50%, fp32: the control that separates KD's share from pruning's;
  (e) with --study NAME: each feasible front trial, exported with `hwsearch export --verify` (its record's
      accuracy, latency and memory against a re-measurement: the deltas go in the JSON), then re-scored and
      RE-MEASURED here with the other rows.
(b), (c) and (+) get the same training budget; --ratio R sets their uniform ratio (default 0.5).
Every model: ONNX Runtime top-1 on the validation split (what the search selects on) and on the held-out
test split (the figure reported: the change against the teacher on the same test images, with the paired
standard error), then
`search.measure.runner.measure` (fresh processes, the profile's threads/warm-up/repeats, batch 1, the fp32
teacher interleaved in every round: speedup = 1 / same-round p50 ratio), peak memory (total, with ONNX
Runtime's ~10 MB fixed overhead), file size, training seconds. Writes benchmarks/results/techniques.json.

    .venv/bin/python benchmarks/bench_techniques.py [--quick | --full] [--study demo --results results]

--quick (the default): 1 epoch on 10,000 training images, 3 measurement rounds.
--full: 3 epochs on all 55,000 training images (the budget of spaces/default.yaml's refine), 5 rounds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import (
    REPO,
    BenchError,
    cli,
    fmt,
    header,
    load_task,
    mode_args,
    shown,
    study_front,
    table,
    time_model,
    write_json,
)

MODES = {"quick": {"epochs": 1.0, "max_samples": 10_000, "rounds": 3},
         "full": {"epochs": 3.0, "max_samples": None, "rounds": 5}}
KD = {"temperature": 4.0, "alpha": 0.5}  # search/study/sampling.py baseline_params
RATIO = 0.5  # the default uniform pruning ratio of (b), (c) and (+)


def reinitialise(model, seed: int) -> None:
    """Fresh weights for every layer that has them (PyTorch's default init, as the teacher started)."""
    import torch

    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def train_students(task, teacher_logits, space, profile, budget: dict, seed: int, threads: int | None,
                   work: Path, ratio: float) -> list[dict]:
    """(b), (c) and (+): one uniform structure, trained with the same budget; returns rows with ONNX paths."""
    from search.compress import distill, export_onnx, prune, prune_groups
    from search.study.setup import example_input

    example = example_input(task)
    groups = prune_groups(task.teacher, example, never_prune=space.pruning.never_prune)
    ratios = dict.fromkeys(groups, ratio)
    pct = f"{ratio:.0%}"
    d = space.distillation
    variants = [  # name, technique, re-initialise, temperature, alpha
        (f"KD only: {pct}-pruned width, from scratch", "distillation", True, KD["temperature"], KD["alpha"]),
        (f"pruning only: uniform {pct}, CE fine-tune", "pruning", False, 1.0, 1.0),
        (f"pruning + KD: uniform {pct}, fp32", "pruning+distillation", False, KD["temperature"], KD["alpha"]),
    ]
    rows = []
    for i, (name, technique, fresh, temperature, alpha) in enumerate(variants):
        pr = prune(task.teacher, example, ratios, channel_multiple=profile.channel_multiple,
                   importance=space.pruning.importance, never_prune=space.pruning.never_prune)
        student = pr.model
        if fresh:
            reinitialise(student, seed)
        print(f"training: {name} ...", flush=True)
        res = distill(student, task.train, teacher_logits=teacher_logits, temperature=temperature, alpha=alpha,
                      epochs=budget["epochs"], max_samples=budget["max_samples"], lr=d.lr, batch_size=d.batch_size,
                      seed=seed, num_threads=threads)
        path = export_onnx(student.cpu(), example_input(task, 3), work / f"student-{i}.onnx")
        rows.append({"name": name, "technique": technique, "path": path, "train_seconds": round(res.seconds, 2),
                     "train_steps": res.steps, "final_loss": round(res.final_loss, 4), "temperature": temperature,
                     "alpha": alpha, "reinitialised": fresh, "prune_ratio": ratio, "macs": pr.macs_after,
                     "params": pr.params_after, "skipped_layers": pr.skipped})
    return rows


def verified_export(view, number: int, out: Path) -> tuple[Path, dict]:
    """`hwsearch export --verify` for one trial: the model, and each metric's record, re-measurement and delta."""
    from search.inspect.export import VerifyError, export_trial

    try:
        result = export_trial(view, number, out, verify=True, warn=lambda _: None)
        model, report = result.model, result.verification
    except VerifyError as e:
        model, report = out / "model.onnx", e.report
    rows = {}
    for r in report.rows:
        delta = None if r.recorded is None or r.measured is None else r.measured - r.recorded
        rel = None if delta is None or not r.recorded else round(delta / r.recorded * 100.0, 3)
        rows[r.metric] = {"recorded": r.recorded, "measured": r.measured, "delta": delta, "delta_pct": rel,
                          "allowed": r.allowed, "ok": r.ok, **({"note": r.note} if r.note else {})}
    return model, {"passed": report.passed, "metrics": rows}


def study_rows(name: str, results: Path, task_name: str, work: Path) -> tuple[list[dict], dict]:
    """(e): each feasible front trial of an existing study, its ONNX file fetched from the artifact store;
    and what the whole search cost (every trial's stage seconds)."""
    view, front = study_front(name, results, task_name)
    rows = []
    for _, f in front.iterrows():
        rec = view.record(int(f["trial"]))
        print(f"export --verify: {name} trial {rec.number} ...", flush=True)
        path, verify = verified_export(view, rec.number, work / f"study-{name}" / f"trial-{rec.number}")
        train = rec.stage_seconds.get("distill")
        rows.append({"name": f"hwsearch {name} trial {rec.number}", "technique": "hwsearch front", "path": path,
                     "trial": rec.number, "train_seconds": None if train is None else round(train, 2),
                     "budget": rec.budget, "baseline": rec.baseline, "refined_from": rec.refined_from,
                     "mean_prune": f["mean_prune"], "quant_share": f["quant_share"],
                     "macs": rec.metrics.get("macs"), "params": rec.metrics.get("params"),
                     "study_val_accuracy": f["accuracy"], "study_test_accuracy": f["test_accuracy"],
                     "study_speedup": f["speedup"], "verify": verify})
    done = [r for r in view.trials if r.state == "COMPLETE"]
    cost = {"study": name, "complete_trials": len(done),
            "distill_seconds": round(sum(r.stage_seconds.get("distill", 0.0) for r in done), 1),
            "staged_seconds": round(sum(sum(r.stage_seconds.values()) for r in done), 1)}
    return rows, cost


def targets(rows: list[dict]) -> dict:
    """The headline targets, judged on the held-out test split over every row of this run: the fastest model
    within 1 point of the fp32 teacher's top-1 (target: 5x), and the fastest within 0.5 point of uniform int8
    PTQ's top-1 with its speedup over PTQ (target: 2x). Measured, not assumed: None when no row qualifies."""
    teacher = rows[0]
    ptq = next(r for r in rows if r["technique"] == "quantization")
    timed = [r for r in rows if r.get("speedup")]

    def fastest(floor: float) -> dict | None:
        ok = [r for r in timed if r["top1"] >= floor]
        best = max(ok, key=lambda r: r["speedup"]) if ok else None
        return None if best is None else {"name": best["name"], "speedup": best["speedup"], "top1": best["top1"],
                                          "change_pts": best["acc_change_pts"], "se": best["acc_change_se"]}

    within_teacher = fastest(teacher["top1"] - 0.01)
    within_ptq = fastest(ptq["top1"] - 0.005)
    over_ptq = within_ptq["speedup"] / ptq["speedup"] if within_ptq and ptq.get("speedup") else None
    return {"within_1pt_of_teacher": within_teacher, "reached_5x": bool(within_teacher and
                                                                        within_teacher["speedup"] >= 5),
            "ptq": {"speedup": ptq.get("speedup"), "top1": ptq["top1"]},
            "within_half_pt_of_ptq": within_ptq, "over_ptq": over_ptq, "reached_2x_over_ptq": bool(over_ptq and
                                                                                                  over_ptq >= 2)}


def _delta(m: dict | None) -> str:
    if not m or m["measured"] is None:
        return "-"
    return f"{m['recorded']:.4g} -> {m['measured']:.4g} ({m['delta_pct']:+.1f}%)" if m["delta_pct"] is not None \
        else f"{m['recorded']:.4g} -> {m['measured']:.4g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode_args(parser)
    parser.add_argument("--epochs", type=float, help="training epochs (overrides the mode)")
    parser.add_argument("--max-samples", type=int, help="training images (overrides the mode; 0 = all)")
    parser.add_argument("--rounds", type=int, help="measurement rounds per model (overrides the mode)")
    parser.add_argument("--study", help="also re-measure this hwsearch study's feasible front")
    parser.add_argument("--results", type=Path, default=REPO / "results", help="studies and cached teachers")
    parser.add_argument("--task", default="fashion-mnist")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--device", type=Path, default=REPO / "device_profiles" / "local-1core.yaml")
    parser.add_argument("--space", type=Path, default=REPO / "spaces" / "default.yaml",
                        help="lr, batch size, importance, calibration samples come from it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratio", type=float, default=RATIO, help="uniform pruning ratio of the trained rows")
    parser.add_argument("--torch-threads", type=int, help="torch threads for training (default: torch's)")
    parser.add_argument("--work", type=Path, default=REPO / "results" / "bench-techniques", help="models")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "techniques.json")
    args = parser.parse_args()
    settings = dict(MODES[args.mode or "quick"])
    for key in ("epochs", "max_samples", "rounds"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key) or None
    if not settings["rounds"] or settings["rounds"] < 1 or not settings["epochs"] or settings["epochs"] <= 0:
        raise BenchError("--rounds must be at least 1 and --epochs above 0")
    if not 0.0 < args.ratio < 1.0:
        raise BenchError(f"--ratio must be above 0 and below 1, got {args.ratio}")

    import torch

    from search.compress import export_onnx, quantizable_layers, quantize
    from search.config import load_profile, load_space
    from search.inspect.holdout import paired_change
    from search.measure.accuracy import onnx_accuracy, onnx_correct
    from search.study.context import cached_teacher_logits, example_input
    from search.tasks.arrays import calibration_sample, dataset_arrays

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    profile, space = load_profile(args.device), load_space(args.space)
    result = header("bench_techniques.py", args.mode or "quick")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    front, search_cost = study_rows(args.study, args.results, args.task, work) if args.study else ([], None)
    task = load_task(args.task, args.results, args.data_dir)

    teacher = export_onnx(task.teacher, example_input(task, 3), work / "teacher_fp32.onnx")
    logits = cached_teacher_logits(task, args.results / "teachers", torch.device("cpu"))
    info = task.teacher_info or {}
    rows = [{"name": "fp32 teacher", "technique": "none", "path": teacher, "train_seconds": None,
             "macs": info.get("macs"), "params": info.get("params")}]
    rows += train_students(task, logits, space, profile, settings, args.seed, args.torch_threads, work, args.ratio)
    start = time.perf_counter()
    calib = calibration_sample(task.train, space.quantization.calibration.samples, args.seed)
    ptq = quantize(teacher, work / "teacher_int8.onnx", dict.fromkeys(quantizable_layers(teacher), 8), calib,
                   per_channel=space.quantization.per_channel, method=space.quantization.calibration.method)
    rows.insert(3, {"name": "int8 PTQ only: uniform, ORT static QDQ", "technique": "quantization", "path": ptq.path,
                    "train_seconds": None, "build_seconds": round(time.perf_counter() - start, 2),
                    "macs": info.get("macs"), "params": info.get("params"), "skipped_layers": ptq.skipped})
    rows += front

    # Every accuracy first, then every timing: interleaving them would skew the latencies.
    x, y = dataset_arrays(task.val)
    tx, ty = dataset_arrays(task.test)
    correct = {}
    for i, r in enumerate(rows):
        r["val_top1"] = onnx_accuracy(r["path"], x, y)
        correct[i] = onnx_correct(r["path"], tx, ty)
        r["top1"] = float(correct[i].mean())  # held-out test: the reported figure
        r["file_mb"] = round(Path(r["path"]).stat().st_size / 1e6, 4)
    for i, r in enumerate(rows):
        change, se = paired_change(correct[i], correct[0])
        r["acc_change_pts"], r["acc_change_se"] = round(change, 3), round(se, 3)
        r["size_ratio"] = round(r["file_mb"] / rows[0]["file_mb"], 3)
    print(f"timing {len(rows)} models, {settings['rounds']} rounds each ...", flush=True)
    for r in rows:
        time_model(r, Path(r["path"]), teacher, settings["rounds"], profile)
        r["path"] = shown(r["path"])

    result["targets"] = targets(rows)
    result.update(task=args.task, profile=profile.name, space=shown(args.space), study=args.study,
                  settings={**settings, "prune_ratio": args.ratio, "kd": KD,
                            "channel_multiple": profile.channel_multiple,
                            "lr": space.distillation.lr, "batch_size": space.distillation.batch_size,
                            "val_images": len(y), "test_images": len(ty), "seed": args.seed,
                            "torch_threads": torch.get_num_threads()},
                  teacher={"top1": rows[0]["top1"], **{k: info.get(k) for k in ("params", "macs")}}, models=rows,
                  search_cost=search_cost)
    print()
    table([[r["name"], f"{r['val_top1'] * 100:.2f}%", f"{r['top1'] * 100:.2f}%",
            f"{r['acc_change_pts']:+.2f} ± {r['acc_change_se']:.2f}",
            fmt(r.get("p50_ms") and r["p50_ms"] * 1000, ".1f"), fmt(r.get("speedup"), ".2f") + "x",
            fmt(r.get("memory_total_mb"), ".1f"), f"{r['file_mb']:.3f}", fmt(r.get("train_seconds"), ".1f")]
           for r in rows],
          ["model", "val top-1", "test top-1", "test change (pts)", "p50 (us)", "speedup", "peak MB", "file MB",
           "train s"])
    print(f"test change: held-out top-1 points vs the fp32 teacher on the same images, ± paired standard error; "
          f"speedup: same-round p50 ratio to it, "
          f"{settings['rounds']} fresh-process rounds; peak MB includes ONNX Runtime's fixed overhead")
    if search_cost:
        print(f"study {args.study}'s whole search: {search_cost['complete_trials']} trials, "
              f"{search_cost['distill_seconds']:.0f} s distilling, {search_cost['staged_seconds']:.0f} s in all stages")
    checked = [r for r in rows if r.get("verify")]
    if checked:
        print("\nexport --verify of the front (recorded in the study -> re-measured now):")
        table([[r["name"], "pass" if r["verify"]["passed"] else "FAIL",
                *(_delta(r["verify"]["metrics"].get(k))
                  for k in ("val_accuracy", "test_accuracy", "latency_ms", "memory_mb"))]
               for r in checked], ["model", "verify", "val top-1", "test top-1", "latency ms", "memory MB"])
    for r in rows:
        if r.get("error"):
            print(f"timing failed for {r['name']}: {r['error']}")
    write_json(args.out, result)
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    cli(main)
