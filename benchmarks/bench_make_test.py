"""How long CI's `./.ci/run` (= `make test` under HWSEARCH_CI) takes on this machine, in a clone of HEAD.

    python benchmarks/bench_make_test.py --clone DIR [--fresh]

DIR is cloned from this checkout (or, when it exists, brought to HEAD); `--fresh` removes it first, so the
run includes `make setup` into a new .venv (what CI does); without it an existing clone's .venv is reused and
only the tests are timed. Writes benchmarks/results/make-test.json: wall seconds, pytest's summary line and
seconds, the commit, load averages before and after. Run it alone: the suite fills every core.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from _common import REPO, cli, header, write_json


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clone", type=Path, required=True, help="folder for the clone of HEAD")
    ap.add_argument("--fresh", action="store_true", help="clone anew (setup included in the time)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "make-test.json")
    args = ap.parse_args()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
    if args.fresh and args.clone.exists():
        shutil.rmtree(args.clone)
    if not args.clone.exists():
        subprocess.run(["git", "clone", "-q", str(REPO), str(args.clone)], check=True)
    subprocess.run(["git", "fetch", "-q", str(REPO), head], cwd=args.clone, check=True)
    subprocess.run(["git", "checkout", "-q", "--force", head], cwd=args.clone, check=True)
    result = header("bench_make_test.py", "fresh" if args.fresh else "reused-venv")
    result.update(commit=head, run="./.ci/run" + (" in a fresh clone (setup included)" if args.fresh else
                                                    " in a clone whose .venv exists (setup up to date)"))
    t0 = time.monotonic()
    r = subprocess.run(["./.ci/run"], cwd=args.clone, capture_output=True, text=True)
    wall = time.monotonic() - t0
    # `make test` runs pytest twice (the parallel suite, then the `timing` tests alone): every summary counts.
    runs = [ln.strip("= ") for ln in r.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    seconds = [float(m.group(1)) for ln in runs if (m := re.search(r"in ([\d.]+)s", ln))]
    summary = " + ".join(runs)
    args.out.with_suffix(".log").write_text(r.stdout[-200_000:] + r.stderr[-50_000:])
    result.update(exit_status=r.returncode, wall_s=round(wall, 1), pytest_summary=summary,
                  pytest_s=round(sum(seconds), 2) if seconds else None, cores=os.cpu_count())
    write_json(args.out, result)
    print(f"./.ci/run: exit {r.returncode}, {wall / 60:.1f} min wall; {summary.strip('= ')}")
    return 0 if r.returncode == 0 else 1


if __name__ == "__main__":
    cli(main)
