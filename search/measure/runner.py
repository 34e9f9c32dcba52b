"""The measurement runner: the code that runs ON the device, shared by the local backend and the agent.

Imports only the standard library at module level; numpy and onnxruntime are imported in the child
process that `python runner.py` starts, so this file can be copied to a device next to agent.py.

Parent side: `measure(...)` runs each round in a FRESH interpreter (`run_round`) until the rounds agree
(`rounds_agree`) and folds them into a record dict whose keys are the fields of
`search.measure.record.Measurement`.
Child side: `main()` reads a JSON spec on stdin, prints one JSON result line on stdout.
"""

from __future__ import annotations

import base64
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

RUNNER_VERSION = "1"
# Inferences in the memory probe: enough to reach the arena's steady peak (export --verify re-measures
# front points within 0.25% of their recorded memory: benchmarks/results/techniques.json, "verify").
PROBE_RUNS = 20
_ALLOC_MARKERS = ("failed to allocate", "bad_alloc", "memoryerror", "cannot allocate", "out of memory")


class RoundError(Exception):
    """A round that produced no measurement. kind: timeout | crash | load | input | memory."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(" ".join(message.split()))
        self.kind = kind


# ----------------------------------------------------------------------------------------------- parent side
def describe_device() -> dict:
    """Short, stdlib-only device description (also the agent's /v1/info)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version  # no need to load the ORT library just for its version

        ort = version("onnxruntime")
    except Exception:
        ort = "unknown"
    cores = os.cpu_count() or 1
    return {"platform": platform.platform(terse=True), "machine": platform.machine(), "cpu": cpu,
            "cores": cores, "ort_version": ort, "python": platform.python_version(),
            "summary": f"{cpu}, {cores} cores, {platform.system()} {platform.machine()}"}


def pick_cpus(threads: int) -> list[int] | None:
    """The last `threads` allowed cores: core 0 tends to take the interrupts and the desktop's work."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[-threads:] if threads <= len(allowed) else allowed


def run_round(spec: dict, timeout_s: float) -> dict:
    """Run one round in a fresh interpreter (never a fork of a big parent); raise RoundError on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-I", str(Path(__file__).resolve())]  # -I: no sibling module can shadow a library
    try:
        # deadline_s: the round ends itself too, so one whose parent died (an agent killed mid-round, a test
        # process gone) cannot spin on a hung model forever in its own session.
        proc = subprocess.run(cmd, input=json.dumps({**spec, "deadline_s": timeout_s}), capture_output=True,
                              text=True, timeout=timeout_s,
                              env=env, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise RoundError("timeout", f"measurement round timed out after {timeout_s:g} s (hung or far too "
                                    "slow)") from None
    lines = proc.stdout.strip().splitlines()
    result = _parse(lines[-1]) if lines else None
    if result is None:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        limit = spec.get("memory_limit_mb")
        if limit and any(m in proc.stderr.lower() for m in _ALLOC_MARKERS):
            raise RoundError("memory", f"stopped at the memory limit of {limit:.0f} MB")
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        raise RoundError("crash", f"measurement process died ({how}): {tail[0][:300]}")
    if not result.get("ok"):
        raise RoundError(result.get("kind", "crash"), result.get("error", "unknown error"))
    return result


def _parse(line: str) -> dict | None:
    try:
        out = json.loads(line)
    except ValueError:
        return None
    return out if isinstance(out, dict) else None


_OVERHEAD: dict[tuple, float] = {}
_OVERHEAD_LOCK = threading.Lock()


def overhead_mb(threads: int, graph_optimization: str, timeout_s: float) -> float | None:
    """ONNX Runtime's fixed memory cost (a tiny model, same settings), measured once per process."""
    key = (threads, graph_optimization)
    with _OVERHEAD_LOCK:
        if key not in _OVERHEAD:
            spec = {"model": None, "threads": threads, "graph_optimization": graph_optimization,
                    "memory_batch": 1, "cpus": pick_cpus(threads)}
            _OVERHEAD[key] = run_round(spec, timeout_s)["memory"]["peak_mb"]
        return _OVERHEAD[key]


def optimize(model: str, out: str, *, threads: int = 1, graph_optimization: str = "all",
             timeout_s: float = 120.0) -> dict:
    """Save the graph ONNX Runtime executes for `model` with these session options to `out` (its
    `optimized_model_filepath`), in a fresh process as a round; the record of where it was made."""
    run_round({"model": model, "optimize_to": out, "threads": threads, "graph_optimization": graph_optimization,
               "cpus": pick_cpus(threads)}, timeout_s)
    return {**_ran_on(), "graph_optimization": graph_optimization, "threads": threads}


def run_outputs(model: str, inputs: str, out: str, *, threads: int = 1, graph_optimization: str = "all",
                timeout_s: float = 120.0, memory_limit_mb: float | None = None) -> dict:
    """Run `model` once on the arrays of the .npz `inputs` (one per input name, read without pickles) and save
    its outputs to the .npz `out`, in a fresh process as a round; the record of where it ran."""
    run_round({"model": model, "run_inputs": inputs, "run_outputs": out, "threads": threads,
               "graph_optimization": graph_optimization, "memory_limit_mb": memory_limit_mb,
               "cpus": pick_cpus(threads)}, timeout_s)
    return _ran_on()


def _ran_on() -> dict:
    device = describe_device()
    return {"device": device["summary"], "ort_version": device["ort_version"]}


def stats(times_ms: list[float]) -> dict:
    """The latency summary stored in a record (LatencyStats fields)."""
    ordered = sorted(times_ms)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    mean = statistics.fmean(ordered)
    cv = statistics.stdev(ordered) / mean if len(ordered) > 1 and mean > 0 else 0.0
    return {"p50_ms": statistics.median(ordered), "p90_ms": p90, "mean_ms": mean, "cv": cv,
            "runs": len(ordered)}


SAMPLE_MAX_CHARS = 65_536  # an encoded sample travels in the agent's query string
SAMPLE_SEP = ";"  # a model with several inputs: one encoded sample per input, in the model's input order


def encode_sample(sample) -> str:
    """One input sample (no batch dim) as `dtype:AxB:base64`, for the feeds (`sample=` of `measure`)."""
    import numpy as np

    a = np.ascontiguousarray(sample)
    return f"{a.dtype.name}:{'x'.join(map(str, a.shape))}:{base64.b64encode(a.tobytes()).decode()}"


def decode_sample(text: str):
    """The array `encode_sample` wrote; ValueError with the reason when it is not one."""
    import numpy as np

    m = re.fullmatch(r"([a-z0-9]+):([0-9x]*):([A-Za-z0-9+/=]*)", text)
    if not m or m.group(1) not in _DTYPES.values():
        raise ValueError("sample must be dtype:AxB:base64 with a numeric dtype")
    shape = tuple(int(d) for d in m.group(2).split("x") if d)
    data = base64.b64decode(m.group(3), validate=True)
    dtype = np.dtype(m.group(1))
    if len(data) != dtype.itemsize * math.prod(shape):
        raise ValueError(f"sample holds {len(data)} bytes, not the {dtype.name} array of shape {shape} it names")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def agreeing(values: list[float], tol: float) -> list[int]:
    """Indexes of the values within `tol` (relative) of the median of all of them."""
    if not values:
        return []
    mid = statistics.median(values)
    return [i for i, v in enumerate(values) if abs(v - mid) <= tol * abs(mid)]


def rounds_agree(values: list[float], tol: float) -> bool:
    """The stopping rule: a majority of the per-round values, and at least 2, lie within `tol` of their median.
    One fresh process can land in a slow mode (11-25% off) that its own same-round reference does not cancel;
    rounds that agree with each other are what a measurement can trust."""
    return len(agreeing(values, tol)) >= max(2, len(values) // 2 + 1)


def spread(values: list[float]) -> float | None:
    """(max - min) / median of the per-round values; None without two of them."""
    mid = statistics.median(values) if len(values) > 1 else 0.0
    return (max(values) - min(values)) / mid if mid else None


def measure(model: str, reference: str | None = None, *, warmup: int = 50, repeats: int = 200,
            batch: int = 1, threads: int = 1, graph_optimization: str = "all", rounds: int = 2,
            max_rounds: int = 5, agree: float = 0.03, memory_batch: int | None = None,
            memory_limit_mb: float | None = None, timeout_s: float = 120.0, seed: int = 0,
            sample: str | None = None) -> dict:
    """Measure `model` in fresh processes (memory probe in the first); return a record dict.

    At least `rounds` rounds run, then more until `rounds_agree` holds for the per-round p50 ratios to the
    reference (without one: the per-round candidate p50), or `max_rounds` ran. The record's latency figures
    and ratios come from the agreeing rounds (from all when they never agreed).
    `sample` (`encode_sample`: one input of the task's own data) is repeated to the batch as the feed;
    without it float inputs get uniform [0, 1) values and integer inputs small ids."""
    started = time.time()
    memory_batch = memory_batch or batch
    max_rounds = max(max_rounds, rounds)
    base = {"model": model, "reference": reference, "warmup": warmup, "repeats": repeats, "batch": batch,
            "threads": threads, "graph_optimization": graph_optimization, "seed": seed, "sample": sample,
            "memory_limit_mb": memory_limit_mb, "cpus": pick_cpus(threads)}
    overhead = overhead_mb(threads, graph_optimization, timeout_s)
    record: dict = {"latency": None, "memory_total_mb": None, "memory_model_mb": None,
                    "memory_overhead_mb": overhead, "batch": batch, "memory_batch": memory_batch,
                    "threads": threads, "rounds": rounds, "ort_version": "unknown",
                    "device": describe_device()["summary"], "backend": "local", "reference": None,
                    "ratio_p50": None, "ratio_p90": None, "ratio_mean": None, "reference_baseline": None,
                    "over_budget": False, "error": None, "memory_limit_mb": memory_limit_mb,
                    "round_ratios": None, "round_p50_ms": None, "spread": None, "agreed": False,
                    "rechecked": 0, "replaced": 0}
    results: list[dict] = []
    values: list[float] = []  # what the stopping rule judges: per-round ratio, or candidate p50
    while len(results) < max_rounds:
        try:
            res = run_round({**base, "memory_batch": memory_batch if not results else None}, timeout_s)
        except RoundError as e:
            if e.kind != "memory":
                raise
            # Stopped by the hard limit: the peak is at least the limit; no latency is worth measuring.
            return {**record, "memory_total_mb": memory_limit_mb, "over_budget": True, "error": str(e),
                    "started_at": started, "finished_at": time.time()}
        results.append(res)
        p50 = stats(res["candidate_ms"])["p50_ms"]
        values.append(p50 / stats(res["reference_ms"])["p50_ms"] if reference else p50)
        if len(results) >= rounds and rounds_agree(values, agree):
            break
    agreed = rounds_agree(values, agree)
    used = [results[i] for i in agreeing(values, agree)] if agreed else results
    first = results[0]
    total = first["memory"]["peak_mb"]
    cand = [t for res in used for t in res["candidate_ms"]]
    record.update(latency=stats(cand), memory_total_mb=total, ort_version=first["ort_version"],
                  memory_model_mb=None if total is None or overhead is None else max(0.0, total - overhead),
                  rounds=len(results), round_p50_ms=[stats(res["candidate_ms"])["p50_ms"] for res in results],
                  round_ratios=values if reference else None, spread=spread(values), agreed=agreed)
    if reference:
        ref = [t for res in used for t in res["reference_ms"]]
        record["reference"] = stats(ref)
        for s in ("p50", "p90", "mean"):
            per_round = [stats(res["candidate_ms"])[f"{s}_ms"] / stats(res["reference_ms"])[f"{s}_ms"]
                         for res in used]
            record[f"ratio_{s}"] = statistics.median(per_round)
    return {**record, "started_at": started, "finished_at": time.time()}


# ------------------------------------------------------------------------------------------------ child side
_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
           "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
           "tensor(uint8)": "uint8", "tensor(bool)": "bool"}
_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _ld(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def tiny_model() -> bytes:
    """Identity on a float[1]: hand-encoded ModelProto (the device may not have the onnx package)."""
    def value_info(name: bytes) -> bytes:
        dim = _ld(1, _varint(1 << 3) + _varint(1))  # shape [1]
        tensor = _varint(1 << 3) + _varint(1) + _ld(2, dim)  # elem_type FLOAT
        return _ld(1, name) + _ld(2, _ld(1, tensor))

    graph = _ld(1, _ld(1, b"x") + _ld(2, b"y") + _ld(4, b"Identity")) + _ld(2, b"tiny")
    graph += _ld(11, value_info(b"x")) + _ld(12, value_info(b"y"))
    return _varint(1 << 3) + _varint(8) + _ld(8, _varint(2 << 3) + _varint(17)) + _ld(7, graph)


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _maxrss_kb() -> int | None:
    try:
        import resource
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss  # macOS reports bytes, Linux KiB


def _limit_address_space(limit_mb: float) -> None:
    """Cap address-space growth beyond what the imports already mapped: a runaway model fails to allocate
    inside this process instead of pushing the host into swap or the OOM killer."""
    try:
        import resource
    except ImportError:
        return
    cap = (_status_kb("VmSize") or 0) * 1024 + int(limit_mb * 2**20)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _fail(exc: BaseException, what: str, limit: float | None, default_kind: str) -> RoundError:
    text = f"{type(exc).__name__}: {exc}"
    if limit and (isinstance(exc, MemoryError) or any(m in text.lower() for m in _ALLOC_MARKERS)):
        return RoundError("memory", f"{what} stopped at the memory limit of {limit:.0f} MB")
    return RoundError(default_kind, f"{what} failed: {text.splitlines()[0][:400] if text else text}")


def _child(spec: dict) -> dict:
    if spec.get("cpus") and hasattr(os, "sched_setaffinity"):
        try:  # before ORT creates its thread pool, so the pool inherits the mask
            os.sched_setaffinity(0, spec["cpus"])
        except OSError:
            pass  # not allowed here (some containers): run unpinned
    import gc

    import numpy as np
    import onnxruntime as ort

    np.random.default_rng(0).random(1)  # numpy 2 loads numpy.random lazily (~6 MB): not the model's memory
    limit = spec.get("memory_limit_mb")
    if limit:
        _limit_address_space(limit)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = spec["threads"]
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # With the arena off, peak memory was unusable noise (seen when this was written; no benchmark re-checks it).
    opts.enable_cpu_mem_arena = True
    opts.enable_mem_pattern = True
    level = _OPT_LEVELS[spec["graph_optimization"]]
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.log_severity_level = 3
    seed = spec.get("seed", 0)

    def session(source: str | bytes, what: str) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - any ORT load error is the model's fault
            raise _fail(e, f"loading the {what}", limit, "load") from None

    given = [decode_sample(t) for t in spec["sample"].split(SAMPLE_SEP)] if spec.get("sample") else None

    def feed(sess: ort.InferenceSession, batch: int, what: str) -> dict:
        rng = np.random.default_rng(seed)
        out = {}
        inputs = sess.get_inputs()
        if given is not None and len(given) != len(inputs):
            raise RoundError("input", f"the {what} takes {len(inputs)} inputs, the task's sample holds "
                                      f"{len(given)}")
        for k, i in enumerate(inputs):
            shape = list(i.shape)
            if shape and isinstance(shape[0], int) and shape[0] > 0 and shape[0] != batch:
                raise RoundError("input", f"the {what}'s input '{i.name}' has a fixed batch dimension of "
                                          f"{shape[0]}; measuring batch {batch} needs a dynamic one")
            shape = [batch] + shape[1:] if shape else []
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in shape]  # other symbolic dims: 1
            if i.type not in _DTYPES:
                raise RoundError("input", f"the {what}'s input '{i.name}' has unsupported type {i.type}")
            dtype = np.dtype(_DTYPES[i.type])
            if given is not None:
                one = given[k]
                fixed = [d if isinstance(d, int) and d > 0 else None for d in list(i.shape)[1:]]
                if one.dtype != dtype or len(fixed) != one.ndim or any(
                        d not in (None, g) for d, g in zip(fixed, one.shape, strict=True)):
                    raise RoundError("input", f"the {what}'s input '{i.name}' takes {dtype.name} {fixed}, "
                                              f"the task's sample is {one.dtype.name} {list(one.shape)}")
                out[i.name] = np.ascontiguousarray(np.broadcast_to(one, (batch, *one.shape)))
            elif dtype.kind == "f":  # raw-pixel-like values in [0, 1)
                out[i.name] = rng.random(shape, dtype=np.float32).astype(dtype, copy=False)
            elif dtype.kind == "b":
                out[i.name] = rng.integers(0, 2, shape, dtype=np.uint8).astype(bool)
            else:  # token ids / indices: small non-negative values are valid for most models
                out[i.name] = rng.integers(0, 10, shape, dtype=dtype)
        return out

    def run(sess: ort.InferenceSession, inputs: dict, what: str) -> None:
        try:
            sess.run(None, inputs)
        except Exception as e:  # noqa: BLE001
            raise _fail(e, f"running the {what}", limit, "run") from None

    source: str | bytes = spec["model"] if spec["model"] is not None else tiny_model()
    out: dict = {"ok": True, "ort_version": ort.__version__}
    if spec.get("optimize_to"):  # `optimize`: the session's own graph, nothing timed
        opts.optimized_model_filepath = spec["optimize_to"]
        session(source, "model")
        return out
    if spec.get("run_inputs"):  # `run_outputs`: the model's outputs on given inputs, nothing timed
        sess = session(source, "model")
        try:
            with np.load(spec["run_inputs"], allow_pickle=False) as given:
                inputs = {i.name: given[i.name] for i in sess.get_inputs()}
        except (KeyError, ValueError, OSError) as e:
            raise RoundError("input", f"the inputs are not an .npz of the model's inputs "
                                      f"{[i.name for i in sess.get_inputs()]}: {e}") from None
        try:
            values = sess.run(None, inputs)
        except Exception as e:  # noqa: BLE001 - wrong shapes or types: the request's fault
            raise _fail(e, "running the model", limit, "input") from None
        np.savez(spec["run_outputs"], **{o.name: v for o, v in zip(sess.get_outputs(), values, strict=True)})
        return out
    if spec.get("memory_batch"):
        # Memory first, in a process that has loaded no other model: peak-RSS growth (ORT's own share is
        # "ort_overhead_mb" in benchmarks/results/measure.json). The input belongs to the application, not
        # the model: its bytes are subtracted.
        reset = _reset_peak()
        before = _status_kb("VmRSS") if reset else _maxrss_kb()
        sess = session(source, "model")
        inputs = feed(sess, spec["memory_batch"], "model")
        for _ in range(PROBE_RUNS):
            run(sess, inputs, "model")
        after = _status_kb("VmHWM") if reset else _maxrss_kb()
        own = sum(a.nbytes for a in inputs.values()) / 2**20
        peak = None if before is None or after is None else max(0.0, (after - before) / 1024 - own)
        out["memory"] = {"peak_mb": peak, "method": "clear_refs" if reset else "ru_maxrss"}
        del sess, inputs
        gc.collect()
    if spec["model"] is None or not spec.get("repeats"):
        return out
    cand = session(source, "model")
    pairs = [(cand, feed(cand, spec["batch"], "model"), "model", [])]
    if spec.get("reference"):
        ref = session(spec["reference"], "reference model")
        pairs.append((ref, feed(ref, spec["batch"], "reference model"), "reference model", []))
    for sess, inputs, what, _ in pairs:
        for _ in range(spec["warmup"]):
            run(sess, inputs, what)
    gc.collect()
    gc.disable()  # a collection inside a timed run is noise, not the model
    # Interleave candidate and reference in blocks: drift (frequency, neighbours) hits both alike,
    # while each block keeps its model's caches warm as in steady deployment.
    block, done = max(1, spec["repeats"] // 10), 0
    while done < spec["repeats"]:
        n = min(block, spec["repeats"] - done)
        for sess, inputs, what, times in pairs:
            for _ in range(n):
                t0 = time.perf_counter_ns()
                run(sess, inputs, what)
                times.append((time.perf_counter_ns() - t0) / 1e6)
        done += n
    gc.enable()
    out["candidate_ms"] = pairs[0][3]
    out["reference_ms"] = pairs[1][3] if len(pairs) > 1 else []
    return out


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


def main() -> None:
    try:
        spec = json.loads(sys.stdin.read())
        if spec.get("deadline_s") and hasattr(signal, "alarm"):  # SIGALRM's default action ends the process,
            signal.alarm(int(math.ceil(float(spec["deadline_s"]))) + 5)  # even inside a native ONNX Runtime loop
        out = _child(spec)
    except RoundError as e:
        out = {"ok": False, "kind": e.kind, "error": str(e)}
    except MemoryError:
        out = {"ok": False, "kind": "memory", "error": "stopped at the memory limit (Python MemoryError)"}
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        out = {"ok": False, "kind": "crash", "error": f"{type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
