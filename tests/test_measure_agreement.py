"""Rounds until they agree: the stopping rule, real runner rounds, the profile's settings, the agent's bounds and
the cache's one-round re-check of a hit."""

from __future__ import annotations

import dataclasses
import statistics

import pytest
from _measure_fixtures import agent_serving, models
from pydantic import ValidationError

from search.config.profile import DeviceProfile, Measure
from search.measure import agent, runner
from search.measure.cache import MeasurementCache
from search.measure.local import LocalBackend
from search.measure.record import Measurement
from search.measure.remote import RemoteBackend

FAST = {"warmup": 10, "repeats": 50}


def profile(**measure: object) -> DeviceProfile:
    return DeviceProfile(name="agreement-test", runtime={"threads": 1}, measure={**FAST, **measure})


def used_ratios(rec: dict | Measurement, tol: float) -> list[float]:
    """The per-round ratios the record's ratio_* come from: those that agreed, else all."""
    ratios = rec["round_ratios"] if isinstance(rec, dict) else rec.round_ratios
    agreed = rec["agreed"] if isinstance(rec, dict) else rec.agreed
    return [ratios[i] for i in runner.agreeing(ratios, tol)] if agreed else ratios


# ------------------------------------------------------------------------------------------- stopping rule
@pytest.mark.parametrize(("values", "tol", "agree", "within"), [
    ([1.00, 1.01], 0.03, True, [0, 1]),
    ([1.00, 1.01, 1.20], 0.03, True, [0, 1]),  # one slow-mode round among three: the other two agree
    ([1.20, 1.00, 1.01], 0.03, True, [1, 2]),  # ...whichever round it was
    ([1.00, 1.20], 0.03, False, []),  # two that disagree: neither is near their median
    ([1.00, 1.20, 1.00, 1.20], 0.03, False, []),  # bimodal: never a majority, however many rounds
    ([1.00, 1.20, 1.00, 1.20, 1.00, 1.20], 0.03, False, []),
    ([0.98, 1.00, 1.02, 1.50], 0.05, True, [0, 1, 2]),  # 3 of 4
    ([1.00, 1.00, 1.30, 1.40], 0.03, False, []),  # half is not a majority (median 1.15)
    ([1.00], 0.03, False, [0]),  # one round alone never agrees
    ([], 0.03, False, []),
])
def test_rounds_agree_on_hand_picked_lists(values, tol, agree, within):
    assert runner.rounds_agree(values, tol) is agree
    assert runner.agreeing(values, tol) == within


def test_spread_is_range_over_median():
    assert runner.spread([1.0, 1.01, 1.2]) == pytest.approx(0.2 / 1.01)
    assert runner.spread([2.0]) is None and runner.spread([]) is None


# ---------------------------------------------------------------------------------------- real runner rounds
def test_runner_adds_rounds_until_they_agree():
    m = models()
    rec = runner.measure(str(m["fp32"]), str(m["fp32"]), rounds=2, max_rounds=4, agree=0.03, **FAST)
    ratios = rec["round_ratios"]
    assert 2 <= rec["rounds"] == len(ratios) == len(rec["round_p50_ms"]) <= 4
    assert rec["spread"] == pytest.approx((max(ratios) - min(ratios)) / statistics.median(ratios))
    assert rec["agreed"] == runner.rounds_agree(ratios, 0.03)
    if rec["agreed"]:  # it stopped at the first round count that agreed
        assert rec["rounds"] == 2 or not runner.rounds_agree(ratios[:-1], 0.03)
    else:
        assert rec["rounds"] == 4
    used = used_ratios(rec, 0.03)
    assert rec["ratio_p50"] == pytest.approx(statistics.median(used))
    assert rec["latency"]["runs"] == rec["reference"]["runs"] == FAST["repeats"] * len(used)
    parsed = Measurement.from_dict(rec)
    assert parsed.round_ratios == ratios and Measurement.from_json(parsed.to_json()) == parsed


def test_runner_stops_at_max_rounds_when_rounds_never_agree():
    m = models()
    rec = runner.measure(str(m["tiny"]), str(m["tiny"]), rounds=2, max_rounds=3, agree=1e-9, warmup=5,
                         repeats=30)
    assert rec["rounds"] == len(rec["round_ratios"]) == 3 and rec["agreed"] is False
    assert rec["ratio_p50"] == pytest.approx(statistics.median(rec["round_ratios"]))  # over all of them
    assert rec["latency"]["runs"] == 90


def test_runner_without_reference_judges_the_candidate_p50():
    rec = runner.measure(str(models()["fp32"]), rounds=2, max_rounds=3, **FAST)
    p50s = rec["round_p50_ms"]
    assert rec["round_ratios"] is None and rec["ratio_p50"] is None and 2 <= len(p50s) <= 3
    assert rec["agreed"] == runner.rounds_agree(p50s, 0.03)
    assert rec["spread"] == pytest.approx((max(p50s) - min(p50s)) / statistics.median(p50s))


