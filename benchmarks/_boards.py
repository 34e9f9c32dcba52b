"""Simulated boards for the pool benchmark and tests: each `hwsearch agent` runs in its own network namespace
(reached over a veth pair, a real network interface, not loopback) and its own CPU quota (a cgroup `cpu`
controller: 0.2 of a core is a board five times slower than this host's core), so three boards fit on a 2-core
machine and a study's trials are dominated by measuring on them. Both need root (`unavailable()` says why
not); without either, the agents are plain processes on loopback, as tests without root run them."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PERIOD_US = 100_000
V1 = Path("/sys/fs/cgroup/cpu")  # cgroup v1 (this machine); v2 below
V2 = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Board:
    """One simulated board: its agent's URL and process, where it runs."""

    url: str
    proc: subprocess.Popen
    netns: str | None
    cgroup: Path | None


def _cgroup_root() -> tuple[Path, str] | None:
    """(where to make groups, 'v1' | 'v2') with the cpu controller usable, else None."""
    if (V1 / "cpu.cfs_quota_us").exists():
        return V1, "v1"
    controllers = V2 / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return V2, "v2"
    return None


def unavailable(netns: bool = True, quota: bool = True) -> str | None:
    """Why boards cannot be simulated here (None: they can)."""
    if not (netns or quota):
        return None
    if os.geteuid() != 0:
        return "needs root (cgroup CPU quotas and network namespaces)"
    if quota and _cgroup_root() is None:
        return "no cgroup cpu controller (cpu.cfs_quota_us or cpu.max)"
    if netns and shutil.which("ip") is None:
        return "no `ip` command (iproute2) for network namespaces"
    return None


def _quota(group: Path, kind: str, cpu: float) -> None:
    group.mkdir(exist_ok=True)
    if kind == "v1":
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(int(cpu * PERIOD_US)))
    else:
        (group / "cpu.max").write_text(f"{int(cpu * PERIOD_US)} {PERIOD_US}")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _wait_listening(host: str, port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited at start (exit {proc.returncode}; its log is beside the token file)")
        try:
            socket.create_connection((host, port), timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"agent at {host}:{port} did not start in {timeout:g} s")


@contextlib.contextmanager
def boards(n: int, token_file: Path, cpu: float | None = 0.2, netns: bool = True, prefix: str = "hwb",
           port: int = 8765) -> Iterator[list[Board]]:
    """`n` agents, each (with `cpu`) in its own cgroup with `cpu` cores of quota and (with `netns`) in its own
    network namespace at 10.213.<k>.2, reached from here through 10.213.<k>.1; else on a free loopback port.
    Everything is removed on exit."""
    if n > 4:
        raise ValueError("at most 4 boards (each process has 4 subnets)")
    if why := unavailable(netns, cpu is not None):
        raise RuntimeError(f"cannot simulate boards: {why}")
    root, kind = _cgroup_root() or (None, "")
    made: list[Board] = []
    spaces: list[str] = []
    try:
        for i in range(n):
            group = None
            if cpu is not None and root is not None:
                group = root / f"{prefix}-{os.getpid()}-{i}"
                _quota(group, kind, cpu)
            cmd = [sys.executable, "-m", "search", "agent", "--port", str(port), "--token-file", str(token_file)]
            host = "127.0.0.1"
            ns = None
            if netns:
                net = f"10.213.{(os.getpid() % 63) * 4 + i}"  # per process: two test workers never share a subnet
                ns, host = f"{prefix}{os.getpid() % 10_000}-{i}", f"{net}.2"
                veth = f"{prefix}{os.getpid() % 10_000}h{i}"[:15]
                _ip("netns", "add", ns)
                spaces.append(ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("addr", "add", f"{net}.1/24", "dev", veth)
                _ip("link", "set", veth, "up")
                for args in (("addr", "add", f"{host}/24", "dev", "eth0"), ("link", "set", "eth0", "up"),
                             ("link", "set", "lo", "up")):
                    _ip("netns", "exec", ns, "ip", *args)
                cmd = ["ip", "netns", "exec", ns, *cmd, "--host", host]
            else:
                cmd[cmd.index("--port") + 1] = str(port := _free_port())
            join = (lambda f=group / "cgroup.procs": f.write_text(str(os.getpid()))) if group else None
            # Its request log goes to a file: an unread pipe fills (64 KB) and every request then blocks on it.
            with open(token_file.parent / f"{prefix}-agent-{i}.log", "w") as log:
                proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, text=True,
                                        start_new_session=True, preexec_fn=join)
            made.append(Board(f"http://{host}:{port}", proc, ns, group))
            _wait_listening(host, port, proc)
        yield made
    finally:
        for b in made:
            stop(b)
        for ns in spaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # takes its end of the veth pair
        for b in made:
            if b.cgroup is not None:
                _remove_group(b.cgroup)


def stop(board: Board) -> None:
    """Kill the board's agent and every process it started (a dead board)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(board.proc.pid, 9)
    board.proc.wait(30)


def _remove_group(group: Path) -> None:
    for _ in range(50):  # its processes take a moment to leave the group
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
