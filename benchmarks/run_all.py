"""`make bench`: the quick version of every benchmark, one after the other (they time things: never in parallel)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUICK = [
    ["bench_teacher.py"],
    ["bench_export.py"],
    ["bench_measure.py", "--rounds", "5"],
    ["bench_techniques.py", "--quick"],
    ["bench_samplers.py", "--quick"],
    ["bench_stages.py", "--quick", "--study", "demo"],
    ["bench_peers.py", "--quick"],
    ["bench_widths.py", "--quick"],
]
# A benchmark that reads what another command made is skipped, with the reason, when that is missing.
NEEDS = {"bench_stages.py": (HERE.parent / "results" / "demo" / "study.db", "run `make demo` first")}


def main() -> int:
    failed = []
    for script, *args in QUICK:
        print(f"== {script} {' '.join(args)}", flush=True)
        need = NEEDS.get(script)
        if need and not need[0].is_file():
            print(f"skipped: {need[0].relative_to(HERE.parent)} is missing ({need[1]})")
            continue
        if subprocess.run([sys.executable, str(HERE / script), *args]).returncode != 0:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
