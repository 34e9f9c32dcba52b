"""The Measurement record: what every backend (local or remote agent) returns for one candidate model.

The record's field names are also the JSON the agent answers with (runner.measure builds that dict), so a
remote measurement parses with `Measurement.from_dict` exactly like a local one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from dataclasses import dataclass
from typing import Any, Literal

Statistic = Literal["p50", "p90", "mean"]
STATISTICS: tuple[str, ...] = ("p50", "p90", "mean")


def _check(statistic: str) -> str:
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    return statistic


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one inference call at the record's batch, over all timed runs of the rounds used."""

    p50_ms: float
    p90_ms: float
    mean_ms: float
    cv: float  # standard deviation / mean of the timed runs
    runs: int

    def get(self, statistic: str) -> float:
        return float(getattr(self, f"{_check(statistic)}_ms"))


_NESTED = ("latency", "reference", "reference_baseline")


@dataclass(frozen=True)
class Measurement:
    """Latency and peak memory of one ONNX model on one device profile.

    Latency: `latency` is the candidate's raw figures (over the rounds that agreed, `agreed`). When a
    reference model was measured in the same rounds, `reference` holds its figures, `ratio_*` the
    candidate/reference ratio (median over those rounds) and `corrected(stat)` = ratio x
    `reference_baseline` (a fixed reference latency, measured once per backend or passed in), which
    cancels drift between rounds. `objective(stat)` is what a study minimises.
    Memory (MB, at `memory_batch`): `memory_total_mb` is the peak-RSS growth of loading and running the
    model (ONNX Runtime + model), `memory_overhead_mb` ONNX Runtime's fixed share (a tiny model, same
    settings), `memory_model_mb` the difference. `over_budget` is true when the total breaks the profile's
    memory budget; `error` is set when the hard memory limit stopped the model (total is then a lower bound
    and there is no latency).
    """

    latency: LatencyStats | None
    memory_total_mb: float | None
    memory_model_mb: float | None
    memory_overhead_mb: float | None
    batch: int
    memory_batch: int
    threads: int
    rounds: int
    ort_version: str
    device: str
    backend: str
    reference: LatencyStats | None = None
    ratio_p50: float | None = None
    ratio_p90: float | None = None
    ratio_mean: float | None = None
    reference_baseline: LatencyStats | None = None
    over_budget: bool = False
    error: str | None = None
    memory_limit_mb: float | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    # Per-round evidence (runner.rounds_agree): p50 ratio to the reference per round (None without one), the
    # candidate's p50 per round, (max - min) / median of the values judged, whether a majority agreed.
    # Defaults keep records of older agents and caches readable.
    round_ratios: list[float] | None = None
    round_p50_ms: list[float] | None = None
    spread: float | None = None
    agreed: bool = False
    # Cache re-checks (MeasurementCache.measure(recheck=True)): check rounds run, and re-measurements they caused.
    rechecked: int = 0
    replaced: int = 0

    # ---- drift ------------------------------------------------------------------------------------------
    def ratio(self, statistic: str = "p50") -> float | None:
        return getattr(self, f"ratio_{_check(statistic)}")

    def corrected(self, statistic: str = "p50") -> float | None:
        """Drift-corrected latency: same-round ratio x the fixed reference baseline (None without one)."""
        ratio = self.ratio(statistic)
        base = self.reference_baseline or self.reference
        return None if ratio is None or base is None else ratio * base.get(statistic)

    def objective(self, statistic: str = "p50") -> float:
        """The latency a study minimises: corrected when a reference was measured, else raw; inf when the
        model was stopped before it could be timed."""
        corrected = self.corrected(statistic)
        if corrected is not None:
            return corrected
        return self.latency.get(statistic) if self.latency is not None else math.inf

    @property
    def reference_p50_ms(self) -> float | None:
        return self.reference.p50_ms if self.reference else None

    @property
    def corrected_p50_ms(self) -> float | None:
        return self.corrected("p50")

    @property
    def stopped(self) -> bool:
        """True when the memory limit stopped the model (no latency)."""
        return self.error is not None

    # ---- serialisation ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """Parse a record (ours or an agent's); unknown keys are ignored so newer agents stay readable."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for key in _NESTED:
            if isinstance(kwargs.get(key), dict):
                fields = dataclasses.fields(LatencyStats)
                kwargs[key] = LatencyStats(**{f.name: kwargs[key][f.name] for f in fields})
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ValueError(f"not a measurement record: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Measurement:
        return cls.from_dict(json.loads(text))

    def finalize(self, *, baseline: LatencyStats | None, memory_budget_mb: float | None,
                 backend: str | None = None) -> Measurement:
        """Attach the fixed reference baseline and judge the memory budget (shared by both backends)."""
        over = self.over_budget or (memory_budget_mb is not None and self.memory_total_mb is not None
                                    and self.memory_total_mb > memory_budget_mb)
        return dataclasses.replace(self, reference_baseline=baseline if self.reference else None,
                                   over_budget=over, backend=backend or self.backend)


class Baselines:
    """The fixed reference latency per reference model: the first measurement's same-round reference
    figures (or one passed in), kept for the backend's lifetime so later rounds correct against it."""

    def __init__(self, fixed: LatencyStats | None = None) -> None:
        self._fixed = fixed
        self._seen: dict[str, LatencyStats] = {}
        self._lock = threading.Lock()

    def get(self, key: str, record: Measurement) -> LatencyStats | None:
        if self._fixed is not None:
            return self._fixed
        with self._lock:
            if key not in self._seen and record.reference is not None:
                self._seen[key] = record.reference
            return self._seen.get(key)
