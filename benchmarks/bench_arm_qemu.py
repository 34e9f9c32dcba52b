"""The agent on ARM without a board: Debian's arm64 Python and ONNX Runtime's aarch64 wheel under qemu-user.

A functional check of the device path on another CPU architecture, not a timing (every instruction is emulated).
It builds an arm64 root once (`--root`: Debian's python3.11 and its libraries unpacked from their .deb files,
ONNX Runtime's and NumPy's aarch64 wheels of the versions this machine runs), copies the five agent files into it
(docs/agent.md), starts `agent.py` under `qemu-aarch64` on loopback, and runs a short digits study against it
through a remote profile, then `front` and `export --verify` of its fastest point. It records what the board
reported: its own description, each trial's `runs_as_read_on` and per-layer kernels (read from the graph the
*board's* ONNX Runtime optimised), the device-output check of verify, and the op types of that graph beside the
ones this machine's ONNX Runtime makes of the same file.

qemu-user 7.2 shows the guest this machine's x86 /proc/cpuinfo, and ONNX Runtime's CPU detection on ARM then
crashes at import (SIGSEGV after reading the cache topology); the agent therefore runs in a private mount
namespace with an ARM /proc/cpuinfo (a Raspberry Pi 4's Cortex-A72) bound over it. A round is a fresh process
(`sys.executable`), which the host kernel cannot start without binfmt_misc: the guest's argv[0] is a wrapper
script that starts the interpreter under qemu again. Needs root (apt, mount namespace) and the package mirrors.

    python benchmarks/bench_arm_qemu.py --out benchmarks/results/arm-qemu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from importlib.metadata import version
from pathlib import Path

from _boards import _free_port, _wait_listening
from _common import REPO, BenchError, cli, header, share_teachers, table, write_json

AGENT_FILES = ("agent", "agent_checks", "agent_jobs", "agent_tls", "runner")
PY = "python3.11"  # Debian 12's, the ABI of the wheels below (cp311)
TOKEN = "bench-arm-token"
# A Raspberry Pi 4's /proc/cpuinfo (two of its four cores): what ONNX Runtime's cpuinfo expects to parse on ARM.
CPUINFO = "".join(f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
                  "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
                  "CPU revision\t: 3\n\n" for i in range(2)) + "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4\n"


def run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise BenchError(f"{' '.join(cmd[:4])} ...: exit {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}")
    return r


def sysroot(root: Path) -> Path:
    """Debian's arm64 python3.11 with its libraries, unpacked into root/sysroot (once)."""
    tree = root / "sysroot"
    if (tree / "usr" / "bin" / PY).exists():
        return tree
    added = "arm64" not in run("dpkg", "--print-foreign-architectures").stdout.split()
    if added:  # needed to resolve and download arm64 packages; nothing of arm64 is installed
        run("dpkg", "--add-architecture", "arm64")
    try:
        run("apt-get", "update", "-q")
        deps = run("apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                   "--no-breaks", "--no-replaces", "--no-enhances", f"{PY}:arm64", "libstdc++6:arm64").stdout
        wanted = sorted({ln for ln in deps.splitlines() if ln.endswith(":arm64") and not ln.startswith(" ")}
                        - {"dpkg:arm64", "install-info:arm64", "tar:arm64"})  # the packaging tools: not run
        debs = root / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        run("apt-get", "download", "-q", *wanted, cwd=debs)
    finally:
        if added:
            run("dpkg", "--remove-architecture", "arm64")
            run("apt-get", "update", "-q")
    tmp = root / "sysroot.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        run("dpkg", "-x", str(deb), str(tmp))
    tmp.rename(tree)
    return tree


def wheels(tree: Path, root: Path) -> None:
    """ONNX Runtime and NumPy for aarch64, the versions this machine runs, into the root's dist-packages (the
    rounds start `python -I`, which ignores PYTHONPATH)."""
    site = tree / "usr" / "lib" / "python3" / "dist-packages"
    if (site / "onnxruntime").exists():
        return
    dl = root / "wheels"
    dl.mkdir(parents=True, exist_ok=True)
    run(sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
        "--no-deps", "--python-version", "311", "--implementation", "cp", "--platform", "manylinux_2_28_aarch64",
        "--platform", "manylinux2014_aarch64", "-d", str(dl), f"onnxruntime=={version('onnxruntime')}",
        f"numpy=={version('numpy')}")
    site.mkdir(parents=True, exist_ok=True)
    for whl in sorted(dl.glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            z.extractall(site)
    for so in site.rglob("*.so*"):  # zip files keep no permission bits
        so.chmod(0o755)


DEFAULT_ROOT = Path("/var/tmp/hwsearch-arm64")


def prepare(root: Path) -> Path:
    """The arm64 root (built once: packages and wheels fetched), the wrapper that runs its interpreter under qemu
    (also what the agent's rounds start) and an ARM /proc/cpuinfo: the wrapper."""
    root.mkdir(parents=True, exist_ok=True)
    tree = sysroot(root)
    wheels(tree, root)
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        run("apt-get", "install", "-y", "-q", "qemu-user")
        qemu = shutil.which("qemu-aarch64") or ""
    wrapper = tree / "usr" / "bin" / f"{PY}-qemu"  # beside the interpreter: Python finds its library from argv[0]
    text = f'#!/bin/sh\nexec {qemu} -cpu cortex-a72 -L {tree} -0 "$0" {tree}/usr/bin/{PY} "$@"\n'
    if not wrapper.exists() or wrapper.read_text() != text:
        wrapper.write_text(text)
        wrapper.chmod(0o755)
    if not (root / "cpuinfo").exists():
        (root / "cpuinfo").write_text(CPUINFO)
    return wrapper


def agent_files(agent_dir: Path) -> Path:
    """The five agent files, fresh from this checkout, with a token, in `agent_dir` (made anew)."""
    shutil.rmtree(agent_dir, ignore_errors=True)
    agent_dir.mkdir(parents=True)
    for name in AGENT_FILES:
        shutil.copy2(REPO / "search" / "measure" / f"{name}.py", agent_dir)
    (agent_dir / "token").write_text(TOKEN + "\n")
    return agent_dir


@contextlib.contextmanager
def agent(root: Path, wrapper: Path, agent_dir: Path, port: int):
    """`agent.py` from `agent_dir` under qemu on 127.0.0.1:`port`, an ARM /proc/cpuinfo bound over the host's
    in its own mount namespace; yields (process, its log)."""
    log = agent_dir / "agent.log"
    script = (f"mount --bind {root / 'cpuinfo'} /proc/cpuinfo && exec {wrapper} agent.py --port {port} "
              "--token-file token --max-request-seconds 3600")
    with open(log, "w") as out:
        proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], cwd=agent_dir, stdout=subprocess.DEVNULL,
                                stderr=out, start_new_session=True)
    try:
        _wait_listening("127.0.0.1", port, proc, timeout=300)
        yield proc, log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(30)


