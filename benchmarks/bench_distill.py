"""Distillation choices, decided by data: live teacher on augmented inputs vs cached logits; label smoothing.

Students are the Fashion-MNIST teacher pruned uniformly (every prunable layer, channel multiple 16, fp32),
then distilled with the space's refine budget (3 epochs on all 55,000 training images, lr 3e-3, batch 128,
T 4, alpha 0.5: the values a plan without sampled ones gets), one run per (ratio, seed):

  A. `cached`: the teacher's logits of the unaugmented images, computed once (what a study does today);
     `live-aug`: the teacher run on each batch after the augmentation it was trained with (random
     horizontal flips and one +-2 pixel shift per batch), the student sees the same batch.
  B. label smoothing: the shipped teacher was trained with label smoothing 0.05. A second teacher, same
     recipe with smoothing 0, is trained here (12 epochs); students pruned from each are distilled from
     their own teacher (the variant A favours) and compared on the drop below their teacher.

Top-1 of the PyTorch students (fp32: the ONNX file scores the same) on val and on the 10,000 test images; the
difference of two variants comes with its paired standard error over images (seeds averaged per image). The
choice of A (which variant B uses) is made on val; the test split is sealed (`search.tasks.sealed`) until the report.
Every training step runs inside the measurement gate (`search.measure.local.training_step`), so a study
measuring on this host meanwhile is not disturbed. Writes benchmarks/results/distill.json.

    .venv/bin/python benchmarks/bench_distill.py [--ratios 0.5 0.7] [--seeds 3] [--epochs 3] [--skip-smoothing]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
from _common import REPO, cli, header, load_task, table, write_json


def correct(model, x, y) -> np.ndarray:
    import torch

    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000]).argmax(-1) for i in range(0, len(x), 1000)])
    return (pred == y).numpy()


def paired(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float]:
    """(mean difference in points, its standard error): per test image, b's seed-mean minus a's."""
    d = np.mean(b, axis=0).astype(float) - np.mean(a, axis=0).astype(float)
    return 100 * float(d.mean()), 100 * float(d.std(ddof=1) / math.sqrt(len(d)))


def student_of(teacher, task, ratio: float):
    from search.compress import prune
    from search.compress.prune_graph import prunable_layers

    example = task.val.tensors[0][:2]
    layers = prunable_layers(teacher, example)
    return prune(teacher, example, {name: ratio for name in layers}, channel_multiple=16).model


def run(task, teacher, logits, ratio: float, seed: int, variant: str, args) -> dict:
    from search.compress import distill
    from search.measure.local import training_step

    student = student_of(teacher, task, ratio)
    live = variant == "live-aug"
    res = distill(student, task.train, teacher_logits=None if live else logits, teacher=teacher if live else None,
                  augment=task.augment if live else None, temperature=4.0, alpha=0.5, epochs=args.epochs,
                  lr=3e-3, batch_size=128, seed=seed, num_threads=args.threads, step_guard=training_step)
    val = correct(student, *task.val.tensors)
    print(f"  ratio {ratio} seed {seed} {variant}: val {val.mean():.2%} ({res.seconds:.0f} s)", flush=True)
    # The student is kept: the test split is read once, in the report, after every choice was made on val.
    return {"ratio": ratio, "seed": seed, "variant": variant, "val": float(val.mean()),
            "seconds": round(res.seconds, 1), "_val": val, "_student": student.eval()}


def score_test(rows: list[dict], task) -> None:
    for r in rows:
        if "_test" not in r:
            r["_test"] = correct(r["_student"], *task.test.tensors)
            r["test"] = float(r["_test"].mean())


def compare(rows: list[dict], a: str, b: str, ratio: float, key: str = "variant") -> dict:
    ra = sorted((r for r in rows if r[key] == a and r["ratio"] == ratio), key=lambda r: r["seed"])
    rb = sorted((r for r in rows if r[key] == b and r["ratio"] == ratio), key=lambda r: r["seed"])
    out: dict = {"ratio": ratio, "a": a, "b": b}
    splits = [s for s in ("val", "test") if all(f"_{s}" in r for r in ra + rb)]
    out["means"] = {v: {s: float(np.mean([r[s] for r in rr])) for s in (*splits, "seconds")}
                    for v, rr in ((a, ra), (b, rb))}
    for split in splits:
        diff, se = paired([r[f"_{split}"] for r in ra], [r[f"_{split}"] for r in rb])
        out.update({f"{split}_diff_pts": diff, f"{split}_se": se})
    diff, se = out[f"{splits[-1]}_diff_pts"], out[f"{splits[-1]}_se"]
    out["verdict"] = "b better" if diff > 2 * se else "a better" if diff < -2 * se else "within noise"
    return out


def no_smoothing_teacher(task, args):
    """The shipped recipe with label smoothing 0, trained here (every step inside the measurement gate)."""
    import torch

    from search.measure.local import training_step
    from search.tasks.builtin import BUILTIN_TASKS
    from search.tasks.data import fingerprint
    from search.tasks.teacher import train_teacher

    b = BUILTIN_TASKS["fashion-mnist"]
    data = b.load_data(None)
    recipe = dataclasses.replace(b.recipe, label_smoothing=0.0)
    path = args.results / "teachers" / f"fashion-mnist-nosmooth-{fingerprint(data)[:8]}.pt"
    model = b.spec.build()
    if path.is_file():
        model.load_state_dict(torch.load(path))
        return model.eval(), {"cached": str(path)}
    torch.set_num_threads(args.threads)
    model, meta = train_teacher(b.spec, recipe, data, label="fashion-mnist (no smoothing)",
                                device=torch.device("cpu"), progress=True, step_guard=training_step)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-smoothing", action="store_true", help="only part A")
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "distill.json")
    args = parser.parse_args()
    from search.compress.distillation import teacher_logits
    from search.tasks.sealed import seal_test

    result = header("bench_distill.py", None)
    task, seal = seal_test(load_task("fashion-mnist", args.results))  # read once, in the report
    teacher = task.teacher
    seeds = range(args.seeds)
    logits = teacher_logits(teacher, task.train)
    print("A. cached logits vs live teacher on augmented inputs", flush=True)
    rows = [run(task, teacher, logits, r, s, v, args)
            for r in args.ratios for s in seeds for v in ("cached", "live-aug")]
    # Decided on val (summed paired val difference over the ratios); test is opened only for the report.
    best = "live-aug" if sum(compare(rows, "cached", "live-aug", r)["val_diff_pts"] for r in args.ratios) > 0 \
        else "cached"
    t_val = correct(teacher, *task.val.tensors)
    result.update(budget={"epochs": args.epochs, "lr": 3e-3, "batch_size": 128, "temperature": 4.0, "alpha": 0.5},
                  augmentation=task.augment and str(task.augment.keywords.get("recipe")), decided_on="val")
    b = rows_b = None
    if not args.skip_smoothing:
        print(f"B. label smoothing 0.05 vs 0 in the teacher (students distilled {best})", flush=True)
        start = time.perf_counter()
        b = []
        plain, meta = no_smoothing_teacher(task, args)
        plain_logits = teacher_logits(plain, task.train)
        p_val = correct(plain, *task.val.tensors)
        rows_b = [dict(r, teacher="smooth-0.05") for r in rows if r["variant"] == best]
        rows_b += [dict(run(task, plain, plain_logits, r, s, best, args), teacher="smooth-0")
                   for r in args.ratios for s in seeds]
    # Every choice is made: the held-out split, once.
    seal.unseal()
    score_test(rows + (rows_b if b is not None else []), task)
    t_test = correct(teacher, *task.test.tensors)
    a = [compare(rows, "cached", "live-aug", r) for r in args.ratios]
    result.update(teacher={"label_smoothing": 0.05, "val": float(t_val.mean()), "test": float(t_test.mean())},
                  part_a={"runs": [_public(r) for r in rows], "compare": a, "chosen": best})
    if b is not None:
        b = [compare(rows_b, "smooth-0.05", "smooth-0", r, key="teacher") for r in args.ratios]
        p_test = correct(plain, *task.test.tensors)
        teacher_diff = paired([t_test], [p_test])
        result["part_b"] = {
            "teacher_smooth_0": {"val": float(p_val.mean()), "test": float(p_test.mean()), **meta,
                                 "seconds_here": round(time.perf_counter() - start, 1)},
            "teacher_test_diff_pts": teacher_diff[0], "teacher_test_se": teacher_diff[1],
            "runs": [_public(r) for r in rows_b if r["teacher"] == "smooth-0"], "compare": b}
    print()
    table([[f"{c['ratio']:g}", c["a"], c["b"], f"{c['means'][c['a']]['test']:.2%}", f"{c['means'][c['b']]['test']:.2%}",
            f"{c['test_diff_pts']:+.2f} ± {c['test_se']:.2f}", c["verdict"]] for c in a + (b or [])],
          ["ratio", "a", "b", "a test", "b test", "b - a (pts)", "verdict"])
    write_json(args.out, result)
    return 0


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


if __name__ == "__main__":
    cli(main)
