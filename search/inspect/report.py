"""The study report: ONE self-contained HTML file (plotly.js inline, no network) built from the front.

Plots read `StudyData.all_trials` (the same computed value as the table, the CSV and the JSON); the
plan details in the hover text come from the trial records.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from search.compress.bits import BITS_TO_PRECISION
from search.inspect.front import Reference, hypervolume_history, reference_point
from search.inspect.seeded import seeded_section, units_section
from search.metrics import points, show
from search.study.record import (
    B_PROMOTE,
    BASELINES,
    O_ALLOCATED,
    O_BASELINE,
    O_SAMPLED,
    O_UNIFORM,
    S_LAYERS,
    S_SPACE,
    TrialRecord,
)
from search.utils.atomic import atomic_write_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from search.inspect.view import StudyData

PLOT_IDS = ("pareto-latency", "pareto-memory", "hypervolume", "layers")
# One open marker ringed around each named baseline (not strict: more uniform ones share their origin's symbol).
BASELINE_SYMBOLS = dict(zip(BASELINES, ("star", "diamond", "square", "triangle-up"), strict=False))
# The filled marker's shape says where the plan came from (colour says front/feasible/infeasible); shapes
# unlike the baseline rings so a ringed point still reads.
ORIGIN_SYMBOLS = {O_SAMPLED: "circle", O_ALLOCATED: "hexagon", O_UNIFORM: "triangle-down", O_BASELINE: "cross"}
BIT_LABELS = {32: "32 fp32", 16: "16 A16W8", 8: "8 A8W8", 4: "4 A8W4"}
BUDGET_ZOOM = 2.0  # a budget line further out than this many times the slowest/largest point goes off scale
FRONT_COLOR, FEASIBLE_COLOR, INFEASIBLE_COLOR, BUDGET_COLOR = "#d62728", "#1f77b4", "#b0b0b0", "#8c2d04"
CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1360px}
h1{margin:0 0 4px}h2{margin:28px 0 8px;border-bottom:1px solid #ddd}.muted{color:#666}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px}.card b{display:block;font-size:1.2em}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f3f3f3}pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:12px}"""


def _hover(row: pd.Series, rec: TrialRecord | None, metric: str = "top-1", percent: bool = True) -> str:
    plan = (rec.plan or {}) if rec else {}
    unit = points(percent)
    parts = [f"<b>trial {row.trial}</b>" + (f" ({row.baseline})" if row.baseline else ""),
             f"origin {row.origin}, trained: {row.budget}",
             f"val {metric} {show(row.accuracy, percent)} ({row.acc_change:+.2f} {unit})"]
    if isinstance(row.test_accuracy, float) and not math.isnan(row.test_accuracy):
        parts.append(f"test {metric} {show(row.test_accuracy, percent)} ({row.test_change:+.2f} &plusmn; "
                     f"{row.test_se:.2f} {unit}, {row.test_verdict})")
    parts += [f"latency {row.latency_ms:.4g} ms ({row.speedup:.2f}x)", f"memory {row.memory_mb:.3g} MB",
             f"pruned {row.mean_prune:.0%} mean (applied), {row.quant_share:.0%} layers run integer kernels",
             f"T {row.temperature:.3g}, alpha {plan.get('alpha', math.nan):.2f}"]
    if rec is not None and rec.refined_from is not None:
        parts.append(f"{'promoted' if rec.budget == B_PROMOTE else 'refined'} from trial {rec.refined_from}")
    if not row.feasible:
        parts.append("infeasible")
    return "<br>".join(parts)