def test_older_records_parse_with_defaults():
    rec = runner.measure(str(models()["tiny"]), rounds=1, max_rounds=1, warmup=1, repeats=5)
    old = {k: v for k, v in rec.items() if k not in ("round_ratios", "round_p50_ms", "spread", "agreed",
                                                     "rechecked", "replaced")}
    parsed = Measurement.from_dict({**old, "a_newer_field": 1})
    assert parsed.round_ratios is None and parsed.spread is None and parsed.agreed is False
    assert parsed.rechecked == parsed.replaced == 0


# ---------------------------------------------------------------------------------------- profile and agent
def test_profile_defaults_and_validation():
    assert (Measure().rounds, Measure().max_rounds, Measure().agree) == (2, 5, 0.03)
    with pytest.raises(ValidationError, match=r"max_rounds \(2\) must be at least rounds \(3\)"):
        profile(rounds=3, max_rounds=2)
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValidationError, match="measure.agree"):
            profile(agree=bad)
    assert profile(rounds=3, max_rounds=3, agree=1).measure.agree == 1


def test_agent_bounds_the_request_by_max_rounds():
    assert agent.parse_params("rounds=2")["max_rounds"] == 2  # an older client: exactly its rounds
    out = agent.parse_params("rounds=2&max_rounds=4&agree=0.05&timeout_s=120")
    assert (out["rounds"], out["max_rounds"], out["agree"]) == (2, 4, 0.05)
    with pytest.raises(ValueError, match=r"\(max_rounds 5 \+ 1 overhead probe\) x timeout_s 120 = 720 s"):
        agent.parse_params("rounds=2&max_rounds=5&timeout_s=120")
    with pytest.raises(ValueError, match="max_rounds .1. must be at least rounds .2."):
        agent.parse_params("rounds=2&max_rounds=1")
    for bad in ("agree=0", "agree=-1", "agree=2", "agree=nan"):
        with pytest.raises(ValueError, match="agree must be"):
            agent.parse_params(bad)


def test_remote_backend_sends_the_rounds_and_fits_the_agents_bound(monkeypatch):
    monkeypatch.setenv("HWSEARCH_AGREE_TOKEN", "t0ken")
    m = models()
    with agent_serving("t0ken", max_request_s=20) as srv:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        prof = DeviceProfile(name="remote-agree", measure={
            "backend": "remote", "url": url, "token_env": "HWSEARCH_AGREE_TOKEN", "warmup": 5, "repeats": 30,
            "timeout_s": 5, "rounds": 2, "max_rounds": 5, "agree": 1e-9})
        backend = RemoteBackend(prof, backoff_s=0.05)
        rec = backend.measure(m["tiny"], m["tiny"])  # (5 + 1) x 5 s is over 20 s: 3 rounds fit
        assert rec.rounds == len(rec.round_ratios) == 3 and not rec.agreed
        check = backend.measure(m["tiny"], m["tiny"], rounds=1, max_rounds=1)  # the cache's re-check
        assert check.rounds == 1 and len(check.round_ratios) == 1


# ---------------------------------------------------------------------------------------- cache re-check
def test_recheck_replaces_a_wrong_cached_record_and_keeps_a_right_one():
    m = models()
    prof = profile(agree=0.1)  # a check within 2 x 10% keeps the entry
    backend, cache = LocalBackend(prof), MeasurementCache()
    truth = cache.measure(m["fp32"], prof, backend, m["fp32"])  # a miss: measured by the agreement rule
    assert truth.rechecked == 0 and cache.misses == 1

    kept = cache.measure(m["fp32_other_weights"], prof, backend, m["fp32"], recheck=True)  # same structure
    assert cache.hits == 1 and kept.rechecked == 1 and kept.replaced == 0
    assert kept.ratio_p50 == truth.ratio_p50 and kept.round_ratios == truth.round_ratios
    key = cache.key(m["fp32"], prof, m["fp32"])
    assert cache.get(key) == kept

    # An entry whose two rounds both came from a slow mode: 3x the truth. One check round exposes it.
    wrong = dataclasses.replace(truth, ratio_p50=3 * truth.ratio_p50, round_ratios=[3 * truth.ratio_p50] * 2,
                                rounds=2, rechecked=0)
    cache.put(key, wrong)
    fixed = cache.measure(m["fp32"], prof, backend, m["fp32"], recheck=True)
    assert fixed.rechecked == 1 and fixed.replaced == 1
    assert fixed.ratio_p50 == pytest.approx(truth.ratio_p50, rel=0.15)
    assert fixed.round_ratios[:2] == wrong.round_ratios  # every round seen: cached, check, new
    assert len(fixed.round_ratios) == fixed.rounds >= 2 + 1 + 2
    assert fixed.agreed and fixed.ratio_p50 == pytest.approx(statistics.median(used_ratios(fixed, 0.1)))
    assert fixed.corrected("p50") == pytest.approx(fixed.ratio_p50 * fixed.reference_baseline.p50_ms)
    assert cache.get(key) == fixed
