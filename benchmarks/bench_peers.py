"""Peers benchmark: the models Microsoft Olive and onnx-neural-compressor pick for the Fashion-MNIST teacher,
next to the fp32 teacher, hwsearch's uniform int8 PTQ and (with --study) an hwsearch study's front, all
scored and timed by hwsearch's own timer in one run: one table and one plot.

Each peer runs its own search in its own virtual environment (benchmarks/peers/run_*.py; their pins
conflict with ours) on the same fp32 ONNX export and the same calibration images (256 training images).
Every model it returns is then scored here, in this process, under the study's protocol: the peers tune
on validation images (their accuracy-aware selection reads them, as a study's decisions read `val`), and
every row is reported on the held-out test split (10,000 images, never shown to a peer or a search): ONNX
Runtime top-1 and its change against the teacher with the paired standard error, then
`search.measure.runner.measure` (fresh processes, batch 1, one thread, p50 latency and the same-round ratio
to the fp32 teacher, peak memory) and file size. The peers' own reported metrics and search times are kept
beside ours. Writes benchmarks/results/peers.json and
the plot (top-1 vs speedup): results/peers/peers.html, and benchmarks/results/peers.png when Chromium is there.

    nice -n 19 bash benchmarks/peers/setup.sh           # once: the two peer environments (~3 GB)
    .venv/bin/python benchmarks/bench_peers.py [--quick | --full] [--study NAME [--results results]]

--quick (the default): 2,000 validation images to tune on, 3 rounds, Olive max_iter 4, onnx-neural-compressor 5
trials. --full: all 5,000 validation images, 5 rounds, Olive max_iter 10, onnx-neural-compressor 20 trials.
Both report on all 10,000 test images.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from _common import REPO, BenchError, cli, fmt, mode_args, shown, study_front, time_model

from search.config import load_profile
from search.measure.runner import describe_device

PEERS = REPO / "benchmarks" / "peers"

CALIBRATION_IMAGES = 256
PEER_TIMEOUT_S = 3600
MODES = {  # eval images, measurement rounds, Olive max_iter, onnx-neural-compressor max_trials
    "quick": {"eval_images": 2000, "rounds": 3, "olive_max_iter": 4, "onc_max_trials": 5},
    "full": {"eval_images": 5_000, "rounds": 5, "olive_max_iter": 10, "onc_max_trials": 20},
}
ONC_TOLERABLE_LOSS = 0.01


def prepare(work: Path, eval_images: int, task_name: str = "fashion-mnist"
            ) -> tuple[Path, Path, np.ndarray, np.ndarray, np.ndarray, dict, tuple]:
    """Export the fp32 teacher and write the .npz the peers read (validation images to tune on); return
    those arrays and the held-out test arrays every row is reported on."""
    from search.compress import export_onnx
    from search.study.context import example_input
    from search.tasks.builtin import load_builtin

    try:  # the shipped teacher, else the cache, else trained now
        task = load_builtin(task_name, results_dir=REPO / "results", progress=False)
    except Exception as e:  # UserError for missing data; anything else is just as fatal here
        raise BenchError(f"cannot load the task {task_name}: {' '.join(str(e).split())}") from None
    teacher = export_onnx(task.teacher, example_input(task, 3), work / "teacher_fp32.onnx")
    train_x = task.train.tensors[0].numpy()
    pick = np.sort(np.random.default_rng(0).choice(len(train_x), CALIBRATION_IMAGES, replace=False))
    calib = np.ascontiguousarray(train_x[pick], dtype=np.float32)
    x = np.ascontiguousarray(task.val.tensors[0].numpy()[:eval_images], dtype=np.float32)
    y = task.val.tensors[1].numpy()[:eval_images]
    data = work / "peers_data.npz"
    np.savez(data, calib_x=calib, eval_x=x, eval_y=y)
    test = (np.ascontiguousarray(task.test.tensors[0].numpy(), dtype=np.float32), task.test.tensors[1].numpy())
    return teacher, data, calib, x, y, task.teacher_info or {}, test


def run_peer(tool: str, script: str, extra: list[str], teacher: Path, data: Path, work: Path) -> dict:
    """Run one peer's search in its venv; return its result.json (or a status saying why there is none)."""
    python = PEERS / f".venv-{tool}" / "bin" / "python"
    if not python.exists():
        msg = f"{tool}: skipped, {shown(python.parent.parent)} is missing (run: bash benchmarks/peers/setup.sh)"
        print(msg)
        return {"status": "skipped", "reason": msg}
    out = work / tool
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = work / f"{tool}.log"
    cmd = [str(python), str(PEERS / script), "--model", str(teacher), "--data", str(data), "--out", str(out), *extra]
    print(f"{tool}: searching ... (log: {shown(log)})", flush=True)
    env = {**os.environ, "OLIVE_DISABLE_TELEMETRY": "1", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    with log.open("w") as fh:
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=PEER_TIMEOUT_S,
                                  cwd=out)
        except subprocess.TimeoutExpired:
            print(f"{tool}: failed, timed out after {PEER_TIMEOUT_S} s")
            return {"status": "failed", "reason": f"timed out after {PEER_TIMEOUT_S} s"}
    wall = time.perf_counter() - start
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    result_file = out / "result.json"
    if proc.returncode != 0 or not result_file.exists():
        reason = f"exit status {proc.returncode}: {lines[-1][:300] if lines else 'no output'}"
        print(f"{tool}: failed, {reason} (see {shown(log)})")
        return {"status": "failed", "reason": reason}
    result = json.loads(result_file.read_text())
    for m in result["models"]:
        m["path"] = str(out / m["path"])
    print(f"  {lines[-1]}")
    return {"status": "ok", "process_seconds": round(wall, 2), **result}