def pareto_figure(view: StudyData, x: str, xlabel: str, budget: float | None, ref: Reference) -> go.Figure:
    import plotly.graph_objects as go

    df = view.all_trials
    df = df[(df.state == "COMPLETE") & df.accuracy.notna()]
    records = {r.number: r for r in view.trials}
    fig = go.Figure()
    groups = (("infeasible", ~df.feasible, INFEASIBLE_COLOR, 7), ("feasible", df.feasible & ~df.on_front,
              FEASIBLE_COLOR, 8), ("Pareto front", df.on_front, FRONT_COLOR, 12))
    for name, mask, color, size in groups:
        part = df[mask]
        fig.add_trace(go.Scatter(
            x=part[x], y=part.accuracy, mode="markers", name=f"{name} ({len(part)})",
            marker={"color": color, "size": size, "line": {"width": 1, "color": "white"},
                    "symbol": [ORIGIN_SYMBOLS.get(o, "circle") for o in part.origin]},
            text=[_hover(r, records.get(r.trial), view.metric_name, view.percent) for r in part.itertuples()],
            hoverinfo="text"))
    for origin, symbol in ORIGIN_SYMBOLS.items():  # legend key only: the shapes live on the traces above
        if n := int((df.origin == origin).sum()):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"origin {origin} ({n})",
                                     hoverinfo="skip", marker={"symbol": symbol, "size": 10, "color": "#555"}))
    for name, symbol in BASELINE_SYMBOLS.items():
        part = df[df.baseline == name]
        if len(part):
            fig.add_trace(go.Scatter(
                x=part[x], y=part.accuracy, mode="markers", name=f"baseline {name}", hoverinfo="skip",
                marker={"symbol": f"{symbol}-open", "size": 18, "color": "black", "line": {"width": 2}}))
    top = float(df[x].max()) if len(df) else (budget or 1.0)
    if budget and budget <= BUDGET_ZOOM * top:
        fig.add_vline(x=budget, line={"dash": "dash", "color": BUDGET_COLOR},
                      annotation_text=f"budget {budget:g}", annotation_position="top left")
        top = max(top, budget)
    elif budget:  # far beyond every point: drawing it would squash the points into one corner
        fig.add_annotation(text=f"budget {budget:g} (off scale)", xref="paper", yref="paper", x=1, y=1.04,
                           showarrow=False, font={"color": BUDGET_COLOR})
    if x == "latency_ms":  # from zero, so distances read as speedups
        fig.update_xaxes(range=[0, top * 1.08])
    else:  # memory carries ONNX Runtime's fixed ~10 MB: from zero every model would sit in one spot
        low = float(df[x].min()) if len(df) else 0.0
        pad = max(0.05 * (top - low), 0.02 * top, 1e-9)
        fig.update_xaxes(range=[low - pad, top + pad])
    if ref.floor:
        fig.add_hline(y=ref.accuracy, line={"dash": "dash", "color": BUDGET_COLOR},
                      annotation_text="accuracy floor", annotation_position="bottom right")
    fig.update_layout(title=f"Accuracy vs {xlabel}", xaxis_title=xlabel,
                      yaxis_title=f"{view.metric_name} (ONNX Runtime)", yaxis_tickformat=".1%" if view.percent else "",
                      height=520, margin={"l": 60, "r": 20, "t": 50, "b": 50},
                      legend={"orientation": "h", "y": -0.18})
    return fig


def hypervolume_figure(view: StudyData, ref: Reference) -> go.Figure:
    import plotly.graph_objects as go

    hv = hypervolume_history(view.trials, ref)
    fig = go.Figure(go.Scatter(x=hv.trial, y=hv.hypervolume, mode="lines+markers", line={"shape": "hv"},
                               hovertemplate="after trial %{x}: %{y:.4f}<extra></extra>"))
    fig.update_layout(title="Hypervolume of the feasible trials so far (share of the reference box)",
                      xaxis_title="trial", yaxis_title="hypervolume", yaxis_rangemode="tozero", height=420,
                      margin={"l": 60, "r": 20, "t": 50, "b": 90})
    fig.add_annotation(text=ref.note, xref="paper", yref="paper", x=0, y=-0.28, showarrow=False,
                       font={"size": 10}, align="left")
    return fig


