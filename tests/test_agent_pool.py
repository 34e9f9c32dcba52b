"""A pool of agents per remote profile (`measure.pool`): real agent processes on loopback, a real study with two
workers; one agent killed mid-study, the study completes with no trial lost, the others take its work;
`hwsearch agents` shows the pool's state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from _study_fixtures import make_results, write_configs
from conftest import REPO, free_port
from test_faults import Watch, _agent, _cmd, _start

from search.config.profile import DeviceProfile
from search.study.record import T_MEASUREMENT

COMPLETE, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
TOKEN = "s3cret-token-for-tests"  # test_faults._agent's token file holds what the test writes


def _agents(profile: Path, env: dict) -> tuple[int, list[dict]]:
    r = subprocess.run([sys.executable, "-m", "search", "agents", "--device", str(profile), "--format", "json"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    return r.returncode, json.loads(r.stdout or "[]")


def test_profile_pool_is_transport():
    base = {"backend": "remote", "url": "http://a:8765", "token_env": "T"}
    pooled = DeviceProfile(name="p", measure={**base, "pool": ("http://b:8765", "http://c:8765")})
    assert pooled.digest() == DeviceProfile(name="p", measure=base).digest()  # adding a board orphans nothing
    with pytest.raises(ValueError, match="every pool url must start with http"):
        DeviceProfile(name="p", measure={**base, "pool": ("b:8765",)})
    with pytest.raises(ValueError, match="this backend is local"):
        DeviceProfile(name="p", measure={"pool": ("http://b:8765",)})


@pytest.mark.slow
def test_a_pool_finishes_the_study_when_an_agent_dies(tmp_path, digits_task):
    folder = make_results(tmp_path, digits_task)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    ports = [free_port() for _ in range(3)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    write_configs(folder, measure=f"backend: remote, url: '{urls[0]}', pool: ['{urls[1]}', '{urls[2]}'], "
                                  "token_env: HW_TEST_TOKEN, warmup: 5, repeats: 30, batch: 1, timeout_s: 60, "
                                  "rounds: 1, max_rounds: 2")
    env = {**os.environ, "HW_TEST_TOKEN": TOKEN}
    agents = {url: _agent(port, token) for url, port in zip(urls, ports, strict=True)}
    try:
        code, rows = _agents(folder / "profile.yaml", env)
        assert code == 0 and [r["url"] for r in rows] == urls and all(r["up"] for r in rows), rows
        db = f"sqlite:///{folder / 'pool' / 'study.db'}"
        proc = _start(_cmd(folder, "pool", 8, "--workers", "2"), env=env)
        watch = Watch(db, "pool", proc)
        first = watch.until("two finished trials", lambda ts: [t for t in ts if t.state == COMPLETE][:2]
                            if sum(t.state == COMPLETE for t in ts) >= 2 else None, poll=0.2)
        busy = first[0].user_attrs[T_MEASUREMENT]["backend"].removeprefix("remote ")
        assert busy in urls
        agents[busy].kill()  # a board dies mid-study: the one that measured the first trial
        agents[busy].wait()
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-2000:]
        st = optuna.load_study(study_name="pool", storage=db)
        assert not st.get_trials(states=(FAIL,)), [t.user_attrs for t in st.get_trials(states=(FAIL,))]
        assert len(st.get_trials(states=(COMPLETE,))) >= 8  # and the refinements: nothing lost
        measured_by = {t.user_attrs[T_MEASUREMENT]["backend"].removeprefix("remote ")
                       for t in st.get_trials(states=(COMPLETE,)) if T_MEASUREMENT in t.user_attrs}
        assert measured_by - {busy}, measured_by  # the others took the work
        code, rows = _agents(folder / "profile.yaml", env)
        assert code == 1 and [r["up"] for r in rows] == [u != busy for u in urls], rows
    finally:
        for p in agents.values():
            p.kill()
            p.wait()