def score(name: str, tool: str, path: Path, x: np.ndarray, y: np.ndarray, test: tuple) -> dict:
    """Validation top-1 (what tuning saw) and held-out test top-1 (what is reported), with the per-image
    test answers kept for the paired standard error against the teacher."""
    from search.measure.accuracy import onnx_accuracy, onnx_correct

    correct = onnx_correct(path, *test)
    return {"name": name, "tool": tool, "path": shown(path), "val_top1": onnx_accuracy(path, x, y),
            "top1": float(correct.mean()), "_correct": correct, "file_mb": round(path.stat().st_size / 1e6, 4)}


def front_models(name: str, results: Path, work: Path, task: str) -> list[tuple[str, Path, dict]]:
    """Each feasible front trial of hwsearch study `name`, exported from its artifact store: (row name, model,
    what the study recorded). Scored and timed here like every other row, not taken from the study."""
    view, front = study_front(name, results, task)
    out = []
    for _, f in front.iterrows():
        n = int(f["trial"])
        model = view.export(n, work / f"study-{name}" / f"trial-{n}")
        recorded = {"trial": n, "study_val_accuracy": f["accuracy"], "study_test_accuracy": f["test_accuracy"],
                    "study_speedup": f["speedup"],
                    "mean_prune": f["mean_prune"], "quant_share": f["quant_share"]}
        out.append((f"hwsearch {name} trial {n}", model, recorded))
    return out


def write_plot(rows: list[dict], html: Path, png: Path) -> Path | None:
    """Top-1 vs speedup, one colour per tool: an HTML page (plotly, self-contained) and, when Chromium is
    installed, a PNG screenshot of it. Returns the PNG's path when one was written."""
    import plotly.graph_objects as go

    def legend(r: dict) -> str:  # our two reference rows apart from the front
        return r["name"] if r["tool"] == "hwsearch" else r["tool"]

    fig = go.Figure()
    for group in dict.fromkeys(legend(r) for r in rows):
        mine = [r for r in rows if legend(r) == group and not r.get("error")]
        fig.add_trace(go.Scatter(x=[r["speedup"] for r in mine], y=[r["top1"] * 100 for r in mine], mode="markers",
                                 name=group, text=[r["name"] for r in mine], marker={"size": 11},
                                 hovertemplate="%{text}<br>%{x:.2f}x, %{y:.2f}%<extra></extra>"))
    fig.update_layout(title="Fashion-MNIST teacher on local-1core: held-out test top-1 vs speedup (same-round p50)",
                      xaxis_title="speedup over the fp32 teacher (x)", yaxis_title="top-1 (%)", width=900, height=520,
                      template="plotly_white", legend={"orientation": "h", "y": -0.2})
    html.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(html, include_plotlyjs=True, full_html=True, config={"displayModeBar": False})
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return None
    png.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png}", "--window-size=920,540", html.resolve().as_uri()],
                   capture_output=True, timeout=120, check=False)
    return png if png.exists() else None