def _layer_order(view: StudyData, plans: list[dict]) -> list[str]:
    known = view.attrs.get(S_LAYERS) or {}
    order = [*known.get("quantizable", []), *known.get("groups", {})]  # graph order first
    for p in plans:
        order += [*p.get("prune", {}), *p.get("bits", {})]
    return list(dict.fromkeys(order))


def prune_ratio(view: StudyData, plan: dict, layer: str, applied: dict | None = None) -> float | None:
    """The share of output channels a layer lost: its own, or its group's deciding layer's (channels coupled
    to it, e.g. a depthwise conv after its expand conv, go with it); None when the layer is not prunable.
    `applied` (the trial's T_PRUNED record) gives what was removed; without it, what was asked."""
    ratios = {k: v["applied"] for k, v in applied.items()} if applied else plan.get("prune", {})
    if layer in ratios:
        return ratios[layer]
    groups = (view.attrs.get(S_LAYERS) or {}).get("groups", {})
    decider = next((d for d, members in groups.items() if layer in members and d in ratios), None)
    return ratios[decider] if decider is not None else None


def layers_figure(view: StudyData) -> go.Figure:
    """Per-layer pruning ratio and bit-width of each front point (rows fastest first, as the table);
    "-" marks a layer that cannot be pruned."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    records = {r.number: r for r in view.trials}
    trials = list(view.front.trial)
    plans = [records[n].plan or {} for n in trials]
    layers = _layer_order(view, plans)
    rows = [f"trial {n}" for n in trials]
    prune = [[prune_ratio(view, p, layer, records[n].pruned) for layer in layers] for n, p in zip(trials, plans,
                                                                                                    strict=True)]
    runs = [[_runs(records[n], p, layer) for layer in layers] for n, p in zip(trials, plans, strict=True)]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("pruning ratio applied (share of output channels removed)",
                                        "what ONNX Runtime runs (requested bits; * where it differs)"))
    fig.add_trace(go.Heatmap(z=prune, x=layers, y=rows, zmin=0, zmax=max([0.75, *(v for r in prune for v in r if v)]),
                             colorscale="Blues", text=[["-" if v is None else f"{v:.2f}" for v in r] for r in prune],
                             texttemplate="%{text}", colorbar={"y": 0.8, "len": 0.45, "title": "ratio"},
                             hovertemplate="%{y}, %{x}: pruned %{z:.0%}<extra></extra>"), 1, 1)
    fig.add_trace(go.Heatmap(z=[[KERNEL_CODE_OF.get(k, 0) for _, k, _ in r] for r in runs], x=layers, y=rows,
                             zmin=-0.5, zmax=3.5, colorscale=[[0, "#f0f0f0"], [0.33, "#fdd49e"], [0.67, "#fc8d59"],
                                                              [1, "#b30000"]],
                             text=[[f"{b}{'*' if d else ''}" for b, _, d in r] for r in runs], texttemplate="%{text}",
                             customdata=[[f"asked {BIT_LABELS.get(b, str(b))}, runs {k}" for b, k, _ in r]
                                         for r in runs],
                             colorbar={"y": 0.2, "len": 0.45, "title": "runs as", "tickvals": [0, 1, 2, 3],
                                       "ticktext": list(KERNEL_CODES)},
                             hovertemplate="%{y}, %{x}: %{customdata}<extra></extra>"), 2, 1)
    fig.update_layout(title="Per-layer plan of the front points (rows: fastest first)",
                      height=260 + 2 * 30 * max(len(rows), 3), margin={"l": 80, "r": 20, "t": 70, "b": 120})
    fig.update_xaxes(tickangle=-45)
    fig.update_yaxes(autorange="reversed")  # first row on top, as in the front table
    if not trials:
        fig.add_annotation(text="no feasible front yet", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


# Kernels ONNX Runtime runs a layer with (search.compress.runs), coloured from float to 4-bit integer.
KERNEL_CODES = {"fp32": 0, "float-dequant": 1, "int8": 2, "int4": 3}
KERNEL_CODE_OF = {**KERNEL_CODES, "int8-dynamic": 2}  # dynamic int8 shares int8's colour; the hover names it


def _runs(rec: TrialRecord, plan: dict, layer: str) -> tuple[int, str, bool]:
    """(requested bits, kernel it runs as, differs) for one layer; what was asked when not recorded."""
    entry = (rec.precision or {}).get(layer)
    if entry:
        return int(entry["requested"]), str(entry["runs_as"]), bool(entry.get("differs"))
    b = int(plan.get("bits", {}).get(layer, 32))
    return b, BITS_TO_PRECISION.get(b, str(b)), False


def not_applied(view: StudyData) -> pd.DataFrame:
    """Front points' layers where what runs differs from the plan: a requested pruning ratio that removed
    less (with its reason) or a bit-width ONNX Runtime does not run as asked."""
    records = {r.number: r for r in view.trials}
    rows = []
    for n in view.front.trial:
        rec = records[n]
        for layer, e in (rec.pruned or {}).items():
            # under half of the ratio asked (flooring to the channel multiple alone removes less than asked)
            short = e.get("requested", 0) > 0 and e.get("applied", 0) + 1e-9 < e["requested"] * 0.5
            if short or e.get("reason"):
                rows.append({"trial": n, "layer": layer, "asked": f"prune {e['requested']:.0%}",
                             "got": f"{e.get('applied', 0):.0%} removed", "why": e.get("reason", "")})
        for layer, e in (rec.precision or {}).items():
            if e.get("differs"):
                rows.append({"trial": n, "layer": layer, "asked": f"{e['requested']} bits", "got": e["runs_as"],
                             "why": e.get("why", "what ONNX Runtime's optimised graph runs")})
    return pd.DataFrame(rows, columns=["trial", "layer", "asked", "got", "why"])


FORMATS = {"accuracy": "{:.2%}", "acc_change": "{:+.2f}", "test_accuracy": "{:.2%}", "test_change": "{:+.2f}",
           "test_se": "{:.2f}", "latency_ms": "{:.4g}", "speedup": "{:.2f}x",
           "memory_mb": "{:.3g}", "model_mb": "{:.3g}", "size_ratio": "{:.2f}x", "mean_prune": "{:.0%}",
           "quant_share": "{:.0%}", "temperature": "{:.3g}"}


RAW_FORMATS = {"acc_change": "{:+.3g}", "test_change": "{:+.3g}", "test_se": "{:.3g}"}


def format_cell(column: str, value: Any, percent: bool = True) -> str:
    """One cell as the table, the report and the CLI show it (`percent`: accuracy is a share, else a metric
    shown in its own unit)."""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if column in ("accuracy", "test_accuracy"):
            return show(value, percent)
        if not percent and column in RAW_FORMATS:  # a change in the metric's unit: significant digits
            return RAW_FORMATS[column].format(value)
        return FORMATS.get(column, "{:.4g}").format(value)
    return str(value)


def html_table(df: pd.DataFrame, percent: bool = True) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_cell(c, v, percent))}</td>" for c, v in row.items())
                   + "</tr>"
                   for row in df.to_dict("records"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _yaml(data: Any) -> str:
    import yaml

    return html.escape(yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100))


def build_html(view: StudyData) -> str:
    import plotly.offline

    profile = view.profile
    ref = reference_point(view.attrs, profile.budgets)
    figures = (pareto_figure(view, "latency_ms", "latency (ms)", profile.budgets.latency_ms, ref),
               pareto_figure(view, "memory_mb", "peak memory (MB)", profile.budgets.memory_mb, ref),
               hypervolume_figure(view, ref), layers_figure(view))
    divs = {pid: fig.to_html(full_html=False, include_plotlyjs=False, div_id=pid,
                             config={"displaylogo": False, "responsive": True})
            for pid, fig in zip(PLOT_IDS, figures, strict=True)}
    df, teacher = view.all_trials, view.teacher
    complete = df[df.state == "COMPLETE"]
    failed = df[df.state != "COMPLETE"][["trial", "state", "fail_reason"]]
    t_test, pct = view.teacher_test.get("accuracy"), view.percent
    cards = [("task", view.task_spec), ("device", profile.name),
             ("trials", f"{len(complete)} complete / {len(df)}"),
             ("feasible", str(int(complete.feasible.sum()))), ("on the front", str(len(view.front))),
             ("teacher", f"val {show(teacher.get('accuracy', math.nan), pct)}"
                         + (f", test {show(t_test, pct)}" if t_test is not None else "")
                         + f", {teacher.get('latency_ms', math.nan):.4g} ms"
                         + f", {teacher.get('memory_mb', math.nan):.3g} MB")]
    protocol = ("Accuracy: <b>val</b> (the selection set) chose every point; <b>test</b> is the held-out split, "
                "scored once per front point after the search; test_change is against the teacher on the same "
                "images, &plusmn; test_se (paired standard error); within 2 standard errors it reads "
                "&ldquo;within noise&rdquo;." if view.has_test else
                "This task has no held-out test split: the accuracies shown are the selection set's, the same "
                "data that chose the front, not a held-out estimate.")
    gaps = not_applied(view)
    seeded_html, unit_html = seeded_section(view.seeded, html_table, view.sensitivity), units_section(view.units)
    card_html = "".join(f'<div class="card"><span class="muted">{html.escape(k)}</span><b>{html.escape(v)}</b></div>'
                        for k, v in cards)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    from search import __version__

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hwsearch report: {html.escape(view.name)}</title>
<style>{CSS}</style>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script></head>
<body><h1>Study {html.escape(view.name)}</h1>
<p class="muted">hwsearch {__version__}, generated {now}. Hover a point for its trial and plan;
export one with <code>hwsearch export --study {html.escape(view.name)} --trial N --out DIR --verify</code>.</p>
<div class="cards">{card_html}</div>
<h2>Pareto front</h2><p class="muted">Red: the front (non-dominated, feasible); blue: feasible; grey: infeasible.
Shape: where the plan came from (origin: sampled, allocated by sensitivity, uniform baseline, training-free
baseline; a refinement keeps its source's); open black symbols ring the named baselines; dashed lines: the
profile's budgets and the accuracy floor. The table's budget column is the distillation each point got.</p>
<div class="grid"><div>{divs["pareto-latency"]}</div><div>{divs["pareto-memory"]}</div></div>
<h2>Front table</h2><p class="muted">{protocol}</p>{html_table(view.front, view.percent)}
<h2>Per-layer plans</h2>{divs["layers"]}
<h3>Asked but not applied as asked</h3>
{html_table(gaps) if len(gaps) else "<p>none: every front point runs as planned</p>"}
{seeded_html}
<h2>Search units</h2><p class="muted">One pruning ratio and one bit-width is searched per unit (the space's
granularity: a block is a repeated unit of the network such as a residual block).</p>{unit_html}
<h2>Search progress</h2>{divs["hypervolume"]}
<h2>Trials that did not complete</h2>{html_table(failed) if len(failed) else "<p>none</p>"}
<h2>Setup</h2><div class="grid"><div><h3>Device profile ({html.escape(profile.digest())})</h3>
<pre>{_yaml(profile.model_dump(mode="json"))}</pre></div>
<div><h3>Search space</h3><pre>{_yaml(view.attrs.get(S_SPACE, {}))}</pre></div></div>
</body></html>
"""


def write_report(view: StudyData, path: Path) -> Path:
    return atomic_write_text(path, build_html(view))
