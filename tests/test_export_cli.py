"""Export: the deployed file is the scored file; --verify proves it and catches a swapped model."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import optuna
import pytest
from _inspect_fixtures import cli_args, copy_study
from conftest import run_cli
from onnx import helper, numpy_helper

from search.inspect import VerifyError, load_study
from search.inspect.export import MANIFEST_FORMAT
from search.measure.accuracy import onnx_accuracy
from search.study.record import S_PROFILE_DIGEST, T_FAIL_REASON
from search.tasks import load_task
from search.tasks.arrays import dataset_arrays

pytestmark = pytest.mark.slow  # a real search.run study (about a minute, shared by the three files)


def _one_line_error(r, *needles: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_export_verify_passes_and_the_file_is_the_scored_one(real_study, view, tmp_path):
    best = int(view.front.sort_values("accuracy").trial.iloc[-1])
    r = run_cli("export", *cli_args(real_study), "--trial", str(best), "--out", str(tmp_path), "--verify")
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout and "DIFFERS" not in r.stdout
    model, manifest = tmp_path / "model.onnx", json.loads((tmp_path / "manifest.json").read_text())
    rec = view.record(best)
    # Accuracy by ONNX Runtime on the exported file, computed here from scratch: the record, exactly.
    task = load_task("digits", results_dir=real_study.results, progress=False)
    assert onnx_accuracy(model, *dataset_arrays(task.val)) == rec.values[0]
    assert manifest["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert manifest["format"] == MANIFEST_FORMAT and manifest["trial"] == best
    assert manifest["plan"] == rec.plan and manifest["objectives"]["accuracy"] == rec.values[0]
    row = view.front.set_index("trial").loc[best]  # where it came from and its training, as the front says
    assert (manifest["origin"], manifest["budget"]) == (row.origin, row.budget) and row.budget
    assert manifest["profile_digest"] == view.attrs[S_PROFILE_DIGEST] == view.profile.digest()
    assert manifest["input"]["name"] == "input" and manifest["input"]["shape"][1:] == [1, 8, 8]
    assert manifest["input"]["dtype"] == "float32" and manifest["input"]["value_range"] == [0.0, 1.0]
    assert manifest["class_names"] == [str(i) for i in range(10)]
    assert set(manifest["versions"]) >= {"hwsearch", "torch", "onnxruntime", "onnx", "optuna"}
    assert manifest["verification"]["passed"] is True
    # val and test re-scored exactly; the exported bytes are the scored bytes
    rows = {row["metric"]: row for row in manifest["verification"]["rows"]}
    assert rows["val_accuracy"]["ok"] and rows["sha256"]["ok"] and rows["test_accuracy"]["ok"]
    assert manifest["scored_sha256"] == manifest["model"]["sha256"] == rec.onnx_sha256
    test_acc = onnx_accuracy(model, *dataset_arrays(task.test))
    assert rows["test_accuracy"]["measured"] == test_acc
    assert manifest["accuracy"]["held_out"] is True and manifest["accuracy"]["val"] == rec.values[0]
    assert rec.test is not None  # a front point: scored once at the end of the run
    assert rows["test_accuracy"]["recorded"] == rec.test["accuracy"] == test_acc


def test_verify_fails_on_a_swapped_model(real_study, view, tmp_path):
    study = copy_study(real_study, tmp_path / "copy")
    complete = [r for r in view.trials if r.state == "COMPLETE"]
    target = max(complete, key=lambda r: r.values[0])
    other = min(complete, key=lambda r: r.values[0])  # the least accurate model, in the best one's place
    assert other.values[0] != target.values[0]
    artifacts = study.folder / "artifacts"
    shutil.copyfile(artifacts / other.onnx_artifact, artifacts / target.onnx_artifact)
    out = tmp_path / "deploy"
    r = run_cli("export", *cli_args(study), "--trial", str(target.number), "--out", str(out), "--verify")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "verification FAILED" in r.stderr
    row = next(line for line in r.stderr.splitlines() if line.startswith("val_accuracy"))
    assert "DIFFERS" in row and f"{target.values[0]:.6g}" in row and f"{other.values[0]:.6g}" in row
    # the bytes are not the scored ones, whatever the accuracy says
    assert "DIFFERS" in next(line for line in r.stderr.splitlines() if line.startswith("sha256"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verification"]["passed"] is False


def test_export_without_verify_warns_for_infeasible(real_study, view, tmp_path):
    bad = next(r for r in view.trials if r.state == "COMPLETE" and not r.feasible)
    r = run_cli("export", *cli_args(real_study), "--trial", str(bad.number), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert f"warning: trial {bad.number} is infeasible" in r.stderr
    path = view.export(bad.number, tmp_path / "api")  # the Python API writes the same pair
    assert path == tmp_path / "api" / "model.onnx" and (tmp_path / "api" / "manifest.json").is_file()
    assert path.read_bytes() == (tmp_path / "model.onnx").read_bytes()


def test_refuses_a_trial_that_did_not_complete(real_study, view, tmp_path):
    study = copy_study(real_study, tmp_path / "copy")
    st = optuna.load_study(study_name=study.name, storage=f"sqlite:///{study.folder / 'study.db'}")
    failed = st.ask()  # as the search records a failure: reason attribute, then FAIL
    failed.set_user_attr(T_FAIL_REASON, "NaN loss in distillation")
    st.tell(failed, state=optuna.trial.TrialState.FAIL)
    running = st.ask()  # a worker still busy with it
    front = sorted(view.front.trial)
    r = run_cli("export", *cli_args(study), "--trial", str(failed.number), "--out", str(tmp_path / "x"))
    _one_line_error(r, f"trial {failed.number} is FAIL", "NaN loss", *(f"{n} (front)" for n in front))
    r = run_cli("export", *cli_args(study), "--trial", str(running.number), "--out", str(tmp_path / "x"))
    _one_line_error(r, f"trial {running.number} is RUNNING", "nearest the front")
    assert not (tmp_path / "x").exists()


def test_bad_input_is_one_line_exit_2(real_study, tmp_path):
    r = run_cli("export", "--study", "nope", "--results", str(real_study.results), "--trial", "0",
                "--out", str(tmp_path))
    _one_line_error(r, "no study 'nope'", real_study.name)
    r = run_cli("front", "--study", real_study.name, "--results", str(tmp_path / "missing"))
    _one_line_error(r, "results folder", "not found")
    r = run_cli("export", *cli_args(real_study), "--trial", "999", "--out", str(tmp_path))
    _one_line_error(r, "has no trial 999")
    r = run_cli("plot", "--study", "x", "--storage", f"sqlite:///{tmp_path / 'none.db'}")
    _one_line_error(r, "not found")
    assert not (tmp_path / "none.db").exists()  # reading never creates an empty database


def _slowed(path: Path) -> None:
    """Same predictions (logits + 0 x a big input-dependent MatMul chain), many times the work."""
    m = onnx.load(str(path))
    g, logits = m.graph, m.graph.output[0].name
    g.node[-1].output[0] = "pre_logits"
    for n in g.node:
        n.input[:] = ["pre_logits" if i == logits else i for i in n.input]
    g.initializer.extend([numpy_helper.from_array(np.array([512, 512], np.int64), "slow_shape"),
                          numpy_helper.from_array(np.array(0.0, np.float32), "slow_zero")])
    nodes = [helper.make_node("ReduceMax", [g.input[0].name], ["slow_m"], keepdims=0),
             helper.make_node("Expand", ["slow_m", "slow_shape"], ["slow_0"])]
    nodes += [helper.make_node("MatMul", [f"slow_{i}", "slow_0"], [f"slow_{i + 1}"]) for i in range(4)]
    nodes += [helper.make_node("ReduceSum", ["slow_4"], ["slow_s"], keepdims=0),
              helper.make_node("Mul", ["slow_s", "slow_zero"], ["slow_z"]),
              helper.make_node("Add", ["pre_logits", "slow_z"], [logits])]
    g.node.extend(nodes)
    onnx.save(m, str(path))


def test_verify_fails_on_a_slower_model_with_the_same_accuracy(real_study, tmp_path):
    study = copy_study(real_study, tmp_path / "copy")
    view = load_study(study.name, results=study.results)
    target = max((r for r in view.trials if r.state == "COMPLETE"), key=lambda r: r.values[0])
    _slowed(view.artifacts_dir / target.onnx_artifact)
    with pytest.raises(VerifyError) as e:
        view.export(target.number, tmp_path / "deploy", verify=True)
    rows = {r.metric: r for r in e.value.report.rows}
    assert rows["val_accuracy"].ok and rows["val_accuracy"].measured == target.values[0]
    assert not rows["latency_ms"].ok and rows["latency_ms"].measured > 3 * rows["latency_ms"].recorded
    assert "latency_ms" in str(e.value) and "DIFFERS" in str(e.value)
    # a difference is measured once more before it fails (a burst of other work can slow one measurement), and
    # a model that really is slower fails both
    first = float(rows["latency_ms"].note.removeprefix("measured twice: the first gave "))
    assert first > 3 * rows["latency_ms"].recorded, rows["latency_ms"]
