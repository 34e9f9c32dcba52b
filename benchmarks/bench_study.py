"""A whole study as a user runs it, timed, with its front under the validation/test protocol.

    python benchmarks/bench_study.py demo --fresh-clone   # `make demo` on a fresh clone of HEAD: setup included
    python benchmarks/bench_study.py demo                 # the demo's study in this checkout (results/demo)
    python benchmarks/bench_study.py thorough             # the published study (spaces/thorough.yaml)
    python benchmarks/bench_study.py resnet18             # the realistic-size teacher (fashion-mnist-resnet18)
    python benchmarks/bench_study.py lm                   # the small language model on real text (wordnet-lm)

Writes benchmarks/results/study-<preset>.json: wall seconds, the longest silence in the log (seconds
between two lines), counts, the teacher's val and test top-1, and every front point with val top-1, test
top-1, the test change against the teacher with its paired standard error and verdict, speedup, size,
applied pruning and the share of layers that run integer kernels. README's Results rows cite this file.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from _common import REPO, BenchError, cli, header, open_study, shown, table, write_json


@dataclass(frozen=True)
class Preset:
    study: str
    run: tuple[str, ...]  # hwsearch run arguments
    make: str | None = None  # the make target that runs the same study (for --fresh-clone)


PRESETS = {
    # the same command as `make demo` (Makefile: TRIALS 20, REFINE 2)
    "demo": Preset("demo", ("--task", "fashion-mnist", "--space", "spaces/default.yaml", "--device",
                            "device_profiles/local-1core.yaml", "--trials", "20", "--refine", "2"), make="demo"),
    "thorough": Preset("thorough", ("--task", "fashion-mnist", "--space", "spaces/thorough.yaml", "--device",
                                    "device_profiles/local-1core.yaml", "--trials", "24", "--refine", "4")),
    # the realistic-size teacher (ResNet-18 at half width, ~1.2 ms): README's headline
    "resnet18": Preset("resnet18", ("--task", "fashion-mnist-resnet18", "--space", "spaces/default.yaml", "--device",
                                    "device_profiles/local-1core.yaml", "--trials", "14", "--refine", "1",
                                    "--seed-plans")),
    # the small language model on real text (wordnet-lm): per-token KD, head/MLP/width pruning, int8/int4 MatMul;
    # local-1core with budgets the language model can meet (benchmarks/profiles/local-1core-lm.yaml says why)
    "lm": Preset("lm", ("--task", "wordnet-lm", "--space", "spaces/language-model.yaml", "--device",
                        "benchmarks/profiles/local-1core-lm.yaml", "--trials", "16", "--refine", "3")),
    # the BERT-style encoder on real text (wordnet-supersense, two inputs: ids and attention mask) in the same
    # transformer space and budgets (its 7.6 MB teacher breaks local-1core's 2 MB model budget too)
    "text": Preset("text", ("--task", "wordnet-supersense", "--space", "spaces/language-model.yaml", "--device",
                            "benchmarks/profiles/local-1core-lm.yaml", "--trials", "16", "--refine", "3")),
}


def _timed(cmd: list[str], cwd: Path, log: Path) -> tuple[float, float, int]:
    """Run `cmd` with stdout+stderr into `log` (not a terminal, as under nohup or CI); (wall s, longest
    gap between two output lines in s, exit status)."""
    gaps = [0.0]
    last = [time.monotonic()]
    t0 = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def pump() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                now = time.monotonic()
                gaps[0] = max(gaps[0], now - last[0])
                last[0] = now
                out.write(line)
                out.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        rc = proc.wait()
        reader.join()
    return time.monotonic() - t0, max(gaps[0], time.monotonic() - last[0]), rc


def _front_rows(view) -> list[dict]:
    def num(v: float, digits: int = 4) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), digits)

    rows = []
    for r in view.front.to_dict("records"):
        rows.append({"trial": int(r["trial"]), "val_top1": num(r["accuracy"], 5), "val_change": num(r["acc_change"]),
                     "test_top1": num(r["test_accuracy"], 5), "test_change": num(r["test_change"]),
                     "test_se": num(r["test_se"]), "test_verdict": r["test_verdict"],
                     "speedup": num(r["speedup"], 3), "latency_ms": num(r["latency_ms"], 5),
                     "size_ratio": num(r["size_ratio"], 3), "mean_prune_applied": num(r["mean_prune"], 3),
                     "quant_share_runs": num(r["quant_share"], 3), "baseline": r["baseline"],
                     "refined": bool(r["refined"])})
    return rows


def _time_commands(root: Path, study: str, front: list[dict]) -> list[dict]:
    """What the inspection commands cost on this study, as a user runs them after it (README's timings)."""
    fastest = min(front, key=lambda r: r["latency_ms"])["trial"] if front else 0
    with tempfile.TemporaryDirectory() as tmp:
        cmds = [["front", "--study", study], ["front", "--study", study, "--format", "csv"],
                ["plot", "--study", study],
                ["export", "--study", study, "--trial", str(fastest), "--out", tmp, "--verify"]]
        out = []
        for c in cmds:
            t0 = time.monotonic()
            r = subprocess.run([sys.executable, "-m", "search", *c], cwd=root, capture_output=True, text=True)
            lines = (r.stdout or r.stderr).strip().splitlines()
            out.append({"command": "hwsearch " + " ".join(c).replace(tmp, "DIR"),
                        "seconds": round(time.monotonic() - t0, 1), "exit": r.returncode,
                        "first_line": lines[0][:200] if lines else ""})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", choices=sorted(PRESETS))
    ap.add_argument("--fresh-clone", action="store_true",
                    help="clone HEAD into a temporary folder and time `make <target>` there (setup included)")
    ap.add_argument("--keep", action="store_true", help="do not rerun: report the existing study (no timing)")
    ap.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/study-<preset>.json)")
    args = ap.parse_args()
    preset = PRESETS[args.preset]
    result = header("bench_study.py", None)
    out = args.out or REPO / "benchmarks" / "results" / f"study-{args.preset}.json"
    log = out.with_suffix(".log")
    if args.fresh_clone:
        if not preset.make:
            raise BenchError(f"--fresh-clone: preset {args.preset!r} has no make target")
        where = Path(tempfile.mkdtemp(prefix="hwsearch-fresh-"))
        subprocess.run(["git", "clone", "-q", str(REPO), str(where / "repo")], check=True)
        root, cmd = where / "repo", ["make", preset.make]
        result["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                          text=True).stdout.strip()
    else:
        root, where = REPO, None
        cmd = [sys.executable, "-m", "search", "run", *preset.run, "--study", preset.study]
    result["run"] = " ".join(cmd) + (" (in a fresh clone of HEAD)" if args.fresh_clone else "")
    if not args.keep:
        if not args.fresh_clone:
            shutil.rmtree(REPO / "results" / preset.study, ignore_errors=True)
        wall, gap, rc = _timed(cmd, root, log)
        result.update(wall_s=round(wall, 1), longest_silence_s=round(gap, 1), exit_status=rc, log=shown(log))
        print(f"{result['run']}: {wall / 60:.1f} min, exit {rc}, longest silence {gap:.0f} s (log {shown(log)})")
        if rc != 0:
            write_json(out, result)
            raise BenchError(f"the run failed (exit {rc}); see {shown(log)}")
    view = open_study(preset.study, root / "results")
    df = view.all_trials
    complete = df[df.state == "COMPLETE"]
    result.update(study=preset.study, metric=view.metric_name, complete=len(complete),
                  failed=int((df.state == "FAIL").sum()),
                  feasible=int(complete.feasible.sum()), teacher={**view.teacher, "test": view.teacher_test},
                  front=_front_rows(view))
    # Seconds per stage and the share of trial time that is neither distillation nor evaluation (bench_stages.py's
    # table), read here because a fresh clone is deleted once reported.
    from bench_stages import stage_table

    result["stages"] = stage_table(view)
    trained = result["stages"]["trained (explore + refine)"]
    if trained.get("trials"):
        print(f"trained trials: {trained['trials']}, mean {trained['mean_wall_seconds']:.1f} s, non-training share "
              f"{trained['overhead_share']:.1%} (stages: {trained['mean_seconds']})")
    rows = [[str(r["trial"]), f"{r['val_top1']:.2%}", f"{r['test_top1']:.2%}" if r["test_top1"] else "-",
             f"{r['test_change']:+.2f} ± {r['test_se']:.2f}" if r["test_change"] is not None else "-",
             r["test_verdict"], f"{r['speedup']:.2f}x", f"{r['mean_prune_applied']:.0%}",
             f"{r['quant_share_runs']:.0%}", r["baseline"] or ("refined" if r["refined"] else "")]
            for r in result["front"]]
    table(rows, ["trial", "val", "test", "test change (pts)", "verdict", "speedup", "pruned", "int kernels", ""])
    result["commands"] = _time_commands(root, preset.study, result["front"])
    for c in result["commands"]:
        print(f"{c['seconds']:6.1f} s  exit {c['exit']}  {c['command']}")
    write_json(out, result)
    if where is not None:
        shutil.rmtree(where, ignore_errors=True)
    return 0


if __name__ == "__main__":
    cli(main)
