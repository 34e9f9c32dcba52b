"""Benchmark of the local measurement backend: round-to-round noise, drift correction, int8 vs fp32.

Measures the same model in N fresh-process rounds (each a separate `measure` call, as a study would) and
reports the coefficient of variation and the spread (max/min - 1) of the raw p50 and of the drift-corrected
p50 (same-round ratio to the fp32 reference x the first round's reference), under two conditions:
  idle    nothing of ours beside the measurement;
  loaded  a burner of ours on every allowed core (the measured one too) streaming 64 MB copies through
          memory, its duty cycle changing from round to round (LOAD_DUTIES: the kind of slow drift a shared
          machine has), each burner ending on its own after BURN_S seconds at most. In a first try on
          this host, a process merely spinning on the measured core moved p50 less than memory traffic.
Also the int8/fp32 speed ratio at batch 1 and the peak memory of both at batch 64.
Writes benchmarks/results/measure.json.

    .venv/bin/python benchmarks/bench_measure.py [--rounds 8] [--out benchmarks/results/measure.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from _measure_fixtures import models  # noqa: E402

from search.config.profile import DeviceProfile  # noqa: E402
from search.measure import get_backend  # noqa: E402

LOAD_DUTIES = (0.25, 1.0, 0.5, 0.0, 0.75, 1.0, 0.25, 0.5)  # busy share of each round's burner, in turn
BURN_S = 30.0  # a burner's own deadline: it cannot outlive a crashed benchmark by more
BURNER = """
import os, sys, time
import numpy as np
duty, deadline = float(sys.argv[1]), time.monotonic() + float(sys.argv[2])
os.sched_setaffinity(0, [int(sys.argv[3])])
src = np.ones(16 * 2**20, np.float32)
dst = np.empty_like(src)
while time.monotonic() < deadline:  # 20 ms periods: copying for duty of each, asleep for the rest
    end = time.monotonic() + 0.02 * duty
    while time.monotonic() < end:
        np.copyto(dst, src)
    time.sleep(0.02 * (1 - duty))
"""


@contextlib.contextmanager
def burner(duty: float | None):
    """A background load on every allowed core for the duration of one round (None or 0: no load)."""
    if not duty:
        yield
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", BURNER, str(duty), str(BURN_S), str(c)], env=env)
             for c in sorted(os.sched_getaffinity(0))]
    try:
        time.sleep(0.5)  # let them reach their duty cycle before the round starts
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values)


def rounds_of(candidate: Path, reference: Path, n: int, settings: dict, duties: tuple[float, ...] | None) -> dict:
    backend = get_backend(DeviceProfile(name="local-1core", runtime={"threads": 1}, measure=settings))
    recs = []
    for i in range(n):
        with burner(duties[i % len(duties)] if duties else None):
            start = time.perf_counter()
            recs.append((backend.measure(candidate, reference), time.perf_counter() - start))
    raw = [r.latency.p50_ms for r, _ in recs]
    corrected = [r.objective("p50") for r, _ in recs]
    return {"candidate": candidate.name, "reference": reference.name, "rounds": n,
            "raw_p50_ms": raw, "reference_p50_ms": [r.reference.p50_ms for r, _ in recs],
            "ratio_p50": [r.ratio("p50") for r, _ in recs], "corrected_p50_ms": corrected,
            "cv_raw_p50": cv(raw), "cv_corrected_p50": cv(corrected),
            "spread_raw": max(raw) / min(raw) - 1, "spread_corrected": max(corrected) / min(corrected) - 1,
            "load_duties": [duties[i % len(duties)] for i in range(n)] if duties else None,
            "seconds_per_measurement": statistics.fmean(s for _, s in recs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "measure.json")
    args = parser.parse_args()
    m = models()
    timing = {"warmup": 50, "repeats": 200, "batch": 1}
    load_before = os.getloadavg()
    conditions = {cond: [rounds_of(m[name], m["fp32"], args.rounds, timing, duties) for name in ("int8", "fp32")]
                  for cond, duties in (("idle", None), ("loaded", LOAD_DUTIES))}
    mem_backend = get_backend(DeviceProfile(name="local-1core", runtime={"threads": 1},
                                            measure={**timing, "memory_batch": 64}))
    fp32 = mem_backend.measure(m["fp32"], m["fp32"])
    int8 = mem_backend.measure(m["int8"], m["fp32"])
    result = {
        "what": "local backend, threads 1 (pinned), batch 1, 50 warm-up + 200 timed runs per model per round; "
                "idle, and loaded by a burner on the measured core whose duty cycle changes per round",
        "command": "python benchmarks/bench_measure.py" + (f" --rounds {args.rounds}" if args.rounds != 8 else ""),
        "device": fp32.device, "onnxruntime": fp32.ort_version,
        "load_average_before_after": [load_before, os.getloadavg()],
        "conditions": conditions,
        "spread_summary": {cond: {n["candidate"]: {"raw": n["spread_raw"], "corrected": n["spread_corrected"],
                                                    "cv_raw": n["cv_raw_p50"], "cv_corrected": n["cv_corrected_p50"]}
                                  for n in rows} for cond, rows in conditions.items()},
        "int8_vs_fp32": {"speedup_same_round": 1 / int8.ratio("p50"),
                         "p50_ms": {"fp32": fp32.latency.p50_ms, "int8": int8.latency.p50_ms},
                         "memory_batch": 64,
                         "memory_total_mb": {"fp32": fp32.memory_total_mb, "int8": int8.memory_total_mb},
                         "memory_model_mb": {"fp32": fp32.memory_model_mb, "int8": int8.memory_model_mb},
                         "ort_overhead_mb": fp32.memory_overhead_mb},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for cond, rows in conditions.items():
        for n in rows:
            print(f"{cond} {n['candidate']}: spread raw p50 {n['spread_raw']:.1%}, drift-corrected "
                  f"{n['spread_corrected']:.1%}; CV {n['cv_raw_p50']:.2%} raw, {n['cv_corrected_p50']:.2%} corrected "
                  f"over {n['rounds']} fresh rounds ({n['seconds_per_measurement']:.1f} s each)")
    s = result["int8_vs_fp32"]
    print(f"int8 vs fp32: {s['speedup_same_round']:.2f}x faster (same round); memory at batch 64 "
          f"{s['memory_total_mb']['int8']:.1f} vs {s['memory_total_mb']['fp32']:.1f} MB "
          f"(ORT overhead {s['ort_overhead_mb']:.1f} MB)")
    print(f"wrote {args.out}")
    worst = max(n["cv_corrected_p50"] for n in conditions["idle"])
    return 0 if worst <= 0.03 else 1


if __name__ == "__main__":
    sys.exit(main())
