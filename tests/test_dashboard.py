"""`hwsearch dashboard`: optuna-dashboard on a real study, opened in headless Chromium."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from _inspect_fixtures import cli_args, real_study_once
from conftest import REPO, free_port, run_cli, terminate

from search.study.record import OBJECTIVES, T_PLAN, T_PLAN_ARTIFACT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_dashboard = pytest.mark.skipif(
    importlib.util.find_spec("optuna_dashboard") is None,
    reason="optuna-dashboard is not installed (make test-deps installs it; pip install 'hwsearch[dashboard]')")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium); "
    "the browser check of the dashboard cannot run")


@pytest.fixture(scope="module")
def real_study():
    return real_study_once()


@pytest.fixture(scope="module")
def dashboard(real_study):
    """`hwsearch dashboard` serving the study on a free loopback port; yields (base URL, study id)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "search", "dashboard", *cli_args(real_study), "--port", str(port)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = _get_json(f"{base}/api/studies")["study_summaries"]
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the dashboard did not start: {proc.stderr.read() if proc.stderr else ''}")
                time.sleep(0.2)
        study_id = next(s["study_id"] for s in studies if s["study_name"] == real_study.name)
        yield base, study_id
    finally:
        terminate(proc)
        if proc.stderr:
            proc.stderr.close()


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def _browse(url: str, tmp: Path) -> str:
    """The DOM of `url` after its scripts ran (the dashboard is a JavaScript app that fetches its data)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
           "--disable-background-networking", "--disable-component-update", f"--user-data-dir={tmp / 'profile'}",
           "--virtual-time-budget=20000", "--dump-dom", url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.slow  # a real study (shared with the inspection tests) and a browser
@needs_dashboard
@needs_chromium
def test_dashboard_lists_the_study_and_names_its_objectives(dashboard, real_study, tmp_path):
    base, study_id = dashboard
    home = _browse(f"{base}/dashboard", tmp_path)
    assert f">1. {real_study.name}<" in home, home[-3000:]  # the study list
    page = _browse(f"{base}/dashboard/studies/{study_id}", tmp_path)
    # Objective names as labels (a selector's text, a plot legend), where an unnamed study shows "Objective 0".
    for name in OBJECTIVES:
        assert f">{name}<" in page or f'data-unformatted="{name}"' in page, (name, page[-3000:])
    assert "Objective 0" not in page
    # The same through its JSON API: the names the run stored.
    detail = _get_json(f"{base}/api/studies/{study_id}")
    assert detail["objective_names"] == list(OBJECTIVES)
    assert len(detail["trials"]) == len(optuna.load_study(study_name=real_study.name,
                                                          storage=_url(real_study)).trials)


@pytest.mark.slow
@needs_dashboard
def test_dashboard_serves_each_trials_plan_and_onnx(dashboard, real_study):
    base, study_id = dashboard
    st = optuna.load_study(study_name=real_study.name, storage=_url(real_study))
    trial = next(t for t in st.get_trials() if T_PLAN_ARTIFACT in t.user_attrs)
    detail = _get_json(f"{base}/api/studies/{study_id}")
    listed = next(t for t in detail["trials"] if t["number"] == trial.number)
    names = {a["filename"] for a in listed["artifacts"]}
    assert {"plan.json", "model.onnx"} <= names
    url = f"{base}/artifacts/{study_id}/{listed['trial_id']}/{trial.user_attrs[T_PLAN_ARTIFACT]}"
    with urllib.request.urlopen(url, timeout=30) as r:
        plan = json.load(r)
    assert plan["prune"] == trial.user_attrs[T_PLAN]["prune"]


def test_dashboard_without_the_extra_is_one_line_naming_it(tmp_path):
    """optuna-dashboard not importable (as in a plain `pip install hwsearch`): exit 2, one line."""
    code = ("import sys; sys.modules['optuna_dashboard'] = None; from search.cli import main; "
            "sys.exit(main(['dashboard', '--study', 'x', '--results', sys.argv[1]]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("hwsearch dashboard: error: optuna-dashboard is not installed: "
                                "pip install 'hwsearch[dashboard]'")


@needs_dashboard
def test_dashboard_on_a_missing_study_is_one_line(tmp_path):
    r = run_cli("dashboard", "--study", "nope", "--results", str(tmp_path), "--port", str(free_port()), timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no study 'nope'" in lines[0], r.stderr


def _url(study) -> str:
    return f"sqlite:///{study.folder / 'study.db'}"
