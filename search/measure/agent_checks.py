"""What a client sends the measurement agent, checked before anything opens it: the model bytes (a small
hand-written protobuf reader rather than `onnx.load` + `onnx.checker`: the agent must run on a device that has
only onnxruntime and numpy, and it must refuse external-data paths and foreign op domains before ONNX Runtime
opens the bytes) and the measurement query (bounded so one client cannot hold the device for hours).

Standard library only, plus runner.py; deployed beside agent.py and runner.py (docs/agent.md).
"""

from __future__ import annotations

import math
import os
import re
from urllib.parse import parse_qs

if __package__:  # imported as search.measure.agent_checks
    from search.measure import runner
else:  # standalone on the device: runner.py sits next to this file
    import runner  # type: ignore[no-redef]

ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft"})
MAX_REQUEST_S = 600.0  # the agent's default --max-request-seconds


# ----------------------------------------------------------------------------------------- request checks
def content_length(values: list[str]) -> tuple[int | None, str | None]:
    """(length, None) or (None, why) for the Content-Length header values of a request: exactly one, made of
    ASCII digits only (str.isdigit() also accepts '²', which int() refuses) and not absurdly long (int() refuses
    more than 4300 digits): a length beyond 15 digits counts as too large, like any above the upload limit."""
    if len(values) != 1:
        return None, "one Content-Length header required"
    value = values[0].strip(" \t")
    if not value or not value.isascii() or not value.isdigit():
        return None, "Content-Length must be ASCII digits"
    digits = value.lstrip("0") or "0"
    return (int(digits) if len(digits) <= 15 else 10**15), None


