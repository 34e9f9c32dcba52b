"""A real study with the uniform curve: `--refine` retrains the uniform plan nearest each searched point it refines."""

from __future__ import annotations

import math

import optuna
import pytest
from _study_fixtures import TINY_SPACE, make_results, write_configs

import search
from search.study.record import T_BASELINE, T_REFINED_FROM, T_TRAINED, is_uniform

pytestmark = pytest.mark.slow  # a real search.run study on digits (about a minute)


def test_each_refined_searched_point_has_its_nearest_uniform_plan_refined_beside_it(tmp_path, digits_task):
    folder = make_results(tmp_path, digits_task)
    # fp32 only: on the tiny digits teacher int8 runs slower than fp32, and a plan slower than the teacher is not
    # worth refining; pruned fp32 plans are all faster than it.
    space, profile = write_configs(folder, TINY_SPACE.replace("bits: [32, 8]", "bits: [32]"))
    result = search.run("digits", space, profile, trials=6, study="curve", results=folder, refine=2, seed=3,
                        progress=False, uniform_curve=True, seed_plans=False, write_outputs=False)
    st = optuna.load_study(study_name=result.study_name, storage=result.storage_url)
    trials = st.get_trials()
    names = {t.user_attrs.get(T_BASELINE) for t in trials}
    # The whole uniform curve of the space (ratios 0.25 and 0.5; fp32, the space's one precision) was queued.
    assert {"prune25-kd-fp32", "prune50-kd-fp32"} <= names and "prune25-kd-int8" not in names
    refined = [t for t in trials if t.user_attrs.get(T_REFINED_FROM) is not None]
    assert len(refined) == 2
    sources = [trials[t.user_attrs[T_REFINED_FROM]] for t in refined]
    searched = [s for s in sources if not is_uniform(s.user_attrs.get(T_BASELINE))]
    uniform_refined = {s.number for s in sources if is_uniform(s.user_attrs.get(T_BASELINE))}
    assert searched and uniform_refined, [s.user_attrs.get(T_BASELINE) for s in sources]
    free = min(t.values[1] for t in trials if t.values and not t.user_attrs.get(T_TRAINED))
    curve = [t for t in trials if is_uniform(t.user_attrs.get(T_BASELINE)) and t.user_attrs.get(T_TRAINED)
             and t.user_attrs.get(T_REFINED_FROM) is None and t.values[1] < free]
    for s in searched:
        nearest = min(curve, key=lambda u: abs(math.log(u.values[1] / s.values[1])))
        assert nearest.number in uniform_refined
