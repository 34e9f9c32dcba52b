"""What the agent does with a request once its body is in: measure a model, answer the graph the device's ONNX
Runtime executes for it, or run it on given inputs. Every job runs alone on the device (two at once would time
each other) and in fresh processes (runner.py), so a model that hangs or crashes cannot take the agent down.

Standard library only, plus runner.py; deployed beside agent.py (docs/agent.md).
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

if __package__:  # imported as search.measure.agent_jobs
    from search.measure import runner
else:  # standalone on the device
    import runner  # type: ignore[no-redef]

Answer = tuple[int, dict]  # (HTTP status, JSON payload)
WORKDIR_PREFIX = "hwsearch-agent-"  # + "<pid>-<random>": the agent that made it, so that another can tell it died


def make_workdir() -> Path:
    """This agent's work folder, named with its pid; the folders of agents that died without a clean stop (killed,
    crashed: only a clean stop removes its own) are removed first, so a board does not fill up with them. A folder
    whose name holds no pid (made by an older agent, or not by an agent) is left alone."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"{WORKDIR_PREFIX}*"):
        pid, _, rest = old.name.removeprefix(WORKDIR_PREFIX).partition("-")
        if rest and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def measure(server, data: memoryview, params: dict, request_id: str) -> Answer:  # noqa: ANN001 - AgentServer
    """POST /v1/measure: the Measurement record, the named reference interleaved in the same rounds."""
    reference = None
    if params["reference"]:
        reference = _stored_copy(server, params["reference"], f"ref-{request_id}.onnx")
        if reference is None:
            return 409, {"error": "unknown reference; upload it to /v1/reference"}
    candidate = server.workdir / f"candidate-{request_id}.onnx"
    candidate.write_bytes(data)
    kwargs = {k: v for k, v in params.items() if k not in ("reference", "model")}
    try:
        return _job(server, lambda: {**runner.measure(str(candidate), str(reference) if reference else None,
                                                      **kwargs), "backend": "remote"})
    finally:
        candidate.unlink(missing_ok=True)
        if reference is not None:
            reference.unlink(missing_ok=True)


def optimize(server, data: memoryview, params: dict, request_id: str) -> Answer:  # noqa: ANN001
    """POST /v1/optimize: the graph this device's ONNX Runtime executes for the model (base64 ONNX): what each
    layer runs as is read here, where ARM builds pick their own int8 and int4 kernels."""
    model, out = (server.workdir / f"{kind}-{request_id}.onnx" for kind in ("optimize", "optimized"))
    model.write_bytes(data)

    def work() -> dict:
        made = runner.optimize(str(model), str(out), threads=params["threads"], timeout_s=params["timeout_s"],
                               graph_optimization=params["graph_optimization"])
        return {**made, "onnx": base64.b64encode(out.read_bytes()).decode("ascii")}

    try:
        return _job(server, work)
    finally:
        model.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


def run(server, data: memoryview, params: dict, request_id: str) -> Answer:  # noqa: ANN001
    """POST /v1/run: the outputs of a stored model (`model` = its sha256 from /v1/reference) on the inputs of the
    body (an uncompressed .npz, one array per input name, read without pickles in the fresh process), as a
    base64 .npz: `export --verify` compares them with the search machine's."""
    model = _stored_copy(server, params["model"] or "", f"run-{request_id}.onnx")
    if model is None:
        return 409, {"error": "unknown model; upload it to /v1/reference"}
    inputs, outputs = (server.workdir / f"{kind}-{request_id}.npz" for kind in ("inputs", "outputs"))
    inputs.write_bytes(data)

    def work() -> dict:
        made = runner.run_outputs(str(model), str(inputs), str(outputs), threads=params["threads"],
                                  graph_optimization=params["graph_optimization"], timeout_s=params["timeout_s"],
                                  memory_limit_mb=params["memory_limit_mb"])
        return {**made, "outputs": base64.b64encode(outputs.read_bytes()).decode("ascii")}

    try:
        return _job(server, work)
    finally:
        for path in (model, inputs, outputs):
            path.unlink(missing_ok=True)


def _stored_copy(server, digest: str, name: str) -> Path | None:  # noqa: ANN001
    """A private copy of a stored reference model (newer uploads may evict the stored one meanwhile)."""
    with server.state_lock:
        stored = server.references.get(digest)
        if stored is None:
            return None
        copy = server.workdir / name
        shutil.copyfile(stored, copy)
        return copy


def _job(server, work: Callable[[], dict]) -> Answer:  # noqa: ANN001
    """Run `work` alone on the device and answer with its payload (RoundError: 400 for the model's own fault,
    422 when it hung or crashed)."""
    try:
        with server.lock:
            with server.state_lock:
                server.busy = True
            try:
                payload = work()
            finally:
                with server.state_lock:
                    server.busy = False
    except runner.RoundError as e:
        return (400 if e.kind in ("load", "input") else 422), {"error": str(e), "kind": e.kind}
    except Exception as e:  # noqa: BLE001 - answer rather than drop the connection (the client would retry)
        return 500, {"error": f"agent error: {type(e).__name__}: {e}"}
    return 200, payload
