"""Shared fixtures. Teachers are cached in the repo's results/teachers (as a user's would be)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600,
            input: bytes | None = None) -> subprocess.CompletedProcess:
    """Run `python -m search ...` in a real subprocess and capture text output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "search", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=input)


@pytest.fixture(scope="session")
def digits_task():
    from search.tasks import load_task

    return load_task("digits", results_dir=RESULTS, progress=False)
