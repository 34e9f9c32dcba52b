"""Measurement cache: the same graph structure on the same profile is timed once per study.

Latency and memory depend on the graph's structure, not on its trained weights, so the key hashes op types,
attributes, wiring, tensor shapes and dtypes (weight values left out), plus the profile digest and the
reference model's structure (the record carries the drift ratio to it). Small int64 tensors are hashed by
value: they are shapes and axes (Reshape targets, Slice bounds) and do change the computation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import threading
from pathlib import Path
from typing import Any

from search.config.profile import DeviceProfile
from search.errors import TrialFailure
from search.measure import Backend
from search.measure.record import Measurement
from search.measure.runner import agreeing, rounds_agree, spread
from search.utils.atomic import atomic_write_text

# 2: records measured by the agreement rule (runner.rounds_agree); version-1 entries (often one round) are not trusted.
KEY_VERSION = "2"
_SMALL_INT64 = 64  # elements: above this an int64 tensor is data (e.g. embedding ids), not a shape


def structure_key(onnx_path: str | os.PathLike) -> str:
    """Hash of the model's structure; equal for two exports of one architecture with different weights."""
    import onnx  # heavy: only when a key is actually needed

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any parse failure makes the trial fail with this reason
        raise TrialFailure(f"cannot read {onnx_path} as ONNX: {e}") from None
    h = hashlib.sha256()
    opsets = sorted((o.domain or "ai.onnx", o.version) for o in model.opset_import)
    h.update(json.dumps(opsets).encode())
    _graph(model.graph, h)
    return h.hexdigest()[:32]


def _tensor_sig(t: Any) -> list:
    from onnx import numpy_helper

    sig: list = [int(t.data_type), list(t.dims)]
    if t.data_type == 7 and _numel(t.dims) <= _SMALL_INT64:  # 7 = INT64
        sig.append(numpy_helper.to_array(t).tolist())
    return sig


def _numel(dims: Any) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _type_sig(value_info: Any) -> list:
    tensor = value_info.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else "?" for d in tensor.shape.dim]
    return [int(tensor.elem_type), dims]


def _graph(graph: Any, h: Any) -> None:
    """Feed the graph into `h` with tensor names replaced by their order of first appearance."""
    names: dict[str, int] = {}
    inits = {t.name: t for t in graph.initializer}

    def ref(name: str) -> Any:
        if not name:
            return None
        if name not in names:
            names[name] = len(names)
            if name in inits:  # an initializer: described by shape and dtype, not by values
                return ["init", names[name], _tensor_sig(inits[name])]
        return names[name]

    inputs = [["in", ref(v.name), _type_sig(v)] for v in graph.input if v.name not in inits]
    h.update(json.dumps(inputs).encode())
    for node in graph.node:
        attrs = []
        for a in sorted(node.attribute, key=lambda a: a.name):
            if a.type == a.GRAPH:
                sub = hashlib.sha256()
                _graph(a.g, sub)
                attrs.append([a.name, sub.hexdigest()])
            elif a.type == a.GRAPHS:
                attrs.append([a.name, [_subgraph_hex(g) for g in a.graphs]])
            elif a.type == a.TENSOR:
                attrs.append([a.name, _tensor_sig(a.t)])
            else:
                attrs.append([a.name, str(_attr_value(a))])
        row = [node.domain or "ai.onnx", node.op_type, [ref(i) for i in node.input],
               [ref(o) for o in node.output], attrs]
        h.update(json.dumps(row).encode())
    h.update(json.dumps([["out", ref(v.name), _type_sig(v)] for v in graph.output]).encode())


def _subgraph_hex(g: Any) -> str:
    sub = hashlib.sha256()
    _graph(g, sub)
    return sub.hexdigest()


def _attr_value(a: Any) -> Any:
    from onnx import helper

    return helper.get_attribute_value(a)


