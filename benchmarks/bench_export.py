"""Exporters compared: the TorchScript exporter (the default) against dynamo, on the built-in CNN teachers and a
50%-pruned student of each: seconds per export (median of `--repeats`), whether the two files map the same layers
to the same op types (what per-layer bits and `runs_as` read), and the file sizes. Writes
benchmarks/results/export.json.

    .venv/bin/python benchmarks/bench_export.py [--tasks digits fashion-mnist] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, header, load_task, table, write_json


def _timed(model, example, path: Path, fast: bool, repeats: int) -> float:
    """Median seconds of `repeats` exports of `model` to `path` by one exporter."""
    from search.compress import export_onnx

    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        export_onnx(model, example, path, fast=fast)
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def bench(name: str, results: Path, repeats: int) -> list[dict]:
    from search.compress import weighted_nodes
    from search.compress.onnx_names import exporter_of
    from search.study.context import example_input

    task = load_task(name, results)
    example = example_input(task, 3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, model in (("teacher", task.teacher.eval()), ("pruned 50%", _pruned(task, example))):
            row = {"task": name, "model": label}
            for fast in (True, False):
                tag = "torchscript" if fast else "dynamo"
                path = Path(tmp) / f"{tag}.onnx"
                s = _timed(model, example, path, fast, repeats)
                row[f"{tag}_s"] = round(s, 3)
                row[f"{tag}_kb"] = round(path.stat().st_size / 1024, 1)
                row[f"{tag}_wrote"] = exporter_of(path)
                row[f"{tag}_layers"] = {k: [n.op_type for n in v] for k, v in weighted_nodes(path).items()}
            row["same_layers"] = row["torchscript_layers"] == row["dynamo_layers"]
            row["speedup"] = round(row["dynamo_s"] / row["torchscript_s"], 1)
            for tag in ("torchscript", "dynamo"):
                row[f"{tag}_layers"] = len(row[f"{tag}_layers"])
            rows.append(row)
    return rows


def _pruned(task, example):
    """Every output-channel group of the teacher at 50% (the uniform baseline's structure)."""
    from search.compress import prune, prune_groups

    groups = prune_groups(task.teacher, example)
    return prune(task.teacher, example, {g: 0.5 for g in groups}, channel_multiple=8).model.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["digits", "fashion-mnist"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", type=Path, default=REPO / "results", help="where the cached teachers are")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "export.json")
    args = ap.parse_args()
    result = header("bench_export.py", None)
    rows = [r for name in args.tasks for r in bench(name, args.results, args.repeats)]
    result["rows"] = rows
    table([[r["task"], r["model"], f"{r['torchscript_s']:.2f}", f"{r['dynamo_s']:.2f}", f"{r['speedup']}x",
            str(r["same_layers"]), f"{r['torchscript_kb']}/{r['dynamo_kb']}"] for r in rows],
          ["task", "model", "torchscript s", "dynamo s", "faster", "same layers", "KB ts/dynamo"])
    write_json(args.out, result)
    return 0 if all(r["same_layers"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
