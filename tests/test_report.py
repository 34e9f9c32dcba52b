"""The HTML report: self-contained, renders every plot in a real browser, draws what the front says."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from _inspect_fixtures import cli_args, real_study_once
from conftest import run_cli

from search.inspect import load_study
from search.inspect.front import reference_point
from search.inspect.report import (
    BASELINE_SYMBOLS,
    INFEASIBLE_COLOR,
    ORIGIN_SYMBOLS,
    PLOT_IDS,
    layers_figure,
    pareto_figure,
)
from search.study.record import S_LAYERS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium); "
    "the browser check of the report cannot run")


pytestmark = pytest.mark.slow  # a real search.run study (about a minute, shared by the three files)


@pytest.fixture(scope="module")
def real_study():
    return real_study_once()


@pytest.fixture(scope="module")
def report(real_study, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    r = run_cli("plot", *cli_args(real_study), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {out}"
    return out


def browse(page: Path, tmp: Path) -> tuple[str, list[str]]:
    """(rendered DOM, console messages) of `page` in headless Chromium, scripts run to completion."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=15000", "--dump-dom", page.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    # Chromium logs every console message (log, warning, error, uncaught exception) as INFO:CONSOLE.
    return r.stdout, [line for line in r.stderr.splitlines() if ":CONSOLE" in line]


def plot_sections(dom: str) -> dict[str, str]:
    """Each plot's div, from its opening tag to the next plot's (the plots are siblings in page order)."""
    starts = sorted((m.start(), pid) for pid in PLOT_IDS for m in re.finditer(f'<div id="{pid}"', dom))
    assert sorted(pid for _, pid in starts) == sorted(PLOT_IDS)
    ends = [s for s, _ in starts[1:]] + [len(dom)]
    return {pid: dom[s:e] for (s, pid), e in zip(starts, ends, strict=True)}


def test_run_writes_report_and_front_csv(real_study):
    view = load_study(real_study.name, results=real_study.results)
    assert (real_study.folder / "report.html").stat().st_size > 1_000_000  # plotly.js is inline
    csv = pd.read_csv(real_study.folder / "front.csv")
    assert list(csv.trial) == list(view.front.trial)


def test_report_is_self_contained(report, real_study):
    text = report.read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I), "the report must not load scripts"
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']https?:", text, re.I)
    for pid in PLOT_IDS:
        assert f'id="{pid}"' in text
    view = load_study(real_study.name, results=real_study.results)
    assert view.profile.name in text and view.space.name in text
    for n in view.front.trial:
        assert f"<td>{n}</td>" in text
    for origin in set(view.all_trials[view.all_trials.state == "COMPLETE"].origin):  # table cell, legend key
        assert f"origin {origin} (" in text
    assert all(f"<td>{o}</td>" in text for o in view.front.origin)


@needs_chromium
def test_report_renders_in_chromium(report, tmp_path):
    dom, console = browse(report, tmp_path)
    assert console == [], f"console messages: {console}"
    for pid, section in plot_sections(dom).items():
        opening = section[: section.index(">") + 1]
        assert "js-plotly-plot" in opening, f"{pid} was not turned into a plot"
        assert 'class="main-svg"' in section, f"{pid} drew no SVG"


@needs_chromium
def test_browser_check_catches_script_errors(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<html><body><div id="x"></div><script>throw new Error("boom")</script></body></html>')
    _, console = browse(page, tmp_path)
    assert any("Uncaught Error: boom" in line for line in console)


def test_pareto_plot_marks_front_infeasible_baselines_and_budgets(real_study):
    view = load_study(real_study.name, results=real_study.results)
    ref = reference_point(view.attrs, view.profile.budgets)
    df = view.all_trials
    top = float(df.latency_ms.max())
    fig = pareto_figure(view, "latency_ms", "latency (ms)", top * 1.2, ref)
    traces = {t.name.split(" (")[0]: t for t in fig.data}
    front = traces["Pareto front"]
    assert sorted(int(re.search(r"trial (\d+)", h).group(1)) for h in front.text) == sorted(view.front.trial)
    assert all("prune" in h and "T " in h and "latency" in h for h in front.text)  # plan summary on hover
    rows = view.front.set_index("trial")
    for h, symbol in zip(front.text, front.marker.symbol, strict=True):
        row = rows.loc[int(re.search(r"trial (\d+)", h).group(1))]
        assert f"origin {row.origin}, trained: {row.budget}" in h and symbol == ORIGIN_SYMBOLS[row.origin]
    complete = df[(df.state == "COMPLETE") & df.accuracy.notna()]
    assert {n for n in traces if n.startswith("origin ")} == {f"origin {o}" for o in set(complete.origin)}
    infeasible = traces["infeasible"]
    assert infeasible.marker.color == INFEASIBLE_COLOR and len(infeasible.x) == int((~df.feasible).sum())
    symbols = {t.marker.symbol for name, t in traces.items() if name.startswith("baseline ")}
    assert len(symbols) == len(set(df.baseline) & set(BASELINE_SYMBOLS))  # the named ones are ringed
    assert symbols <= {f"{s}-open" for s in BASELINE_SYMBOLS.values()}
    lines = {(s.x0, s.y0) for s in fig.layout.shapes}
    assert (top * 1.2, 0) in lines  # the budget, vertical
    assert any(y == pytest.approx(ref.accuracy) for _, y in lines)  # the accuracy floor, horizontal
    far = pareto_figure(view, "latency_ms", "latency (ms)", top * 50, ref)
    assert (top * 50, 0) not in {(s.x0, s.y0) for s in far.layout.shapes}
    assert any("off scale" in a.text for a in far.layout.annotations)


def test_layer_heatmap_shows_each_front_plan(real_study):
    view = load_study(real_study.name, results=real_study.results)
    fig = layers_figure(view)
    prune, bits = fig.data
    assert list(prune.y) == [f"trial {n}" for n in view.front.trial]
    records = {r.number: r for r in view.trials}
    coupled = {m: d for d, members in view.attrs[S_LAYERS]["groups"].items() for m in members}
    for row, n in enumerate(view.front.trial):
        rec = records[n]
        # What was removed (channel rounding makes it differ from the plan's ratio), as the title says.
        ratios = {layer: e["applied"] for layer, e in rec.pruned.items()}
        for col, layer in enumerate(prune.x):
            # A layer shows its own ratio, else the one of the layer whose channels it shares, else nothing.
            expected = ratios.get(layer, ratios.get(coupled.get(layer)))
            assert prune.z[row][col] == expected
            assert int(bits.text[row][col].rstrip("*")) == rec.plan["bits"].get(layer, 32)  # * : runs otherwise
    assert any(v is None for r in prune.z for v in r)  # the classifier is never pruned