class MeasurementCache:
    """In-memory cache of measurements, optionally persisted as one JSON file per key under `directory`."""

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: dict[str, Measurement] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(onnx_path: str | os.PathLike, profile: DeviceProfile,
            reference_path: str | os.PathLike | None = None, kernels: str | None = None) -> str:
        """`kernels` (`search.compress.runs.kernel_signature`): what the device's session runs for each layer. A
        quantized file's structure does not say it alone: QDQ fusions can depend on scale and zero-point
        values, so a re-calibrated file shares the untrained one's measurement only when its kernels agree."""
        ref = structure_key(reference_path) if reference_path is not None else "-"
        return _digest(KEY_VERSION, structure_key(onnx_path), profile.digest(), ref, *([kernels] if kernels else []))

    def get(self, key: str) -> Measurement | None:
        with self._lock:
            found = self._memory.get(key)
        if found is None:
            text = self._read(key)
            try:
                found = Measurement.from_json(text) if text is not None else None
            except ValueError:  # torn by a crash long ago: measure again
                found = None
            if found is not None:
                with self._lock:
                    self._memory[key] = found
        return found

    def put(self, key: str, measurement: Measurement) -> None:
        with self._lock:
            self._memory[key] = measurement
        self._write(key, measurement.to_json())

    def measure(self, onnx_path: str | os.PathLike, profile: DeviceProfile, backend: Backend,
                reference_path: str | os.PathLike | None = None, *, recheck: bool = False,
                kernels: str | None = None) -> Measurement:
        """The cached measurement of this structure on this profile, or a new one (failures not cached).

        A record is kept as the backend returned it, drift anchor included: the backend owns the anchor
        (search.measure.record.Baselines), and a study gives every backend of its workers the same one.
        `recheck`: on a hit, time the structure once more in one fresh round (`_recheck`); the backend must
        then take `rounds` and `max_rounds` keywords (LocalBackend, RemoteBackend)."""
        key = self.key(onnx_path, profile, reference_path, kernels)
        found = self.get(key)
        with self._lock:
            self.hits += found is not None
            self.misses += found is None
        if found is None:
            found = backend.measure(onnx_path, reference_path)
            self.put(key, found)
        elif recheck:
            found = self._recheck(key, found, onnx_path, profile, backend, reference_path)
        return found

    def _recheck(self, key: str, cached: Measurement, onnx_path: str | os.PathLike, profile: DeviceProfile,
                 backend: Backend, reference_path: str | os.PathLike | None) -> Measurement:
        """One check round against the cached value; more than 2 x agree off, the cached rounds may all have
        come from one slow mode, so measure again by the agreement rule and keep every round seen."""
        before = _value(cached)
        if before is None:  # stopped by the memory limit: nothing timed to check
            return cached
        check = backend.measure(onnx_path, reference_path, rounds=1, max_rounds=1)
        now = _value(check)
        if now is not None and abs(now - before) <= 2 * profile.measure.agree * before:
            kept = dataclasses.replace(cached, rechecked=cached.rechecked + 1)
            self.put(key, kept)
            return kept
        fresh = backend.measure(onnx_path, reference_path)
        # Stopped by the memory limit this time: the fresh record says so; nothing to merge.
        replaced = fresh if _value(fresh) is None else _merge(cached, check, fresh, profile.measure.agree)
        replaced = dataclasses.replace(replaced, rechecked=cached.rechecked + 1, replaced=cached.replaced + 1)
        self.put(key, replaced)
        return replaced

    def _read(self, key: str) -> str | None:
        if self.directory is None:
            return None
        try:
            return (self.directory / f"{key}.json").read_text(encoding="utf-8")
        except OSError:
            return None

    def _write(self, key: str, text: str) -> None:
        if self.directory is not None:  # atomic: another worker reads the old entry or the whole new one
            atomic_write_text(self.directory / f"{key}.json", text)


def _value(m: Measurement) -> float | None:
    """What a re-check compares: the p50 ratio to the reference, else the raw p50."""
    if m.ratio_p50 is not None:
        return m.ratio_p50
    return m.latency.p50_ms if m.latency is not None else None


def _rounds(m: Measurement) -> list[float]:
    """A record's per-round values (`_value` per round); one value for a record from before round_ratios."""
    per_round = m.round_ratios if m.ratio_p50 is not None else m.round_p50_ms
    if per_round:
        return list(per_round)
    value = _value(m)
    return [] if value is None else [value]


def _merge(cached: Measurement, check: Measurement, fresh: Measurement, agree: float) -> Measurement:
    """The fresh record with every round seen (cached + check + fresh); with a reference its p50 ratio is the
    median of the rounds that agree among all of them (of all when they do not). p90/mean ratios, raw latency
    and memory stay the fresh record's: only the p50 per round is kept."""
    values = _rounds(cached) + _rounds(check) + _rounds(fresh)
    agreed = rounds_agree(values, agree)
    used = [values[i] for i in agreeing(values, agree)] if agreed else values
    common = {"rounds": cached.rounds + check.rounds + fresh.rounds, "spread": spread(values), "agreed": agreed}
    if fresh.ratio_p50 is None:  # no reference: the raw latency of the fresh rounds, every round listed
        return dataclasses.replace(fresh, round_p50_ms=values, **common)
    p50s = (cached.round_p50_ms or []) + (check.round_p50_ms or []) + (fresh.round_p50_ms or [])
    return dataclasses.replace(fresh, round_ratios=values, round_p50_ms=p50s or None,
                               ratio_p50=statistics.median(used), **common)


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]
