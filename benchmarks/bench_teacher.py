"""Teacher benchmark: the built-in teachers' top-1 on their held-out data, size and training time.

The Fashion-MNIST teacher must reach 90% on the 10,000 test images (issue 2); it trains on first use
(about 10 minutes on 2 cores) and is cached under results/teachers/. Writes
benchmarks/results/teacher.json.

    .venv/bin/python benchmarks/bench_teacher.py [--tasks digits fashion-mnist] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from search.measure.accuracy import onnx_accuracy  # noqa: E402
from search.tasks import load_task  # noqa: E402
from search.tasks.arrays import dataset_arrays  # noqa: E402
from search.tasks.teacher import evaluate  # noqa: E402

TARGETS = {"digits": 0.95, "fashion-mnist": 0.90}


def bench(name: str, results: Path) -> dict:
    import tempfile

    from search.compress import export_onnx

    t0 = time.perf_counter()
    task = load_task(name, results_dir=results)
    load_s = time.perf_counter() - t0
    x, y = dataset_arrays(task.val)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(task.teacher, task.input_shape, Path(tmp) / "teacher.onnx")
        ort_acc = onnx_accuracy(path, x, y)
    torch_acc = evaluate(task.teacher, x, y)
    info = task.teacher_info
    return {"task": name, "val_samples": len(y), "top1_torch": torch_acc, "top1_onnxruntime": ort_acc,
            "target": TARGETS.get(name), "meets_target": ort_acc >= TARGETS.get(name, 0.0),
            "params": info.get("params"), "macs": info.get("macs"), "train_seconds": info.get("train_seconds"),
            "load_seconds": round(load_s, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TARGETS))
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "teacher.json")
    args = parser.parse_args()
    rows = [bench(t, args.results) for t in args.tasks]
    out = {"machine": platform.platform(), "cpu_count": __import__("os").cpu_count(), "teachers": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    for r in rows:
        print(f"{r['task']:<14} top-1 {r['top1_onnxruntime'] * 100:.2f}% (ORT) / {r['top1_torch'] * 100:.2f}% (torch) "
              f"on {r['val_samples']} held-out, target {r['target']:.0%}: {'OK' if r['meets_target'] else 'MISSED'}")
    return 0 if all(r["meets_target"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
