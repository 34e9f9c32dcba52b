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
           "passes", "predicted_accuracy", "accuracy", "trained")


def seeded_table(records: list[TrialRecord]) -> pd.DataFrame:
    """One row per completed seeded trial: latency error = measured / predicted - 1 (the additive model's error;
    `passes`: plans the allocation measured on the device to meet the target, 0 for a study seeded before it
    did); the predicted accuracy is the untrained one-change sum, the measured one after the explore budget's
    distillation."""
    import pandas as pd

    from search.seeding.allocate import TOLERANCE

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
                     "within_target": bool(latency <= float(p["target_ms"]) * (1 + TOLERANCE)),
                     "passes": int(p.get("passes", 0)),
                     "predicted_accuracy": float(p["accuracy"]), "accuracy": float(r.values[0]),
                     "trained": r.trained})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def seeded_section(table: pd.DataFrame, render: Callable[[pd.DataFrame], str], sensitivity: pd.DataFrame) -> str:
    out = "" if sensitivity.empty else (
        '<h2>Sensitivity: what each unit costs and buys</h2><p class="muted">The teacher with one change (a unit '
        "pruned, or quantized), untrained: accuracy points lost against latency saved. Bottom right: cut it; top "
        "left: keep it.</p>" + sensitivity_figure(sensitivity).to_html(full_html=False, include_plotlyjs=False,
                                                                        div_id="sensitivity"))
    if table.empty:
        return out
    return out + ('<h2>Seeded plans: predicted vs measured</h2><p class="muted">Plans allocated from the per-unit '
                  "sensitivity at latency targets (share of the teacher's), each measured on the device before "
                  "training and solved again while it missed its target (passes); the additive model's latency "
                  "error and the accuracy after the explore budget.</p>" + render(table))


def sensitivity_figure(df: pd.DataFrame) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for kind, part in df.groupby("kind", sort=True):
        label = "pruned" if kind == "prune" else "quantized"
        fig.add_trace(go.Scatter(
            x=100 * part.latency_saved_frac, y=part.accuracy_drop, mode="markers", name=label,
            marker={"size": 9, "symbol": "circle" if kind == "prune" else "diamond"},
            text=[f"{u} {'ratio' if k == 'prune' else 'bits'} {v:g}" for u, k, v in
                  zip(part.unit, part.kind, part.value, strict=True)], hoverinfo="text+x+y"))
    fig.update_layout(xaxis_title="latency saved (% of the teacher's)", yaxis_title="accuracy lost (points, val)",
                      height=460, margin={"l": 60, "r": 20, "t": 30, "b": 50})
    return fig


def units_section(units: dict[str, Any]) -> str:
    out = "".join(f"<p><b>{axis}</b> ({len(names)}): {html.escape(', '.join(names)) or 'none'}</p>"
                  for axis, names in (("pruning", list(units["pruning"])),
                                      ("quantization", list(units["quantization"]))))
    if units["pruning_skipped"]:
        out += f'<p class="muted">Pruning skipped: {html.escape(units["pruning_skipped"])}</p>'
    return out
