"""A real study with `distillation.promote`: successive halving decides which explore points get refined."""

from __future__ import annotations

import optuna
import pytest
from _study_fixtures import make_results, space_text, write_configs

import search
from search.inspect import load_study
from search.study.record import T_BASELINE, T_BUDGET, T_REFINED_FROM, is_uniform

pytestmark = pytest.mark.slow  # a real search.run study on digits (about a minute)


def test_each_refinement_goes_to_the_best_promotion_and_the_front_names_the_rung(tmp_path, digits_task):
    folder = make_results(tmp_path, digits_task)
    text = space_text(refine="{steps: 120}").replace("  lr: 0.003", "  promote: {candidates: 2, budget: {steps: 80}}\n"
                                                                     "  lr: 0.003").replace("[32, 8]", "[32]")
    space, profile = write_configs(folder, text)
    result = search.run("digits", space, profile, trials=6, study="halving", results=folder, refine=2, seed=4,
                        progress=False, seed_plans=False, write_outputs=False)
    st = optuna.load_study(study_name=result.study_name, storage=result.storage_url)
    trials = st.get_trials()
    promoted = [t for t in trials if t.user_attrs.get(T_BUDGET) == "promote"]
    refined = [t for t in trials if t.user_attrs.get(T_BUDGET) == "refine"]
    assert len(refined) == 2 and 2 <= len(promoted) <= 4
    sources = {t.user_attrs[T_REFINED_FROM] for t in promoted}
    assert len(sources) == len(promoted)  # each explore point promoted once
    assert all(trials[s].user_attrs.get(T_BUDGET) == "explore" for s in sources)
    assert max(t.number for t in promoted) < min(t.number for t in refined)  # the rung runs first
    # A searched refinement retrains a promoted explore point (its origin kept); the other refines the uniform
    # plan beside it (the study has the prune50 baseline). With one band (two refinements, one of them uniform)
    # the searched one is the best on the middle rung.
    by_source = {t.user_attrs[T_REFINED_FROM]: t.values[0] for t in promoted if t.values}
    searched = [r.user_attrs[T_REFINED_FROM] for r in refined if not is_uniform(r.user_attrs.get(T_BASELINE))]
    assert searched == [max(by_source, key=by_source.get)]
    assert len(refined) - len(searched) == 1
    assert len([t for t in trials if t.user_attrs.get(T_BUDGET) == "explore"]) == 6  # promotions do not count
    view = load_study(result.study_name, results=folder)
    labels = {row.trial: row.budget for row in view.all_trials.itertuples()}
    assert {labels[t.number] for t in promoted} == {"promote 80 steps"}
    assert {labels[t.number] for t in refined} == {"refine 120 steps"}
