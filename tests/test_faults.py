"""Fault suite: real study processes hit by Ctrl-C mid-stage, hung and crashing measurement processes, an
agent that goes away, a full results disk. Each time: one clear line, nothing finished is lost, the study
resumes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
from _study_fixtures import TINY_SPACE, make_results, write_configs
from conftest import REPO, free_port

import search
from search.study.record import T_FAIL_REASON, T_INTERRUPTED_FROM, T_STAGE

pytestmark = pytest.mark.slow
COMPLETE, FAIL, RUNNING, WAITING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                                    optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)


def _cmd(folder: Path, study: str, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "search", "run", "--task", "digits", "--space", str(folder / "space.yaml"),
            "--device", str(folder / "profile.yaml"), "--trials", str(trials), "--study", study,
            "--results", str(folder), "--no-progress", *extra]


def _start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    # A shell starts background jobs with SIGINT ignored and children inherit it (CI may run us so):
    # give the worker the disposition a terminal's foreground process has.
    return subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


class Watch:
    """Polls a study's storage while a worker process writes it (connects once the study exists)."""

    def __init__(self, url: str, name: str, proc: subprocess.Popen) -> None:
        self.url, self.name, self.proc = url, name, proc
        self.storage: optuna.storages.BaseStorage | None = None
        self.study_id = -1

    def trials(self, states=None) -> list[optuna.trial.FrozenTrial]:
        if self.storage is None:
            try:
                storage = optuna.storages.RDBStorage(self.url)
                self.study_id = storage.get_study_id_from_name(self.name)
            except Exception:  # not created yet
                return []
            self.storage = storage
        return self.storage.get_all_trials(self.study_id, deepcopy=False, states=states)

    def until(self, what: str, predicate, timeout: float = 600, poll: float = 0.05):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                _, err = self.proc.communicate()
                pytest.fail(f"the worker exited ({self.proc.returncode}) before {what}: {err[-2000:]}")
            found = predicate(self.trials())
            if found:
                return found
            time.sleep(poll)
        self.proc.kill()
        pytest.fail(f"timed out waiting for {what}")


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("trial ")]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


def _runner_children(pid: int) -> list[psutil.Process]:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for k in kids:
        try:
            if any(part.endswith("runner.py") for part in k.cmdline()):
                out.append(k)
        except psutil.Error:
            pass
    return out


def _retry_of(trials: list[optuna.trial.FrozenTrial], number: int) -> optuna.trial.FrozenTrial:
    """The trial that finally ran an interrupted one's plan (a re-queued trial may be interrupted too)."""
    again = [t for t in trials if t.user_attrs.get(T_INTERRUPTED_FROM) == number]
    assert len(again) == 1, number
    return _retry_of(trials, again[0].number) if again[0].state == FAIL else again[0]


