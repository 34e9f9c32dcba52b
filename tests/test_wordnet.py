"""The real-text built-in: WordNet 3.0 noun glosses labelled by supersense, read from Debian's wordnet-base."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _study_fixtures import (
    AGREEING_MEASURE,
    TRANSFORMER_PRECISIONS,
    cli_study,
    export_fastest,
    profile_text,
    space_text,
)

from search.errors import UserError
from search.tasks import load_task
from search.tasks import wordnet as wn


@pytest.fixture(scope="module")
def data():
    return wn.load_wordnet_supersense()


def test_glosses_and_labels_come_from_the_real_files(data):
    texts, labels = wn.read_glosses(wn.wordnet_dir())
    assert len(texts) == 63245 and np.bincount(labels).tolist()[:2] == [11587, 11087]  # artifact, person
    dog = next(i for i, t in enumerate(texts) if t.startswith("a member of the genus Canis"))
    assert wn.SUPERSENSES[list(wn.SUPERSENSES)[labels[dog]]] == "noun.animal"
    sizes = {s: len(data[f"{s}_y"]) for s in ("train", "val", "test")}
    assert sizes == {"train": 50597, "val": 6324, "test": 6324}
    shares = {s: np.bincount(data[f"{s}_y"], minlength=10) / sizes[s] for s in sizes}  # stratified
    assert max(np.abs(shares[s] - shares["train"]).max() for s in ("val", "test")) < 0.002
    for s in sizes:
        x = data[f"{s}_x"]
        assert x.dtype == np.int64 and x.shape[1] == wn.SEQ_LEN and x.min() >= 0 and x.max() < wn.VOCAB
        assert (x[:, 0] != wn.PAD).all()  # every gloss has words; padding only at the end
    # the vocabulary is the training split's: some val words are unknown, and no split is a copy of another
    assert 0 < (data["val_x"] == wn.UNK).mean() < 0.1
    rows = {s: {r.tobytes() for r in data[f"{s}_x"]} for s in ("train", "test")}
    assert len(rows["test"] - rows["train"]) > 0.9 * sizes["test"]


def test_encoding_truncates_pads_and_marks_unknown_words():
    vocab = wn.build_vocab(["the cat sat", "the dog"], size=4)  # the 2 most frequent words: the, then cat
    assert vocab == {"the": 2, "cat": 3}
    ids = wn.encode(["The cat's dog, the cat!"], vocab, seq_len=4)
    assert ids.tolist() == [[2, wn.UNK, wn.UNK, 2]]
    assert wn.encode(["cat"], vocab, seq_len=3).tolist() == [[3, wn.PAD, wn.PAD]]


def test_missing_wordnet_is_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(wn, "WORDNET_DIR", tmp_path)
    monkeypatch.delenv("HWSEARCH_WORDNET", raising=False)
    with pytest.raises(UserError, match="wordnet-base"):
        load_task("wordnet-supersense", data_dir=tmp_path, results_dir=tmp_path)


def test_the_shipped_teacher_is_used_and_onnx_runtime_agrees_with_its_record(tmp_path: Path, data):
    import json

    import torch

    from search.compress.export import export_onnx
    from search.measure.accuracy import onnx_accuracy
    from search.tasks.teacher import SHIPPED_DIR

    task = load_task("wordnet-supersense", results_dir=tmp_path, progress=False)
    key = task.teacher_info["key"]
    assert task.teacher_info == json.loads((SHIPPED_DIR / f"wordnet-supersense-{key}.json").read_text())
    # two inputs, as BERT-style models ship: the ids and their attention mask
    assert [(s.name, s.dtype) for s in task.input_specs] == [("input_ids", "int64"), ("attention_mask", "int64")]
    assert task.input_shapes == ((wn.SEQ_LEN,), (wn.SEQ_LEN,))
    sample, _ = task.val[0]
    assert torch.equal(sample["attention_mask"], (sample["input_ids"] != 0).long())
    example = {k: torch.from_numpy(v) for k, v in wn.ids_and_mask(data["val_x"][:4]).items()}
    path = export_onnx(task.teacher, example, tmp_path / "teacher.onnx")
    val = onnx_accuracy(path, wn.ids_and_mask(data["val_x"]), data["val_y"])
    # trained on the ids with padding read from them: given the mask, it computes the same
    assert val == pytest.approx(task.teacher_info["val_accuracy"], abs=0.002)
    assert val > 0.8  # real text, ten classes: the largest class is 18%




@pytest.fixture(scope="module")
def wordnet_study(tmp_path_factory):
    """A short real study of the real-text task through the CLI: the four seeded baselines (uniform int8 PTQ of
    the teacher among them) against a profile whose MatMul runs dynamic int8."""
    folder = tmp_path_factory.mktemp("wordnet")
    r = cli_study(folder, "wordnet-supersense", "wn",
                  space_text("wordnet", budget="{steps: 20, max_samples: 1024}", refine="{steps: 20}", max_drop=0.5),
                  profile_text(20.0, 1000.0, 50.0, measure=AGREEING_MEASURE, precisions=TRANSFORMER_PRECISIONS), 4)
    return folder, r


def test_a_study_of_real_text_runs_and_dynamic_int8_keeps_the_teachers_accuracy(wordnet_study, tmp_path: Path):

    import search

    folder, r = wordnet_study
    assert r.returncode == 0 and "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    view = search.load_study("wn", results=folder / "results")
    assert all(t.state == "COMPLETE" for t in view.trials), [(t.number, t.fail_reason) for t in view.trials]
    (int8,) = [t for t in view.trials if t.baseline == "teacher-int8"]
    kernels = {layer: e["runs_as"] for layer, e in int8.precision.items()}
    ffn = [k for k in kernels if k.endswith(("intermediate", "output"))]
    assert len(ffn) == 8 and all(kernels[k] == "int8-dynamic" for k in ffn), kernels
    assert kernels["classifier"] == "int8"  # a Gemm: static QDQ
    assert int8.values[0] >= view.teacher["accuracy"] - 0.01, (int8.values, view.teacher)  # within 1 point on val
    # the front prints held-out scores, and its fastest point exports and verifies
    manifest = export_fastest("wn", folder / "results", tmp_path / "deploy")
    assert [(i["name"], i["dtype"], i["shape"][1:]) for i in manifest["inputs"]] == [
        ("input_ids", "int64", [wn.SEQ_LEN]), ("attention_mask", "int64", [wn.SEQ_LEN])]