# ------------------------------------------------------------------- model check (no onnx package needed)
class InvalidModel(ValueError):
    """The uploaded bytes are not a self-contained ONNX model with allowed op domains (HTTP 400)."""


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise InvalidModel("not an ONNX model (truncated or malformed protobuf)")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview):
    """Yield (field number, wire type, value) of one protobuf message; value is int, bytes view or None."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        value: int | memoryview | None = None
        if num == 0:
            raise InvalidModel("not an ONNX model (malformed protobuf)")
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise InvalidModel(f"not an ONNX model (protobuf wire type {wire})")
        if i > len(buf):
            raise InvalidModel("not an ONNX model (truncated protobuf)")
        yield num, wire, value


# Per message type, the fields (numbers from onnx.proto) that can hold an op domain, a tensor or a subgraph.
_SCHEMA: dict[str, dict[int, str]] = {
    "model": {7: "graph", 8: "opset", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},  # TrainingInfoProto: initialization, algorithm
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "node": {5: "attribute", 7: "domain"},
    # AttributeProto: t, g, tensors, graphs, sparse_tensor, sparse_tensors
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "function": {7: "node", 9: "opset", 11: "attribute"},
    "opset": {1: "domain"},
}


def _walk(buf: memoryview, kind: str, depth: int) -> None:
    if depth > 32:
        raise InvalidModel("not an ONNX model (nesting too deep)")
    if kind == "tensor":
        fields = {num: value for num, _, value in _fields(buf)}
        if fields.get(14) == 1 or 13 in fields:  # data_location EXTERNAL, or external_data entries
            name = bytes(fields.get(8) or b"").decode("utf-8", "replace")  # type: ignore[arg-type]
            raise InvalidModel(f"tensor {name!r} refers to external data; send a self-contained model")
        return
    for num, wire, value in _fields(buf):
        child = _SCHEMA[kind].get(num)
        if child is None:
            continue
        if wire != 2:
            raise InvalidModel(f"not an ONNX model (field {num} of a {kind} has the wrong type)")
        if child == "domain":
            domain = bytes(value).decode("utf-8", "replace")  # type: ignore[arg-type]
            if domain not in ALLOWED_DOMAINS:
                raise InvalidModel(f"op domain {domain!r} ({kind}) is not '', 'ai.onnx' or 'com.microsoft'")
        else:
            _walk(value, child, depth + 1)  # type: ignore[arg-type]


def check_model(data: bytes | memoryview) -> None:
    """Raise InvalidModel unless `data` parses as a ModelProto with a graph, no external data and only
    allowed op domains. ONNX Runtime itself validates the rest when the runner loads the model."""
    buf = memoryview(data)
    if not {1, 7} <= {num for num, _, _ in _fields(buf)}:  # ir_version, graph
        raise InvalidModel("not an ONNX model (no ir_version or graph)")
    _walk(buf, "model", 0)


# ----------------------------------------------------------------------------------------- request params
def _host_cap_mb() -> float:
    try:
        return 0.75 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ValueError, OSError, AttributeError):
        return 4096.0


def parse_params(query: str, max_request_s: float = MAX_REQUEST_S) -> dict:
    """Validate and bound the measurement parameters of a query string (ValueError with a clear reason).

    A request's work is bounded by (max_rounds + 1) x timeout_s: each round (at least `rounds`, more while they
    disagree: runner.rounds_agree) runs in a process stopped at timeout_s, and so does the ONNX Runtime
    overhead probe before the first round. That bound may not exceed the agent's own `max_request_s`, so one
    client cannot hold the device (and everyone queued behind it) for hours."""
    bounds = {"warmup": (int, 0, 100_000, 50), "repeats": (int, 1, 1_000_000, 200), "rounds": (int, 1, 20, 1),
              "max_rounds": (int, 1, 20, None), "agree": (float, 0.0, 1.0, 0.03),
              "batch": (int, 1, 4096, 1), "threads": (int, 1, os.cpu_count() or 1, 1),
              "memory_batch": (int, 1, 4096, None), "memory_limit_mb": (float, 1.0, 1e9, None),
              "timeout_s": (float, 1.0, 3600.0, 120.0)}
    raw = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    unknown = set(raw) - set(bounds) - {"graph_optimization", "reference", "model", "sample"}
    if unknown:
        raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    if any(len(v) > 1 for v in raw.values()):
        raise ValueError("a parameter is given twice")
    out: dict = {}
    for name, (kind, lo, hi, default) in bounds.items():
        if name not in raw:
            out[name] = default
            continue
        try:
            value = kind(raw[name][0])
        except ValueError:
            raise ValueError(f"{name} must be a number, got {raw[name][0][:20]!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"{name} must be between {lo:g} and {hi:g}, got {value:g}")
        out[name] = value
    if not out["agree"] > 0:
        raise ValueError("agree must be greater than 0 (a relative tolerance)")
    # Without max_rounds (a client from before the agreement rule) exactly `rounds` rounds run.
    out["max_rounds"] = out["max_rounds"] or out["rounds"]
    if out["max_rounds"] < out["rounds"]:
        raise ValueError(f"max_rounds ({out['max_rounds']}) must be at least rounds ({out['rounds']})")
    cap = _host_cap_mb()  # clamped, not refused: the client cannot know this device's memory
    out["memory_limit_mb"] = min(out["memory_limit_mb"] or cap, cap)
    out["graph_optimization"] = raw.get("graph_optimization", ["all"])[0]
    if out["graph_optimization"] not in ("disable", "basic", "extended", "all"):
        raise ValueError("graph_optimization must be one of disable, basic, extended, all")
    for name in ("reference", "model"):  # a stored model, named by the sha256 /v1/reference answered
        out[name] = raw.get(name, [None])[0]
        if out[name] is not None and not re.fullmatch(r"[0-9a-f]{64}", out[name]):
            raise ValueError(f"{name} must be a sha256 (hex) returned by POST /v1/reference")
    out["sample"] = raw.get("sample", [None])[0]
    if out["sample"] is not None:
        if len(out["sample"]) > runner.SAMPLE_MAX_CHARS:
            raise ValueError(f"sample must be at most {runner.SAMPLE_MAX_CHARS} characters")
        for part in out["sample"].split(runner.SAMPLE_SEP):  # one per input; ValueError with the reason
            runner.decode_sample(part)
    worst = (out["max_rounds"] + 1) * out["timeout_s"]  # the rounds may disagree up to max_rounds
    if worst > max_request_s:
        most = max(0, math.floor(max_request_s / out["timeout_s"]) - 1)
        which = "max_rounds" if "max_rounds" in raw else "rounds"
        raise ValueError(f"this request may run ({which} {out['max_rounds']} + 1 overhead probe) x timeout_s "
                         f"{out['timeout_s']:g} = {worst:g} s; this agent allows at most {max_request_s:g} s per "
                         f"request (--max-request-seconds): use ({which} + 1) x timeout_s <= {max_request_s:g}"
                         + (f", e.g. {which} <= {most} at this timeout_s" if most else ", a smaller timeout_s"))
    return out
