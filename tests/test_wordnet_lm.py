"""The language-model built-in, wordnet-lm: next-word prediction over WordNet's noun glosses (Debian's
wordnet-base), its shipped GPT-style teacher, and a short real study through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _study_fixtures import (
    AGREEING_MEASURE,
    TRANSFORMER_INT4_PRECISIONS,
    cli_study,
    export_fastest,
    profile_text,
    space_text,
)

from search.tasks import wordnet as wn


def test_language_model_data_predicts_the_next_known_word_of_the_same_glosses():
    from search.metrics import IGNORE_INDEX

    lm = wn.load_wordnet_lm()  # the supersense splits less the ~2% of glosses with no known next word
    assert {s: len(lm[f"{s}_x"]) for s in ("train", "val", "test")} == {"train": 49667, "val": 6222, "test": 6201}
    x, y = lm["val_x"], lm["val_y"]
    assert x.dtype == y.dtype == np.int64 and x.shape == y.shape and x.max() < wn.LM_VOCAB
    assert (x[:, 0] != wn.PAD).all()
    scored = y != IGNORE_INDEX
    assert (y[scored] == x[:, 1:][scored[:, :-1]]).all() and not scored[:, -1].any()  # t predicts t + 1
    assert not (scored[:, :-1] & ((x[:, 1:] == wn.PAD) | (x[:, 1:] == wn.UNK))).any()  # padding, unknown: no score
    assert scored.sum(1).min() >= 1 and 8 < scored.sum(1).mean() < 12




@pytest.fixture(scope="module")
def lm_study(tmp_path_factory):
    """A short real study of the language-model built-in through the CLI, with int4 offered on MatMul."""
    folder = tmp_path_factory.mktemp("wordnet-lm")
    space = space_text("lm", budget="{steps: 12, max_samples: 1024}", refine="{steps: 12}", max_drop=0.5)
    r = cli_study(folder, "wordnet-lm", "lm", space.replace("bits: [32, 8]", "bits: [32, 8, 4]"),
                  profile_text(20.0, 1000.0, 50.0, measure=AGREEING_MEASURE, precisions=TRANSFORMER_INT4_PRECISIONS), 5,
                  "--refine", "1")
    return folder, r


def test_a_language_model_study_prunes_quantizes_and_exports_verified(lm_study, tmp_path: Path):

    import search

    folder, r = lm_study
    assert r.returncode == 0 and "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    assert "pruning skipped" not in r.stdout, r.stdout[:2000]
    view = search.load_study("lm", results=folder / "results")
    done = [t for t in view.trials if t.state == "COMPLETE"]
    assert len(done) >= 5, [(t.number, t.state, t.fail_reason) for t in view.trials]
    assert view.metric_name == "next-token top-1" and 0.25 < view.teacher["accuracy"] < 0.4
    kernels = {e["runs_as"] for t in done for e in t.precision.values()}
    assert {"int8-dynamic", "fp32"} <= kernels, kernels
    assert any(t.pruned for t in done if t.trained), "no trained trial pruned anything"
    # the front prints held-out scores, and its fastest point exports and verifies
    manifest = export_fastest("lm", folder / "results", tmp_path / "deploy")
    assert manifest["input"]["dtype"] == "int64" and manifest["input"]["shape"][1:] == [wn.SEQ_LEN]


def test_a_teacher_over_the_profiles_budgets_is_announced_at_the_start():
    """local-1core's budgets (0.5 ms, 2 MB) were set for the small CNNs: the language model's teacher breaks them,
    and a plan over a budget is not trained, so the run says so in one line before any trial."""
    from search.config import load_profile
    from search.study.objective import teacher_over_budget

    budgets = load_profile("device_profiles/local-1core.yaml").budgets
    line = teacher_over_budget({"latency_ms": 1.128, "memory_mb": 23.5, "model_mb": 7.146}, budgets)
    assert line is not None and line.startswith("warning:")
    assert "latency_ms 1.128 > 0.5 (2.3x over)" in line and "model_mb 7.146 > 2 (3.6x over)" in line
    assert "memory_mb" not in line  # 23.5 MB is within 64
    assert teacher_over_budget({"latency_ms": 0.1, "memory_mb": 20.0, "model_mb": 0.25}, budgets) is None
