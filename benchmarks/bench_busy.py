"""A latency recorded during a busy study: is it the idle machine's?

A fixed model (the Fashion-MNIST teacher's ONNX, or --model) is measured by the local backend of a profile
(`--device`, local-1core) K times on an otherwise idle machine, then K times while a real study runs beside it
with `--workers` worker processes on this machine (pruning, exporting, quantizing, distilling, evaluating: every
stage of every worker), and K times under that same study without the measurement gate (runner.measure alone,
the control that shows the load is real). Each measurement is the backend's own (fresh-process rounds); the
figure compared is its raw p50, not the drift-corrected one. Run it alone.

    python benchmarks/bench_busy.py --out benchmarks/results/busy.json
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, BenchError, cli, header, shown, write_json


def reference_model(results: Path, work: Path) -> Path:
    """The fashion-mnist teacher, exported once (the cached teacher under `results`)."""
    from _common import load_task

    from search.compress.export import export_onnx
    from search.study.context import example_input

    task = load_task("fashion-mnist", results)
    return export_onnx(task.teacher, example_input(task, 3), work / "teacher.onnx")


def measure_k(model: Path, profile, k: int, gated: bool) -> list[float]:
    from search.measure.local import LocalBackend
    from search.measure.runner import measure

    out = []
    for _ in range(k):
        if gated:
            out.append(LocalBackend(profile).measure(model).latency.p50_ms)
        else:
            m = profile.measure
            rec = measure(str(model), rounds=m.rounds, threads=profile.runtime.threads, warmup=m.warmup,
                          repeats=m.repeats, batch=m.batch, timeout_s=m.timeout_s,
                          graph_optimization=profile.runtime.graph_optimization)
            out.append(rec["latency"]["p50_ms"])
    return out


def main() -> int:
    from search.config import load_profile

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=str(REPO / "device_profiles" / "local-1core.yaml"))
    p.add_argument("--model", type=Path, help="ONNX file to measure (default: the fashion-mnist teacher)")
    p.add_argument("--k", type=int, default=8, help="measurements per condition")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--warmup-s", type=float, default=40.0, help="let the study reach its trials first")
    p.add_argument("--results", type=Path, default=REPO / "results")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "busy.json")
    args = p.parse_args()
    profile = load_profile(args.device)
    if profile.measure.backend != "local":
        raise BenchError(f"--device {args.device}: a local profile is needed (the gate is this machine's)")
    result = {**header("bench_busy.py", None), "device": shown(args.device), "k": args.k, "workers": args.workers}
    with tempfile.TemporaryDirectory(prefix="hwsearch-busy-") as tmp:
        work = Path(tmp)
        model = args.model or reference_model(args.results, work)
        result["model"] = shown(model) if args.model else "the fashion-mnist teacher (fp32 ONNX)"
        idle = measure_k(model, profile, args.k, gated=True)
        (work / "teachers").symlink_to(args.results.resolve() / "teachers", target_is_directory=True)
        study = subprocess.Popen(
            [sys.executable, "-m", "search", "run", "--task", "fashion-mnist", "--space",
             str(REPO / "spaces" / "default.yaml"), "--device", args.device, "--trials", "40", "--workers",
             str(args.workers), "--study", "busy", "--results", str(work), "--no-seed-plans", "--no-uniform-curve",
             "--no-progress"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        try:
            time.sleep(args.warmup_s)
            if study.poll() is not None:
                raise BenchError(f"the study stopped early: {study.stderr.read()[-400:] if study.stderr else ''}")
            busy, ungated = [], []
            for _ in range(args.k):  # interleaved, so both see the same phases of the study
                busy += measure_k(model, profile, 1, gated=True)
                ungated += measure_k(model, profile, 1, gated=False)
            load = os.getloadavg()
        finally:
            os.killpg(study.pid, signal.SIGINT)
            try:
                study.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(study.pid, signal.SIGKILL)
                study.wait()
    med = {name: statistics.median(v) for name, v in (("idle", idle), ("busy", busy), ("ungated", ungated))}
    result.update(p50_ms={"idle": idle, "busy_gated": busy, "busy_ungated": ungated},
                  median_ms=med, load_avg_during=load,
                  busy_vs_idle=round(med["busy"] / med["idle"], 3),
                  ungated_vs_idle=round(med["ungated"] / med["idle"], 3),
                  worst_busy_vs_idle=round(max(busy) / med["idle"], 3),
                  target="busy (gated) within 10% of idle",
                  target_met=abs(med["busy"] / med["idle"] - 1) <= 0.10)
    print(f"idle {med['idle']:.4f} ms; during the study: gated {med['busy']:.4f} ms "
          f"({result['busy_vs_idle']:.3f}x, worst {result['worst_busy_vs_idle']:.3f}x), ungated "
          f"{med['ungated']:.4f} ms ({result['ungated_vs_idle']:.3f}x); load {load[0]:.2f}")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    cli(main)
