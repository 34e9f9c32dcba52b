"""Seeded plans (`hwsearch run --seed-plans`): what the additive sensitivity model predicted for each plan it
allocated, against what the trial measured (additive sensitivities are an approximation; this is its error);
and the report's sections on them and on the search units."""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from search.study.record import TrialRecord

COLUMNS = ("trial", "target", "target_ms", "predicted_ms", "latency_ms", "latency_error", "within_target",
           "predicted_accuracy", "accuracy", "trained")


def seeded_table(records: list[TrialRecord]) -> pd.DataFrame:
    """One row per completed seeded trial: latency error = measured / predicted - 1; the predicted accuracy is
    the untrained one-change sum, the measured one after the explore budget's distillation."""
    import pandas as pd

    rows = []
    for r in records:
        if r.seeded is None or r.state != "COMPLETE" or not r.values or not (r.predicted or {}).get("feasible"):
            continue
        p, latency = r.predicted, float(r.values[1])
        predicted_ms = float(p["latency_ms"])
        rows.append({"trial": r.number, "target": float(r.seeded), "target_ms": float(p["target_ms"]),
                     "predicted_ms": predicted_ms, "latency_ms": latency,
                     "latency_error": latency / predicted_ms - 1 if predicted_ms > 0 and math.isfinite(latency)
                     else math.nan,
                     "within_target": bool(latency <= float(p["target_ms"])),
                     "predicted_accuracy": float(p["accuracy"]), "accuracy": float(r.values[0]),
                     "trained": r.trained})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def seeded_section(table: pd.DataFrame, render: Callable[[pd.DataFrame], str]) -> str:
    if table.empty:
        return ""
    return ('<h2>Seeded plans: predicted vs measured</h2><p class="muted">Plans allocated from the per-unit '
            "sensitivity at latency targets (share of the teacher's); the additive model's latency error and the "
            "accuracy after the explore budget.</p>" + render(table))


def units_section(units: dict[str, Any]) -> str:
    out = "".join(f"<p><b>{axis}</b> ({len(names)}): {html.escape(', '.join(names)) or 'none'}</p>"
                  for axis, names in (("pruning", list(units["pruning"])),
                                      ("quantization", list(units["quantization"]))))
    if units["pruning_skipped"]:
        out += f'<p class="muted">Pruning skipped: {html.escape(units["pruning_skipped"])}</p>'
    return out