def test_ctrl_c_during_distill_export_and_measure_stops_cleanly_and_resumes(tmp_path, digits_task):
    folder = make_results(tmp_path, digits_task)
    # Long enough stages to be caught in (each about a second or more): 150 distillation steps, 20,000 timed
    # runs (with 5,000 a trial once reached "evaluate" before Ctrl-C landed: a clean-clone CI failure).
    write_configs(folder, TINY_SPACE.replace("budget: {steps: 40}", "budget: {steps: 150}"),
                  measure="backend: local, warmup: 5, repeats: 20000, batch: 1, timeout_s: 120")
    url = f"sqlite:///{folder / 'intr' / 'study.db'}"
    stopped: list[int] = []
    for stage in ("distill", "export", "measure"):
        proc = _start(_cmd(folder, "intr", 5))
        watch = Watch(url, "intr", proc)

        def in_stage(trials, stage=stage, proc=proc):
            hit = [t for t in trials if t.state == RUNNING and t.user_attrs.get(T_STAGE) == stage
                   and t.user_attrs.get("baseline") != "teacher-fp32"]  # its measurement is the cached reference
            # A re-queued plan's structure is measured already: its "measure" stage is a cache hit that ends in
            # milliseconds (a CI failure). Only a running measurement process is a measurement to stop.
            if stage == "measure" and not _runner_children(proc.pid):
                return None
            return hit[0] if hit else None

        trial = watch.until(f"a trial in stage {stage}", in_stage)
        runners = _runner_children(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends to the foreground group
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert "rerun the same command to resume" in _one_line(err)
        after = {t.number: t for t in watch.trials()}
        assert after[trial.number].state == FAIL and after[trial.number].user_attrs[T_STAGE] == stage
        requeued = [t for t in after.values() if t.user_attrs.get(T_INTERRUPTED_FROM) == trial.number]
        assert len(requeued) == 1 and requeued[0].state == WAITING
        for p in runners:  # a measurement process stopped with its worker, none left running
            assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
        stopped.append(trial.number)
    assert len(set(stopped)) == 3

    r = subprocess.run(_cmd(folder, "intr", 5), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    st = optuna.load_study(study_name="intr", storage=url)
    trials = st.get_trials()
    for n in stopped:  # every interrupted plan ran to the end on resume
        retry = _retry_of(trials, n)
        assert retry.state == COMPLETE and retry.params == trials[n].params
    assert sum(t.state == COMPLETE for t in trials) >= 5


def test_hung_and_crashing_measurements_become_failed_trials(tmp_path, digits_task):
    folder = make_results(tmp_path, digits_task)
    write_configs(folder, measure="backend: local, warmup: 5, repeats: 3000, batch: 1, timeout_s: 4")
    url = f"sqlite:///{folder / 'meas' / 'study.db'}"
    proc = _start(_cmd(folder, "meas", 6))
    watch = Watch(url, "meas", proc)
    watch.until("two finished trials", lambda ts: sum(t.state == COMPLETE for t in ts) >= 2, poll=0.3)
    handled: set[int] = set()
    for fault in (signal.SIGSTOP, signal.SIGKILL):  # a hang (timed out), then a crash (killed)
        victim = watch.until("a measurement process",
                             lambda _: next((p for p in _runner_children(proc.pid) if p.pid not in handled), None),
                             poll=0.01)
        handled.add(victim.pid)
        victim.send_signal(fault)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    st = optuna.load_study(study_name="meas", storage=url)
    failed = st.get_trials(states=(FAIL,))
    reasons = sorted(t.user_attrs[T_FAIL_REASON] for t in failed)
    assert len(failed) == 2, reasons
    assert any("timed out after 4 s" in r for r in reasons), reasons
    assert any("measurement process died (signal 9)" in r for r in reasons), reasons
    assert all(t.user_attrs[T_STAGE] == "measure" for t in failed)
    assert sum(t.state == COMPLETE for t in st.get_trials()) == 4  # the study went on to N = 6
    assert all(f"trial {t.number} failed: " in err for t in failed)  # each reported in one line


def _agent(port: int, token_file: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "search", "agent", "--port", str(port), "--token-file",
                             str(token_file)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail(f"agent did not start: {proc.stderr.read() if proc.stderr else ''}")


def test_agent_that_disappears_mid_study(tmp_path, digits_task):
    folder = make_results(tmp_path, digits_task)
    port = free_port()
    token = tmp_path / "token"
    token.write_text("s3cret-token-for-tests\n")
    write_configs(folder, measure=f"backend: remote, url: 'http://127.0.0.1:{port}', token_env: HW_TEST_TOKEN, "
                                  "warmup: 5, repeats: 30, batch: 1, timeout_s: 60")
    env = {**os.environ, "HW_TEST_TOKEN": "s3cret-token-for-tests"}
    url = f"sqlite:///{folder / 'gone' / 'study.db'}"
    agent = _agent(port, token)
    try:
        proc = _start(_cmd(folder, "gone", 8, "--max-failures", "2"), env=env)
        watch = Watch(url, "gone", proc)
        watch.until("two finished trials", lambda ts: sum(t.state == COMPLETE for t in ts) >= 2, poll=0.2)
    finally:
        agent.kill()  # the device goes away mid-study
        agent.wait()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err  # configured to stop: after 2 failures in a row
    line = _one_line(err)
    assert "stopped after 2 failed trials in a row" in line and "rerun the same command" in line, line
    st = optuna.load_study(study_name="gone", storage=url)
    done = {t.number: t.values for t in st.get_trials(states=(COMPLETE,))}
    failed = st.get_trials(states=(FAIL,))
    assert len(done) >= 2 and len(failed) >= 2
    assert all(f"127.0.0.1:{port}" in t.user_attrs[T_FAIL_REASON] for t in failed), \
        [t.user_attrs[T_FAIL_REASON] for t in failed]

    # --max-failures 0: the study goes on without the device, every trial failing with the reason.
    r = subprocess.run(_cmd(folder, "gone", len(done) + len(failed) + 2, "--max-failures", "0"), cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    # The device is back: the study resumes and completes; nothing finished was lost.
    agent = _agent(port, token)
    try:
        st = optuna.load_study(study_name="gone", storage=url)
        n = len(st.get_trials(states=(COMPLETE, FAIL))) + 2
        r = subprocess.run(_cmd(folder, "gone", n), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    finally:
        agent.kill()
        agent.wait()
    assert r.returncode == 0, r.stderr
    st = optuna.load_study(study_name="gone", storage=url)
    assert all(st.trials[k].values == v for k, v in done.items())
    assert sum(t.state == COMPLETE for t in st.get_trials()) >= len(done) + 2


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs (root only, as in CI): room for the study's first trials, which the filler then fills up
    (at 3 MB the study had filled it by itself once, before the filler could open its file)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.decode().strip()[:100]}): needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_results_disk_is_one_clear_line_and_loses_nothing(small_disk, digits_task):
    folder = make_results(small_disk, digits_task)
    write_configs(folder)
    url = f"sqlite:///{folder / 'full' / 'study.db'}"
    proc = _start(_cmd(folder, "full", 6))
    watch = Watch(url, "full", proc)
    watch.until("two finished trials", lambda ts: sum(t.state == COMPLETE for t in ts) >= 2, poll=0.2)
    filler = small_disk / "filler"
    try:  # the disk fills up under the running study (full already if the study's own writes got there first)
        with open(filler, "wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    except OSError:
        pass
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    line = _one_line(err)
    assert "no space left" in line and "rerun the same command to resume" in line, line
    before = {t.number: t.values for t in optuna.load_study(study_name="full", storage=url).get_trials(
        states=(COMPLETE,))}
    assert len(before) >= 2
    filler.unlink(missing_ok=True)
    r = subprocess.run(_cmd(folder, "full", 6), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    st = optuna.load_study(study_name="full", storage=url)
    assert all(st.trials[k].values == v for k, v in before.items())
    assert sum(t.state == COMPLETE for t in st.get_trials()) >= 6


FRAGILE_TASK = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset

from search import Task


class Fragile(nn.Module):
    """Exports as it is; once conv1 is pruned, a data-dependent branch defeats torch.export."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        if self.conv1.out_channels < 16 and bool(x.sum() > 0):
            x = x * 2
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def make():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(256, 1, 8, 8, generator=g), torch.randint(0, 10, (256,), generator=g)
    return Task(name="fragile", teacher=Fragile().eval(), train=TensorDataset(x, y), val=TensorDataset(x, y),
                input_shape=(1, 8, 8), num_classes=10)
'''


def test_export_failure_is_a_failed_trial_with_its_reason(tmp_path):
    task = tmp_path / "fragile.py"
    task.write_text(FRAGILE_TASK)
    space = TINY_SPACE.replace("max_drop: 0.3", "max_drop: 1.0").replace("granularity: block", "granularity: layer")
    space_file, profile_file = write_configs(tmp_path, space)
    r = search.run(f"{task}:make", space_file, profile_file, trials=5, study="fragile", results=tmp_path, seed=0,
                   progress=False)
    st = optuna.load_study(study_name="fragile", storage=r.storage_url)
    failed = st.get_trials(states=(FAIL,))
    complete = st.get_trials(states=(COMPLETE,))
    assert failed and complete  # the unpruned baselines export; the pruned students do not, and the study goes on
    for t in failed:
        assert t.user_attrs[T_FAIL_REASON].startswith("ONNX export failed"), t.user_attrs[T_FAIL_REASON]
        assert t.user_attrs[T_STAGE] == "export" and t.params["prune.conv1"] > 0
    assert len(failed) + len(complete) == 5
