"""What each bit-width runs as on this CPU: per op type (Conv, Gemm, MatMul with a constant weight), the
kernel ONNX Runtime executes and the latency against fp32.

Three small torch models, each three layers of one op type, are exported and quantized uniformly at 32, 16,
8 and 4 bits with `search.compress.quantize` (MatMul also at 8 bits quantized dynamically, int8-dynamic);
`search.compress.runs_as` reads what the session runs from its
optimised graph (the device profile's options, local-1core: 1 thread, graph optimisation "all"). Two mixed
plans per model show the neighbour effects: the middle layer at 16 between two 8s (does the 8 still run an
integer kernel?), and the middle layer at 32 between two 8s (does the session quantize it anyway?). The
uniform plans are also read at the lower optimisation levels (kernels only, not timed). Latency: one
in-process session per model with the profile's threads, every model timed in each round after the fp32
model (warm-up, then --repeats single runs, p50); speedup = 1 / median over rounds of the same-round p50
ratio. Writes benchmarks/results/precisions.json: per op type, the precisions that run as the kernel they
ask for ("runs_as_requested", the evidence a device profile's `precisions` cites) and every case's data.

    .venv/bin/python benchmarks/bench_precisions.py [--quick | --full]

--quick (the default): 5 rounds of 300 runs. --full: 15 rounds of 1,000.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from _common import REPO, cli, fmt, header, mode_args, shown, table, write_json

from search.compress.bits import BITS_TO_PRECISION, DYNAMIC_INT8, DYNAMIC_OPS
from search.compress.bits import VALID_BITS as BITS

ROUNDS = {"quick": (5, 300), "full": (15, 1000)}
LAYERS = ("l1", "l2", "l3")
MIXED = {"16 between 8s": {"l1": 8, "l2": 16, "l3": 8}, "32 between 8s": {"l1": 8, "l2": 32, "l3": 8}}
OTHER_LEVELS = ("extended", "basic", "disable")
DYNAMIC_CASE = "uniform 8 dynamic"


def models():
    """{op type: (torch module, input shape)}: three layers of that op type (the layers are named l1-l3)."""
    import torch
    from torch import nn

    class Convs(nn.Module):  # 3x3 convs, 16x16 maps: about 6 MMACs
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2, self.l3 = nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1), \
                nn.Conv2d(32, 32, 3, padding=1)

        def forward(self, x):
            x = torch.relu(self.l3(torch.relu(self.l2(torch.relu(self.l1(x))))))
            return x.mean(dim=(2, 3))

    class Mlp(nn.Module):  # Linear on a 2-D input exports as Gemm; on 3-D (tokens) as MatMul + Add
        def __init__(self, d: int, hidden: int) -> None:
            super().__init__()
            self.l1, self.l2, self.l3 = nn.Linear(d, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, d)

        def forward(self, x):
            y = self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))
            return y if y.dim() == 2 else y.mean(dim=1)

    torch.manual_seed(0)
    return {"Conv": (Convs().eval(), (16, 16, 16)), "Gemm": (Mlp(512, 1024).eval(), (512,)),
            "MatMul": (Mlp(256, 512).eval(), (16, 256))}


def session(path: Path, threads: int, level: str):
    import onnxruntime as ort

    from search.compress.runs import OPT_LEVELS

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[level])
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def p50_ms(sess, feed: dict, repeats: int) -> float:
    for _ in range(max(20, repeats // 10)):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode_args(parser)
    parser.add_argument("--device", type=Path, default=REPO / "device_profiles" / "local-1core.yaml")
    parser.add_argument("--work", type=Path, default=REPO / "results" / "bench-precisions", help="models")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "precisions.json")
    args = parser.parse_args()
    mode = args.mode or "quick"
    rounds, repeats = ROUNDS[mode]

    import torch

    from search.compress import compare, export_onnx, quantize, runs_as
    from search.config import load_profile

    torch.set_num_threads(1)
    profile = load_profile(args.device)
    threads, level = profile.runtime.threads, profile.runtime.graph_optimization
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    result = header("bench_precisions.py", mode)
    rng = np.random.default_rng(0)

    cases = []  # one per (op type, plan)
    print("exporting and quantizing ...", flush=True)
    for op, (model, shape) in models().items():
        fp32 = export_onnx(model, shape, work / f"{op.lower()}-fp32.onnx")
        calib = rng.random((32, *shape), dtype=np.float32)
        feed = {"input": rng.random((1, *shape), dtype=np.float32)}
        plans = [(f"uniform {b}", dict.fromkeys(LAYERS, b), ()) for b in BITS]
        plans += [(name, plan, ()) for name, plan in MIXED.items()]
        if op in DYNAMIC_OPS:  # int8 with activation scales computed at run time (a profile's int8-dynamic)
            plans.append((DYNAMIC_CASE, dict.fromkeys(LAYERS, 8), (op,)))
        for name, plan, dynamic in plans:
            path = work / f"{op.lower()}-{name.replace(' ', '-')}.onnx"
            q = quantize(fp32, path, plan, calib, dynamic_ops=dynamic)
            runs = runs_as(path, fp32, graph_optimization=level, threads=threads)
            case = {"op": op, "name": name, "plan": plan, "path": shown(path), "bytes": path.stat().st_size,
                    "quantized": q.quantized, "notes": q.notes,
                    "runs_as": {k: {"kernel": r.kernel, "op_types": list(r.op_types), "nodes": list(r.nodes)}
                                for k, r in runs.items()},
                    "compare": compare(plan, runs, q.dynamic), "feed": feed, "ratios": []}
            if name.startswith("uniform"):
                case["runs_as_at_level"] = {
                    lv: {k: r.kernel for k, r in runs_as(path, fp32, graph_optimization=lv, threads=threads).items()}
                    for lv in OTHER_LEVELS if lv != level}
            cases.append(case)

    refs = {c["op"]: c for c in cases if c["name"] == "uniform 32"}
    print(f"timing {len(cases)} models, {rounds} rounds of {repeats} runs ({threads} thread, '{level}') ...",
          flush=True)
    sessions = {id(c): session(REPO / c["path"], threads, level) for c in cases}
    for _ in range(rounds):
        for op, ref in refs.items():
            ref_ms = p50_ms(sessions[id(ref)], ref["feed"], repeats)
            for c in (c for c in cases if c["op"] == op):
                ms = ref_ms if c is ref else p50_ms(sessions[id(c)], c["feed"], repeats)
                c["ratios"].append(ms / ref_ms)
                c.setdefault("p50s_ms", []).append(round(ms, 5))
                c.setdefault("fp32_p50s_ms", []).append(round(ref_ms, 5))
    for c in cases:
        del c["feed"]
        c["p50_ms"] = round(statistics.median(c["p50s_ms"]), 5)
        c["fp32_p50_ms"] = round(statistics.median(c["fp32_p50s_ms"]), 5)
        c["speedup"] = round(1.0 / statistics.median(c["ratios"]), 3)
        c["ratios"] = [round(r, 4) for r in c["ratios"]]

    summary, honoured = {}, {}
    for op in refs:
        summary[op] = {}
        for b in BITS:
            c = next(c for c in cases if c["op"] == op and c["name"] == f"uniform {b}")
            kernels = sorted({r["kernel"] for r in c["runs_as"].values()})
            summary[op][str(b)] = {"runs_as": kernels[0] if len(kernels) == 1 else kernels,
                                   "as_requested": not any(v["differs"] for v in c["compare"].values()),
                                   "speedup": c["speedup"], "p50_ms": c["p50_ms"]}
        honoured[op] = [BITS_TO_PRECISION[b] for b in BITS if summary[op][str(b)]["as_requested"]]
        dyn = next((c for c in cases if c["op"] == op and c["name"] == DYNAMIC_CASE), None)
        if dyn is not None:
            ok = not any(v["differs"] for v in dyn["compare"].values())
            runs = dyn["runs_as"].values()
            summary[op][DYNAMIC_INT8] = {"runs_as": sorted({r["kernel"] for r in runs}),
                                         "op_types": sorted({t for r in runs for t in r["op_types"]}),
                                         "as_requested": ok, "speedup": dyn["speedup"], "p50_ms": dyn["p50_ms"]}
            honoured[op] += [DYNAMIC_INT8] if ok else []
    neighbours = {op: {name: {k: v["runs_as"] for k, v in c["compare"].items()}
                       for c in cases if c["op"] == op and (name := c["name"]) in MIXED} for op in refs}
    result.update(profile=profile.name, threads=threads, graph_optimization=level, batch=1, rounds=rounds,
                  repeats=repeats, runs_as_requested=honoured, summary=summary, neighbours=neighbours, cases=cases)

    print()
    table([[f"{c['op']} {c['name']}", ", ".join(f"{k}={v['runs_as']}" for k, v in c["compare"].items()),
            fmt(c["speedup"], ".2f") + "x", fmt(c["p50_ms"] * 1000, ".0f")] for c in cases],
          ["case", "runs as (l1, l2, l3)", "vs fp32", "p50 (us)"])
    print()
    for op, precisions in honoured.items():
        print(f"{op}: runs as requested: {', '.join(precisions)}")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    cli(main)
