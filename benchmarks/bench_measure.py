"""Benchmark of the local measurement backend: round-to-round noise, drift correction, int8 vs fp32.

Measures the same model in N fresh-process rounds (each a separate `measure` call, as a study would) and
reports the coefficient of variation of the raw p50 and of the drift-corrected p50 (same-round ratio to
the fp32 reference x a fixed baseline). Also the int8/fp32 speed ratio at batch 1 and the peak memory of
both at batch 64. Writes benchmarks/results/measure.json.

    .venv/bin/python benchmarks/bench_measure.py [--rounds 5] [--out benchmarks/results/measure.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from _measure_fixtures import models  # noqa: E402

from search.config.profile import DeviceProfile  # noqa: E402
from search.measure import get_backend  # noqa: E402


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values)


def rounds_of(candidate: Path, reference: Path, n: int, settings: dict) -> dict:
    backend = get_backend(DeviceProfile(name="local-1core", runtime={"threads": 1}, measure=settings))
    recs = []
    for _ in range(n):
        start = time.perf_counter()
        recs.append((backend.measure(candidate, reference), time.perf_counter() - start))
    raw = [r.latency.p50_ms for r, _ in recs]
    corrected = [r.objective("p50") for r, _ in recs]
    return {"candidate": candidate.name, "reference": reference.name, "rounds": n,
            "raw_p50_ms": raw, "reference_p50_ms": [r.reference.p50_ms for r, _ in recs],
            "ratio_p50": [r.ratio("p50") for r, _ in recs], "corrected_p50_ms": corrected,
            "cv_raw_p50": cv(raw), "cv_corrected_p50": cv(corrected),
            "spread_raw": max(raw) / min(raw) - 1, "spread_corrected": max(corrected) / min(corrected) - 1,
            "seconds_per_measurement": statistics.fmean(s for _, s in recs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "measure.json")
    args = parser.parse_args()
    m = models()
    timing = {"warmup": 50, "repeats": 200, "batch": 1}
    load_before = os.getloadavg()
    noise = [rounds_of(m[name], m["fp32"], args.rounds, timing) for name in ("int8", "fp32")]
    mem_backend = get_backend(DeviceProfile(name="local-1core", runtime={"threads": 1},
                                            measure={**timing, "memory_batch": 64}))
    fp32 = mem_backend.measure(m["fp32"], m["fp32"])
    int8 = mem_backend.measure(m["int8"], m["fp32"])
    result = {
        "what": "local backend, threads 1 (pinned), batch 1, 50 warm-up + 200 timed runs per model per round",
        "device": fp32.device, "onnxruntime": fp32.ort_version,
        "load_average_before_after": [load_before, os.getloadavg()],
        "noise": noise,
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
    for n in noise:
        print(f"{n['candidate']}: CV raw p50 {n['cv_raw_p50']:.2%}, "
              f"drift-corrected {n['cv_corrected_p50']:.2%} "
              f"over {n['rounds']} fresh rounds ({n['seconds_per_measurement']:.1f} s each)")
    s = result["int8_vs_fp32"]
    print(f"int8 vs fp32: {s['speedup_same_round']:.2f}x faster (same round); memory at batch 64 "
          f"{s['memory_total_mb']['int8']:.1f} vs {s['memory_total_mb']['fp32']:.1f} MB "
          f"(ORT overhead {s['ort_overhead_mb']:.1f} MB)")
    print(f"wrote {args.out}")
    worst = max(n["cv_corrected_p50"] for n in noise)
    return 0 if worst <= 0.03 else 1


if __name__ == "__main__":
    sys.exit(main())
