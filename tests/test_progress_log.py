"""Progress in a log: with stderr not a terminal, long work writes plain lines at a steady pace.

Real processes with their output going to a file or a pipe, as under nohup, tee or CI.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from _study_fixtures import make_results, write_configs
from conftest import REPO

from search.study.record import OBJECTIVES, S_TEACHER, T_FEASIBLE, T_STAGE_SECONDS

# A progress_bar loop: 3 epochs of 4 quick steps, then a step as long as two silences (no advance call).
BAR_SCRIPT = textwrap.dedent("""
    import time
    from search.utils.progress import progress_bar

    with progress_bar("training toy teacher", total=12, every=4) as bar:
        for step in range(12):
            time.sleep(2.4 if step == 9 else 0.15)
            bar.advance(1, f"loss {1 / (step + 1):.3f}")
""")


def _bar_env(silence_s: float) -> dict[str, str]:
    return {**os.environ, "HWSEARCH_PROGRESS_S": str(silence_s), "COLUMNS": "120"}


def test_progress_bar_writes_plain_lines_when_piped():
    proc = subprocess.Popen([sys.executable, "-c", BAR_SCRIPT], cwd=REPO, env=_bar_env(1.0), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    stamped = [(time.monotonic(), line.rstrip("\n")) for line in proc.stderr]
    assert proc.wait(30) == 0
    lines = [line for _, line in stamped]
    assert lines[0] == "training toy teacher: 0/12 steps (0%) elapsed 0s"
    assert re.fullmatch(r"training toy teacher: 12/12 steps \(100%\) loss 0\.083 in \d+s", lines[-1]), lines
    assert all(line.startswith("training toy teacher: ") for line in lines)
    assert not any("\x1b" in line or "\r" in line for line in lines)  # no escape codes, no redraws
    middle = lines[1:-1]
    assert any(re.search(r": \d+/12 steps \(\d+%\) loss [\d.]+ elapsed \d+s eta \d+s$", ln) for ln in middle), lines
    # The 2.4 s step: a heartbeat after 1 s of silence, the same line format, so the log never looks hung.
    gaps = [b - a for (a, _), (b, _) in zip(stamped, stamped[1:], strict=False)]
    assert max(gaps) < 2.0, (gaps, lines)


def test_progress_bar_stays_a_live_bar_on_a_terminal():
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", BAR_SCRIPT.replace("2.4", "0.15")], cwd=REPO,
                            env=_bar_env(60), stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    out = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 30)
        try:
            chunk = os.read(leader, 65536) if ready else b""
        except OSError:  # the child closed the terminal
            chunk = b""
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(30) == 0
    text = out.decode(errors="replace")
    assert "━" in text and "training toy teacher" in text  # rich's bar
    assert "steps (" not in text  # and none of the plain lines


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, digits_task):
    """`hwsearch run` with stdout and stderr both sent to one file, as `nohup hwsearch run ... > log 2>&1`."""
    folder = make_results(tmp_path_factory.mktemp("logged"), digits_task)
    space, profile = write_configs(folder)
    log = folder / "run.log"
    cmd = [sys.executable, "-m", "search", "run", "--task", "digits", "--space", str(space), "--device",
           str(profile), "--trials", "5", "--study", "logged", "--results", str(folder), "--seed", "2",
           "--train-on", "cpu"]
    with log.open("w") as out:  # a heartbeat after 1 s of silence: every trial stage lasts longer than that
        r = subprocess.run(cmd, cwd=REPO, env={**os.environ, "HWSEARCH_PROGRESS_S": "1"}, stdout=out,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=900)
    text = log.read_text()
    assert r.returncode == 0, text[-3000:]
    study = optuna.load_study(study_name="logged", storage=f"sqlite:///{folder / 'logged' / 'study.db'}")
    return text, study


@pytest.mark.slow  # a real study in a subprocess (about a minute)
def test_run_logs_one_line_per_trial(logged_run):
    text, study = logged_run
    lines = text.splitlines()
    assert not any("\x1b" in line or "\r" in line for line in lines)
    assert "study logged: 0/5 trials done; one line per finished trial" in lines
    teacher_ms = study.user_attrs[S_TEACHER]["latency_ms"]
    trials = study.get_trials()
    assert len(trials) == 5
    for t in trials:
        mine = [line for line in lines if line.startswith(f"trial {t.number} complete: ")]
        assert len(mine) == 1, (t.number, lines)
        line = mine[0]
        assert f"accuracy {t.values[0] * 100:.2f}%" in line
        assert f"speedup {teacher_ms / t.values[1]:.2f}x ({t.values[1]:.3f} ms)" in line
        assert (", feasible, " in line) == bool(t.user_attrs[T_FEASIBLE])
        assert re.search(r", front \d+ \| ", line)
        assert re.search(r" \| prune [\d.ms]+, .*measure [\d.ms]+, .* \([\d.ms]+\) \| ", line), line  # stage times
        assert re.search(rf"\| {t.number + 1}/5 trials, elapsed \S+(, eta \S+)?$", line), line
    # Heartbeats while a trial runs: its number, its stage and how long that stage has run.
    beats = re.findall(r"^trial (\d+): (\w+) \(\d+s, trial \d+s\)$", text, re.M)
    stages = {t.number: t.user_attrs[T_STAGE_SECONDS] for t in trials}
    assert beats and all(stage in stages[int(n)] for n, stage in beats), lines


@pytest.mark.slow
def test_run_names_the_objectives_and_prints_the_whole_front_table(logged_run):
    text, study = logged_run
    assert study.metric_names == list(OBJECTIVES)  # what optuna-dashboard labels its axes with
    table = text[text.index("study 'logged': "):]
    assert "memory_mb" in table and "…" not in table  # a log is not 80 columns: no column cut short
