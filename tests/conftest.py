"""Shared fixtures. Teachers are cached in the repo's results/teachers (as a user's would be)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
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


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM (a clean stop), then SIGKILL if it has not exited within 20 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="session")
def digits_task():
    from search.tasks import load_task

    return load_task("digits", results_dir=RESULTS, progress=False)


@pytest.fixture(scope="module")
def real_study():
    """The shared real study of tests/_inspect_fixtures.py (a module may define its own of the same name)."""
    from _inspect_fixtures import real_study_once

    return real_study_once()


@pytest.fixture(scope="module")
def view(real_study):
    from search.inspect import load_study

    return load_study(real_study.name, results=real_study.results)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    for cand in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (cand / "initdb").exists():
            return cand
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass(frozen=True)
class PgServer:
    """A real PostgreSQL server on loopback that a test can stop (as a failover or restart does) and start."""

    url: str
    pg_ctl: list[str]  # pg_ctl -D <data>, run as the server's user

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([*self.pg_ctl, "-m", mode, "-w", "stop"], check=True, capture_output=True)

    def start(self) -> None:
        subprocess.run([*self.pg_ctl, "-w", "start"], check=True, capture_output=True)


@pytest.fixture
def pg_server():
    """A real PostgreSQL server in a throw-away data folder (as 'postgres' when we are root), database hwsearch."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (make test installs Debian's postgresql)")
    base = Path(tempfile.mkdtemp(prefix="hwsearch-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = base / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-o",
              f"-p {port} -k {base} -c listen_addresses=127.0.0.1"]
    server = PgServer(f"postgresql://postgres@127.0.0.1:{port}/hwsearch", pg_ctl)
    server.start()
    try:
        subprocess.run([*as_user, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                        "hwsearch"], check=True, capture_output=True)
        yield server
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres(pg_server):
    """The URL of a real PostgreSQL database (see pg_server)."""
    return pg_server.url


def pytest_configure(config):
    _pin_xdist_worker()


def _pin_xdist_worker() -> None:
    """Under `pytest -n N`, worker i keeps its own share of the cores, and every process a test starts inherits
    it. Unpinned, every study a test starts sized its torch and ONNX Runtime threads to all cores, so the two
    workers ran four spinning threads on two cores (the digits teacher retrained in 63-86 s in the suite, 10-12 s
    pinned). The measurement gate stays host-wide: with a gate per worker, a study's measurement on one core ran
    beside the other worker's training on the other and was recorded 16-20% slow (export --verify then failed)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < count:
        return
    mine = cores[int(worker[2:]) % count::count]
    os.sched_setaffinity(0, mine)
    import torch

    torch.set_num_threads(len(mine))


# CI must not pass with reliability rows unchecked: under HWSEARCH_CI (set by .ci/run) a skipped test fails the
# run, unless HWSEARCH_ALLOW_SKIPS says a missing dependency is expected. `-ra` prints every skip's reason.
_SKIPPED: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append(f"{report.nodeid}: {reason.removeprefix('Skipped: ')}")


def pytest_sessionfinish(session, exitstatus):
    if _SKIPPED and os.environ.get("HWSEARCH_CI") and not os.environ.get("HWSEARCH_ALLOW_SKIPS"):
        print(f"\nCI: {len(_SKIPPED)} test(s) skipped that CI must run (set HWSEARCH_ALLOW_SKIPS=1 where a missing "
              "dependency is expected):\n" + "\n".join(f"  {s}" for s in _SKIPPED), file=sys.stderr)
        if session.exitstatus == 0:
            session.exitstatus = 1


# The longest test files first (seconds of their slowest tests under `make test`, 2026-12-07). pytest-xdist's
# loadfile otherwise hands files out by number of tests, so a long file with three tests (the language-model
# study) started last and ran alone for minutes while the other worker idled; `make test` passes
# --no-loadscope-reorder, so files go out in this collection order. Order within a file is kept.
_LONG_FILES = {"test_faults.py": 434, "test_coverage_matrix.py": 305, "test_study_workers.py": 243,
               "test_wordnet_lm.py": 233, "test_study.py": 225, "test_sensitivity.py": 200, "test_wordnet.py": 143,
               "test_storage_outage.py": 117, "test_refine_resume.py": 100, "test_promote.py": 100,
               "test_sealed.py": 99, "test_progress_log.py": 91, "test_agent_pool.py": 82, "test_tasks.py": 75,
               "test_trustworthy.py": 74, "test_refine_uniform.py": 68, "test_multi_input.py": 55,
               "test_wheel.py": 44}


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: -_LONG_FILES.get(item.path.name, 0))  # stable: a file's tests keep their order
