"""A pool of boards: does a study's pace grow with the number of boards when measuring dominates?

Per pool size (`--boards 1 3`): that many agents, each a simulated board (benchmarks/_boards.py: its own network
namespace and a CPU quota of `--cpu` cores, so three fit on this 2-core machine), one remote profile listing them
(`measure.url` + `measure.pool`), and the same study: `--workers` worker processes on the digits task, a short
distillation budget (benchmarks/spaces/pool.yaml), no seeded plans. Trials per hour = finished trials over the
span from the first trial's start to the last one's end (setup excluded); the measurement's share of the trials'
stage time says whether measuring dominates. Needs root (cgroups, namespaces).

    python benchmarks/bench_pool.py --out benchmarks/results/pool.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _boards import boards, unavailable
from _common import REPO, BenchError, cli, header, shown, table, write_json

SPACE = REPO / "benchmarks" / "spaces" / "pool.yaml"
TOKEN = "bench-pool-token"


def profile_yaml(urls: list[str], args) -> str:
    pool = ", ".join(f"'{u}'" for u in urls[1:])
    return f"""name: pool-{len(urls)}
description: {len(urls)} simulated boards ({args.cpu:g} core each, own network namespace)
runtime: {{threads: 1}}
precisions: [fp32, int8]
measure: {{backend: remote, url: '{urls[0]}', pool: [{pool}], token_env: HWSEARCH_POOL_TOKEN, warmup: 20,
          repeats: {args.repeats}, batch: 1, timeout_s: 120, rounds: {args.rounds}, max_rounds: {args.rounds}}}
budgets: {{latency_ms: 1000.0, memory_mb: 2000.0, model_mb: 100.0}}
"""


def run_pool(n: int, scratch: Path, args) -> dict:
    import optuna

    from search.study.record import T_MEASUREMENT, T_STAGE_SECONDS

    token = scratch / "token"
    token.write_text(TOKEN + "\n")
    folder = scratch / f"pool-{n}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "teachers").symlink_to((Path(args.results) / "teachers").resolve(), target_is_directory=True)
    with boards(n, token, cpu=args.cpu, netns=not args.no_netns) as bs:
        profile = folder / "profile.yaml"
        profile.write_text(profile_yaml([b.url for b in bs], args))
        cmd = [sys.executable, "-m", "search", "run", "--task", "digits", "--space", str(SPACE), "--device",
               str(profile), "--trials", str(args.trials), "--workers", str(args.workers), "--study", "pool",
               "--results", str(folder), "--no-seed-plans", "--no-uniform-curve", "--no-progress"]
        print(f"pool of {n}: {len(bs)} boards up ({', '.join(b.url for b in bs)}), running the study", flush=True)
        started = time.monotonic()
        r = subprocess.run(cmd, cwd=REPO, env={**os.environ, "HWSEARCH_POOL_TOKEN": TOKEN}, capture_output=True,
                           text=True, timeout=args.timeout)
        wall = time.monotonic() - started
    if r.returncode != 0:
        raise BenchError(f"pool of {n}: the study failed (exit {r.returncode}): {r.stderr.strip()[-400:]}")
    study = optuna.load_study(study_name="pool", storage=f"sqlite:///{folder / 'pool' / 'study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    stages: dict[str, float] = {}
    for t in done:
        for k, v in (t.user_attrs.get(T_STAGE_SECONDS) or {}).items():
            stages[k] = stages.get(k, 0.0) + v
    total = sum(stages.values())
    by = Counter(t.user_attrs.get(T_MEASUREMENT, {}).get("backend", "?").removeprefix("remote ") for t in done)
    return {"boards": n, "trials": len(done), "failed": sum(t.state == optuna.trial.TrialState.FAIL
                                                             for t in study.trials),
            "span_s": round(span, 1), "study_wall_s": round(wall, 1),
            "trials_per_hour": round(len(done) / span * 3600, 1),
            "stage_seconds": {k: round(v, 1) for k, v in sorted(stages.items())},
            "measure_share": round(stages.get("measure", 0.0) / total, 3) if total else None,
            "trials_by_board": dict(by)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--boards", type=int, nargs="+", default=[1, 3], help="pool sizes to compare")
    p.add_argument("--workers", type=int, default=3, help="worker processes of each study")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--cpu", type=float, default=0.2, help="each board's CPU quota, in cores")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2, help="fresh-process rounds per measurement")
    p.add_argument("--no-netns", action="store_true", help="boards on loopback (CPU quota only)")
    p.add_argument("--results", default="results", help="where the cached digits teacher is")
    p.add_argument("--timeout", type=float, default=3600.0, help="per study, seconds")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pool.json")
    args = p.parse_args()
    if why := unavailable(not args.no_netns):
        raise BenchError(f"cannot simulate boards here: {why}")
    result = {**header("bench_pool.py", None), "workers": args.workers, "trials": args.trials, "cpu": args.cpu,
              "repeats": args.repeats, "rounds": args.rounds, "netns": not args.no_netns, "space": shown(SPACE),
              "pools": []}
    with tempfile.TemporaryDirectory(prefix="hwsearch-pool-") as tmp:
        for n in args.boards:
            result["pools"].append(run_pool(n, Path(tmp), args))
            print(result["pools"][-1], flush=True)
    base = next((r for r in result["pools"] if r["boards"] == min(args.boards)), None)
    for r in result["pools"]:
        r["speedup_vs_smallest"] = round(r["trials_per_hour"] / base["trials_per_hour"], 2) if base else None
    table([[str(r["boards"]), str(r["trials"]), f"{r['span_s']:.0f}", f"{r['trials_per_hour']:.0f}",
            f"{r['measure_share']:.0%}" if r["measure_share"] is not None else "-", f"{r['speedup_vs_smallest']:.2f}x"]
           for r in result["pools"]], ["boards", "trials", "span s", "trials/h", "measuring", "vs smallest"])
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    cli(main)
