"""A pool of agents per remote profile (`measure.pool`): real agent processes (each in its own network namespace
where root allows), a real study with two workers on a real PostgreSQL; one agent killed mid-study, the study
completes with no trial lost, the others take its work; `hwsearch agents` shows the pool's state. A job leases a
board that runs nothing: a busy board refuses a leased job at once, and the client takes the free one instead of
queueing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _boards  # noqa: E402 - benchmarks/ is not a package: the simulated boards live beside the pool benchmark
from _measure_fixtures import agent_serving, models
from _study_fixtures import make_results, write_configs
from conftest import REPO
from test_agent import request
from test_faults import Watch, _cmd, _start

from search.config.profile import DeviceProfile
from search.errors import TrialFailure
from search.measure.agent import IF_IDLE
from search.measure.remote import RemoteBackend
from search.study.record import T_MEASUREMENT
from search.study.storage import open_storage

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
def test_a_pool_finishes_the_study_when_an_agent_dies(tmp_path, digits_task, postgres):
    folder = make_results(tmp_path, digits_task)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    # Each board in its own network namespace (a veth pair, not loopback) where root allows; else on loopback.
    netns = _boards.unavailable(netns=True, quota=False) is None
    with _boards.boards(3, token, cpu=None, netns=netns) as bs:
        urls = [b.url for b in bs]
        assert all(("127.0.0.1" not in u) == netns for u in urls), urls
        write_configs(folder, measure=f"backend: remote, url: '{urls[0]}', pool: ['{urls[1]}', '{urls[2]}'], "
                                      "token_env: HW_TEST_TOKEN, warmup: 5, repeats: 30, batch: 1, timeout_s: 60, "
                                      "rounds: 1, max_rounds: 2")
        env = {**os.environ, "HW_TEST_TOKEN": TOKEN}
        code, rows = _agents(folder / "profile.yaml", env)
        assert code == 0 and [r["url"] for r in rows] == urls and all(r["up"] for r in rows), rows
        db = postgres  # the workers share a real PostgreSQL, as a study over several machines would
        proc = _start(_cmd(folder, "pool", 8, "--workers", "2", "--storage", db), env=env)
        watch = Watch("postgresql+psycopg2://" + db.split("://", 1)[1], "pool", proc)  # (we ship psycopg2)
        first = watch.until("two finished trials", lambda ts: [t for t in ts if t.state == COMPLETE][:2]
                            if sum(t.state == COMPLETE for t in ts) >= 2 else None, poll=0.2)
        busy = first[0].user_attrs[T_MEASUREMENT]["backend"].removeprefix("remote ")
        assert busy in urls
        _boards.stop(bs[urls.index(busy)])  # a board dies mid-study: the one that measured the first trial
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-2000:]
        st = optuna.load_study(study_name="pool", storage=open_storage(db))
        assert not st.get_trials(states=(FAIL,)), [t.user_attrs for t in st.get_trials(states=(FAIL,))]
        assert len(st.get_trials(states=(COMPLETE,))) >= 8  # and the refinements: nothing lost
        measured_by = {t.user_attrs[T_MEASUREMENT]["backend"].removeprefix("remote ")
                       for t in st.get_trials(states=(COMPLETE,)) if T_MEASUREMENT in t.user_attrs}
        assert measured_by - {busy}, measured_by  # the others took the work
        code, rows = _agents(folder / "profile.yaml", env)
        assert code == 1 and [r["up"] for r in rows] == [u != busy for u in urls], rows

def _pool_profile(*srvs, **measure) -> DeviceProfile:
    urls = [f"http://127.0.0.1:{s.server_address[1]}" for s in srvs]
    return DeviceProfile(name="pool", measure={"backend": "remote", "url": urls[0], "pool": tuple(urls[1:]),
                                               "token_env": "HW_TEST_TOKEN", "warmup": 5, "rounds": 1,
                                               "max_rounds": 1, **measure})


def test_a_job_leases_the_free_board_of_the_pool(monkeypatch):
    monkeypatch.setenv("HW_TEST_TOKEN", TOKEN)
    model = models()["fp32"]
    with agent_serving(TOKEN) as busy_srv, agent_serving(TOKEN) as free_srv:
        # A job that runs until its timeout (a Loop that never ends) holds the first board for 10 s.
        lone = RemoteBackend(_pool_profile(busy_srv, repeats=5, timeout_s=10))
        long_job = threading.Thread(target=lambda: pytest.raises(TrialFailure, lone.measure, models()["hang"]),
                                    daemon=True)
        long_job.start()
        deadline = time.monotonic() + 60
        while not busy_srv.jobs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert busy_srv.jobs == 1
        status, payload = request(busy_srv, "POST", "/v1/measure?repeats=5", model.read_bytes(),
                                  token=TOKEN, headers={IF_IDLE: "1"})
        assert (status, payload.get("busy")) == (503, True), payload  # refused at once, not queued
        assert request(busy_srv, "GET", "/v1/info", token=TOKEN)[1]["queue"]["jobs"] == 1

        pooled = RemoteBackend(_pool_profile(busy_srv, free_srv, repeats=20, timeout_s=10))
        pooled._at = 0  # this process's own board is the busy one
        started = time.monotonic()
        record = pooled.measure(model)
        took = time.monotonic() - started
        assert record.backend == f"remote http://127.0.0.1:{free_srv.server_address[1]}"
        assert long_job.is_alive(), "the long job ended first: the lease was not tested"
        assert took < 10, took
        long_job.join(120)
        assert busy_srv.jobs == 0 and free_srv.jobs == 0  # every slot given back
