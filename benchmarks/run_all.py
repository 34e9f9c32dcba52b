"""`make bench`: the quick version of every benchmark, one after the other (they time things: never in parallel)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUICK = [
    ["bench_teacher.py"],
    ["bench_measure.py", "--rounds", "5"],
]


def main() -> int:
    failed = []
    for script, *args in QUICK:
        print(f"== {script} {' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script), *args]).returncode != 0:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
