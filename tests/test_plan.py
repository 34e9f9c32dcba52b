"""Plan: a frozen, hashable, exactly JSON-round-tripping value; clear errors for bad layers/values."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import pytest

from search.errors import UserError
from search.plan import Plan


def _plan(**kw) -> Plan:
    base = dict(temperature=0.1 + 0.2, alpha=1 / 3, prune={"b.conv": 0.25, "a.conv": 0.5},
                bits={"b.conv": 8, "a.conv": 32, "fc": 4, "c": 16}, seed=7)
    return Plan(**{**base, **kw})


def test_json_round_trip_is_exact_and_order_free():
    p = _plan()
    q = Plan.from_json(p.to_json())
    assert q == p and hash(q) == hash(p)
    assert q.temperature == 0.1 + 0.2 and q.alpha == 1 / 3  # bit-exact floats
    assert q.to_json() == p.to_json()
    swapped = _plan(prune={"a.conv": 0.5, "b.conv": 0.25}, bits={"fc": 4, "c": 16, "a.conv": 32, "b.conv": 8})
    assert swapped == p and swapped.to_json() == p.to_json()
    assert json.loads(p.to_json()) == p.to_dict()
    assert p.to_dict() == {"temperature": 0.1 + 0.2, "alpha": 1 / 3, "prune": {"a.conv": 0.5, "b.conv": 0.25},
                           "bits": {"a.conv": 32, "b.conv": 8, "c": 16, "fc": 4}, "seed": 7}
    assert isinstance(p.to_dict()["prune"], dict)
    assert p != _plan(seed=8) and len({p, q, _plan(seed=8)}) == 2


def test_plan_is_frozen_and_copies_cleanly():
    p = _plan()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.alpha = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.prune["a.conv"] = 0.9  # type: ignore[index]
    source = {"x": 0.5}
    q = Plan(1.0, 0.5, source, {})
    source["x"] = 0.75  # the caller's dict changing later must not reach the plan
    assert q.prune == {"x": 0.5}
    assert pickle.loads(pickle.dumps(p)) == p
    assert copy.deepcopy(p) == p


def test_summary():
    s = _plan().summary()
    assert s == {"mean_prune": pytest.approx(0.375), "int8_share": pytest.approx(0.75),
                 "temperature": pytest.approx(0.3), "alpha": pytest.approx(1 / 3)}
    empty = Plan(2.0, 0.0, {}, {}).summary()
    assert empty["mean_prune"] == 0.0 and empty["int8_share"] == 0.0


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"bits": {"a.conv": 12}}, "32, 16, 8, 4"),
        ({"bits": {"a.conv": 8.5}}, "32, 16, 8, 4"),
        ({"prune": {"a.conv": 1.5}}, "[0, 1]"),
        ({"prune": {"a.conv": -0.1}}, "[0, 1]"),
        ({"alpha": 1.5}, "alpha"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_bad_values_raise_user_error(kw, needle):
    with pytest.raises(UserError) as err:
        _plan(**kw)
    assert needle in str(err.value)


def test_from_json_errors_name_the_problem():
    with pytest.raises(UserError, match="not valid JSON"):
        Plan.from_json("{", source="trial-3.json")
    with pytest.raises(UserError, match="unknown field 'bitz'"):
        Plan.from_json('{"temperature": 2, "alpha": 0.5, "bitz": {}}')
    with pytest.raises(UserError, match="missing field 'alpha'"):
        Plan.from_json('{"temperature": 2}')


def test_validate_for_names_unknown_layer_and_lists_valid_ones():
    from archs import TinyMobileNet, TinyViT

    model = TinyMobileNet()
    ok = Plan(2.0, 0.5, {"stem.conv": 0.5, "blocks.0.expand.conv": 0.25}, {"classifier": 8, "head.conv": 32})
    assert ok.validate_for(model) is ok
    with pytest.raises(UserError) as err:
        Plan(2.0, 0.5, {"stem.cnv": 0.5}, {}).validate_for(model)
    msg = str(err.value)
    assert "'stem.cnv'" in msg
    assert all(name in msg for name in ("stem.conv", "blocks.3.project.conv", "classifier"))
    with pytest.raises(UserError, match="bits: unknown layer 'blocks.0.attn'"):
        Plan(2.0, 0.5, {}, {"blocks.0.attn": 8}).validate_for(TinyViT())
    # An attention module owns MatMul nodes in ONNX: valid for bits once the caller says so.
    Plan(2.0, 0.5, {}, {"blocks.0.attn": 8}).validate_for(TinyViT(), quantizable=["blocks.0.attn"])


def test_training_seeds_never_meet_across_study_seeds():
    """Each trial's training seed comes from (study seed, trial number) with no collision between studies: with
    seed + number, seed 1's trial 7 trained exactly like seed 0's trial 8 (identical val in a benchmark)."""
    import optuna

    from search.config import load_space
    from search.study.sampling import SearchLayers, plan_seed, sample_plan

    seeds = {plan_seed(s, n) for s in range(5) for n in range(2000)}
    assert len(seeds) == 5 * 2000 and plan_seed(0, 8) == 8  # seed 0's studies keep their seeds
    space = load_space("default")
    plans = [sample_plan(optuna.trial.FixedTrial({"temperature": 4.0, "alpha": 0.5}, number=n), space,
                         SearchLayers(), (32,), seed=s) for s, n in ((0, 8), (1, 7))]
    assert plans[0].seed != plans[1].seed
