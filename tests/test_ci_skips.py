"""Under CI (HWSEARCH_CI) a test skipped for a missing dependency fails the run, unless it is allowed."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def _run(**env: str) -> subprocess.CompletedProcess:
    # Chromium hidden: PATH holds nothing, so the browser checks skip (their skipif is decided at collection).
    base = {k: v for k, v in os.environ.items() if k not in ("HWSEARCH_CI", "HWSEARCH_ALLOW_SKIPS")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_report.py::test_browser_check_catches_script_errors"],
                          cwd=REPO, env={**base, "PATH": "/nonexistent", **env}, capture_output=True, text=True,
                          timeout=300)


def test_a_skip_fails_under_ci_and_says_which_and_why():
    r = _run(HWSEARCH_CI="1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 test(s) skipped that CI must run" in r.stderr
    assert "test_browser_check_catches_script_errors: chromium is not installed" in r.stderr
    assert "SKIPPED" in r.stdout  # -ra: the reason in the summary too


def test_allowed_or_outside_ci_a_skip_passes():
    assert _run(HWSEARCH_CI="1", HWSEARCH_ALLOW_SKIPS="1").returncode == 0
    assert _run().returncode == 0