def profile_yaml(port: int) -> str:
    return f"""name: arm-qemu
description: the agent under qemu-aarch64 (Debian arm64 Python, ONNX Runtime's aarch64 wheel), on loopback
runtime: {{threads: 1}}
precisions: [fp32, int8]
measure: {{backend: remote, url: 'http://127.0.0.1:{port}', token_env: HWSEARCH_ARM_TOKEN, warmup: 5, repeats: 50,
          batch: 1, timeout_s: 300, rounds: 1, max_rounds: 1}}
budgets: {{latency_ms: 1000.0, memory_mb: 4000.0, model_mb: 100.0}}
"""


def hwsearch(*args: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "search", *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise BenchError(f"hwsearch {args[0]} failed (exit {r.returncode}): {r.stderr.strip()[-600:]}")
    return r


def op_types(model_bytes: bytes) -> dict[str, int]:
    import onnx

    return dict(sorted(Counter(n.op_type for n in onnx.load_from_string(model_bytes).graph.node).items()))


def main() -> int:
    from search.study.setup import REFERENCE_NAME

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where the arm64 root lives")
    p.add_argument("--prepare-only", action="store_true", help="build the root (once) and stop (make test-deps)")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--results", default="results", help="where the cached digits teacher is")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "arm-qemu.json")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise BenchError("needs root (apt-get for the arm64 packages, a mount namespace for /proc/cpuinfo)")
    t0 = time.monotonic()
    wrapper = prepare(args.root)
    if args.prepare_only:
        print(f"arm64 root ready: {wrapper} (qemu-aarch64, python3.11, onnxruntime {version('onnxruntime')})")
        return 0
    result = {**header("bench_arm_qemu.py", None), "trials": args.trials,
              "prepare_s": round(time.monotonic() - t0, 1)}
    agent_dir = agent_files(args.root / "agent")
    port = _free_port()
    os.environ["HWSEARCH_ARM_TOKEN"] = TOKEN  # the study's processes and this one's own board client read it
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="hwsearch-arm-") as tmp, agent(args.root, wrapper, agent_dir, port) as (
            _, log):
        scratch = Path(tmp)
        share_teachers(scratch, Path(args.results))
        profile = scratch / "profile.yaml"
        profile.write_text(profile_yaml(port))
        t1 = time.monotonic()
        hwsearch("run", "--task", "digits", "--space", str(REPO / "benchmarks" / "spaces" / "pool.yaml"),
                 "--device", str(profile), "--trials", str(args.trials), "--study", "arm", "--results", str(scratch),
                 "--seed", "0", "--no-seed-plans", "--no-uniform-curve", "--no-progress", env=env, timeout=7200)
        result["study_s"] = round(time.monotonic() - t1, 1)
        result["agent_banner"] = log.read_text().splitlines()[0]
        result["trials_read"] = trials_read(scratch)
        points = json.loads(hwsearch("front", "--study", "arm", "--results", str(scratch), "--format", "json",
                                     env=env, timeout=600).stdout)
        fastest = min(points, key=lambda q: q["latency_ms"])["trial"]
        out = scratch / "deploy"
        t2 = time.monotonic()
        verify = hwsearch("export", "--study", "arm", "--results", str(scratch), "--trial", str(fastest), "--out",
                          str(out), "--verify", env=env, timeout=3600)
        result["export_verify"] = {"trial": fastest, "seconds": round(time.monotonic() - t2, 1),
                                   "lines": [ln for ln in verify.stdout.splitlines() if ln.strip()]}
        result["graphs"] = {"teacher (fp32)": graphs(profile, scratch / "arm" / REFERENCE_NAME),
                            f"trial {fastest} (exported)": graphs(profile, out / "model.onnx")}
    print(result["agent_banner"])
    table([[str(t["trial"]), t["state"], t["read_on"] or "-", ", ".join(f"{k} x{v}" for k, v in t["kernels"].items()),
            f"{t['latency_ms']:.3f}" if t["latency_ms"] else "-"] for t in result["trials_read"]],
          ["trial", "state", "kernels read on", "kernels", "latency ms (emulated)"])
    print("\n".join(result["export_verify"]["lines"]))
    for name, g in result["graphs"].items():
        same = "the same op types" if g["board"]["ops"] == g["host"]["ops"] else "different op types"
        print(f"{name}: the board's optimised graph and this machine's have {same}: board {g['board']['ops']}, "
              f"host {g['host']['ops']}")
    write_json(args.out, result)
    return 0