def print_table(rows: list[dict], teacher_top1: float) -> None:
    head = (f"{'model':<46} {'val':>7} {'test':>7} {'change +- se':>13} {'p50 ms':>8} {'speedup':>8} {'mem MB':>7} "
            f"{'file MB':>8} {'search s':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.get("error"):
            print(f"{r['name']:<46} {r['top1']:>7.4f}  timing failed: {r['error']}")
            continue
        print(f"{r['name']:<46} {r['val_top1']:>7.4f} {r['top1']:>7.4f} "
              f"{r['acc_change_pts']:+7.2f} {r['acc_change_se']:5.2f} {r['p50_ms']:8.4f} "
              f"{r['speedup']:7.2f}x {fmt(r.get('memory_total_mb'), '7.1f'):>7} {r['file_mb']:>8.3f} "
              f"{fmt(r.get('search_seconds'), '9.1f'):>9}")
    print(f"val: the images tuning saw; test: held out (10,000), change in points vs the fp32 teacher "
          f"({teacher_top1:.4f}) with the paired standard error; speedup: same-round p50 ratio to it")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode_args(parser)
    parser.add_argument("--task", default="fashion-mnist", choices=("fashion-mnist", "fashion-mnist-resnet18"))
    parser.add_argument("--study", help="also score and time this hwsearch study's feasible front")
    parser.add_argument("--results", type=Path, default=REPO / "results", help="where --study lives")
    parser.add_argument("--work", type=Path, default=REPO / "results" / "peers", help="models and logs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "peers.json")
    parser.add_argument("--replot", action="store_true", help="only redraw the plot from --out's rows")
    args = parser.parse_args()
    if args.replot:
        if not args.out.is_file():
            raise BenchError(f"--replot: {shown(args.out)} does not exist (run the benchmark first)")
        rows = json.loads(args.out.read_text())["models"]
        png = write_plot(rows, args.work / "peers.html", args.out.with_suffix(".png"))
        print(f"wrote {shown(args.work / 'peers.html')}" + (f" and {shown(png)}" if png else ""))
        return 0
    settings = MODES[args.mode or "quick"]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    front = front_models(args.study, args.results, work, args.task) if args.study else []
    load_before = os.getloadavg()

    teacher, data, calib, x, y, teacher_info, test = prepare(work, settings["eval_images"], args.task)
    budgets = {"olive": ("run_olive.py", ["--max-iter", str(settings["olive_max_iter"])]),
               "onc": ("run_onc.py", ["--max-trials", str(settings["onc_max_trials"]),
                                      "--tolerable-loss", str(ONC_TOLERABLE_LOSS)])}
    peers = {tool: run_peer(tool, script, extra, teacher, data, work) for tool, (script, extra) in budgets.items()}

    from search.compress import quantizable_layers, quantize

    start = time.perf_counter()
    ptq = work / "hwsearch_int8_ptq.onnx"
    quantize(teacher, ptq, {layer: 8 for layer in quantizable_layers(str(teacher))}, calib)
    ptq_seconds = time.perf_counter() - start

    # Every accuracy first, then every timing: interleaving them would skew the latencies.
    rows = [{**score("fp32 teacher", "hwsearch", teacher, x, y, test), "search_seconds": None},
            {**score("hwsearch uniform int8 PTQ (QDQ u8, per-ch.)", "hwsearch", ptq, x, y, test),
             "search_seconds": None, "build_seconds": round(ptq_seconds, 2)}]
    for res in peers.values():
        for m in res.get("models", []):
            row = score(m["name"], res["tool"], Path(m["path"]), x, y, test)
            rows.append({**row, "search_seconds": res["search_seconds"], "candidates": res.get("candidates"),
                         "peer_config": m.get("config"), "peer_metrics": m.get("peer_metrics"),
                         "peer_meets_goal": m.get("meets_tolerance")})
        res.pop("models", None)
    for name, model, recorded in front:
        rows.append({**score(name, "hwsearch front", model, x, y, test), "search_seconds": None,
                     "study": recorded})
    from search.inspect.holdout import paired_change

    teacher_top1 = rows[0]["top1"]
    for r in rows:
        change, se = paired_change(r["_correct"], rows[0]["_correct"])
        r["acc_change_pts"], r["acc_change_se"] = round(change, 3), round(se, 3)
        r["size_ratio"] = round(r["file_mb"] / rows[0]["file_mb"], 3)
    for r in rows:
        del r["_correct"]
    print(f"timing {len(rows)} models, {settings['rounds']} rounds each ...", flush=True)
    profile = load_profile(REPO / "device_profiles" / "local-1core.yaml")  # 1 thread, batch 1, 50 + 200 runs
    for r in rows:
        time_model(r, REPO / r["path"], teacher, settings["rounds"], profile)

    result = {
        "benchmark": "peers", "mode": args.mode or "quick",
        "command": " ".join(["python", "benchmarks/bench_peers.py", *sys.argv[1:]]),
        "machine": describe_device(), "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
        "versions": {"hwsearch": version("hwsearch"), "onnxruntime": version("onnxruntime"),
                     **{res["tool"]: res["version"] for res in peers.values() if res["status"] == "ok"}},
        "settings": {**settings, "calibration_images": CALIBRATION_IMAGES, "batch": 1, "threads": 1,
                     "onc_tolerable_loss": ONC_TOLERABLE_LOSS},
        "teacher": {"top1": teacher_top1, "val_top1": rows[0]["val_top1"], "params": teacher_info.get("params"),
                    "macs": teacher_info.get("macs")},
        "protocol": "peers tune on val (eval images); every row reports top1 on the held-out test split",
        "models": rows, "peers": peers,
    }
    result["study"] = args.study
    png = write_plot(rows, work / "peers.html", args.out.with_suffix(".png"))
    result["plot"] = shown(png) if png else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print_table(rows, teacher_top1)
    print(f"wrote {shown(args.out)}, plot {shown(work / 'peers.html')}" + (f" and {shown(png)}" if png else ""))
    return 0


if __name__ == "__main__":
    cli(main)