def trials_read(results: Path) -> list[dict]:
    """Per trial: whose optimised graph its kernels were read from, the kernels, the latency the board measured."""
    import optuna

    from search.study.record import T_METRICS, T_PRECISION, T_RUNS_READ_ON

    study = optuna.load_study(study_name="arm", storage=f"sqlite:///{results / 'arm' / 'study.db'}")
    return [{"trial": t.number, "state": t.state.name, "read_on": t.user_attrs.get(T_RUNS_READ_ON),
             "kernels": dict(Counter(e["runs_as"] for e in (t.user_attrs.get(T_PRECISION) or {}).values())),
             "latency_ms": (t.user_attrs.get(T_METRICS) or {}).get("latency_ms")} for t in study.trials]


def graphs(profile_path: Path, model: Path) -> dict:
    """The op types of the graph the board's ONNX Runtime executes for `model`, and this machine's."""
    from search.compress.runs import optimized_model
    from search.config import load_profile
    from search.measure.remote import RemoteBackend

    board_graph, where = RemoteBackend(load_profile(profile_path)).optimized_model(model)
    host = optimized_model(model).SerializeToString()
    return {"board": {"where": where, "ops": op_types(board_graph)}, "host": {"ops": op_types(host)}}


if __name__ == "__main__":
    cli(main)
