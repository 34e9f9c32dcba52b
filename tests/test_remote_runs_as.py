"""The device's own truth on a remote profile: a study reads what each layer runs as from the agent's optimised
graph (/v1/optimize), and `export --verify` runs the exported model on the device (/v1/run) and compares its
outputs with this machine's."""

from __future__ import annotations

from pathlib import Path

import onnx
import optuna
import pytest
from _measure_fixtures import agent_serving, models
from _study_fixtures import make_results, write_configs

from search.compress.onnx_names import weighted_nodes
from search.compress.runs import classify
from search.errors import TrialFailure
from search.inspect.verify import verify_model
from search.measure import runner
from search.study.record import T_PRECISION, T_RUNS_READ_ON

TOKEN = "runs-as-token"


@pytest.fixture
def spied_agent(monkeypatch):
    """A real agent on loopback; every graph it optimises is kept (the real `runner.optimize` runs)."""
    graphs: list[bytes] = []
    real = runner.optimize

    def optimize(model: str, out: str, **kw) -> dict:
        made = real(model, out, **kw)
        graphs.append(Path(out).read_bytes())
        return made

    monkeypatch.setattr(runner, "optimize", optimize)
    monkeypatch.setenv("HW_RUNS_TOKEN", TOKEN)
    with agent_serving(TOKEN) as srv:
        yield srv, graphs


def test_the_agent_answers_the_graph_its_runtime_executes(spied_agent):
    from search.config.profile import DeviceProfile
    from search.measure.remote import RemoteBackend

    srv, graphs = spied_agent
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    backend = RemoteBackend(DeviceProfile(name="r", measure={"backend": "remote", "url": url,
                                                             "token_env": "HW_RUNS_TOKEN"}))
    graph, made = backend.optimized_model(models()["tiny"])
    assert graph == graphs[-1] and made["device"] == runner.describe_device()["summary"]
    assert onnx.load_from_string(graph).graph.node  # a loadable ONNX graph
    bad = models()["tiny"].with_name("not-onnx.onnx")
    bad.write_bytes(b"\x08\x07" + b"junk" * 10)
    with pytest.raises(TrialFailure, match=r"refused to optimize not-onnx.onnx \(400\)"):
        backend.optimized_model(bad)


def test_the_agent_runs_a_stored_model_on_given_inputs(spied_agent):
    import numpy as np
    import onnxruntime as ort

    from search.config.profile import DeviceProfile
    from search.measure.remote import RemoteBackend

    srv, _ = spied_agent
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    backend = RemoteBackend(DeviceProfile(name="r", measure={"backend": "remote", "url": url,
                                                             "token_env": "HW_RUNS_TOKEN"}))
    model = models()["tiny"]
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 3 for d in inp.shape]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    there, where = backend.run_outputs(model, {inp.name: x})
    here = sess.run(None, {inp.name: x})
    assert [there[o.name] for o in sess.get_outputs()][0].tolist() == here[0].tolist()
    assert where["device"] == runner.describe_device()["summary"]
    with pytest.raises(TrialFailure, match=r"refused to run .*\(400\): .*not an .npz of the model's inputs"):
        backend.run_outputs(model, {"wrong_name": x})


def test_a_remote_trial_reads_its_kernels_from_the_agent(tmp_path, digits_task, spied_agent):
    import search

    srv, graphs = spied_agent
    folder = make_results(tmp_path, digits_task)
    space, profile = write_configs(
        folder, measure=f"backend: remote, url: 'http://127.0.0.1:{srv.server_address[1]}', "
                        "token_env: HW_RUNS_TOKEN, warmup: 5, repeats: 30, batch: 1, timeout_s: 60, rounds: 1, "
                        "max_rounds: 2")
    search.run("digits", space, profile, 3, "remote", results=folder, seed=0, progress=False, seed_plans=False,
               write_outputs=False)
    st = optuna.load_study(study_name="remote", storage=f"sqlite:///{folder / 'remote' / 'study.db'}")
    done = [t for t in st.trials if T_PRECISION in t.user_attrs]
    assert len(done) >= 3 and len(graphs) >= len(done)
    summary = runner.describe_device()["summary"]
    assert all(t.user_attrs[T_RUNS_READ_ON] == f"device: {summary}" for t in done)
    # The last trial's record is the agent's graph classified: its precision names the kernels found there.
    last = done[-1]
    store = optuna.artifacts.FileSystemArtifactStore(str(folder / "remote" / "artifacts"))
    with store.open_reader(last.user_attrs["onnx_artifact_id"]) as f:
        quantized = onnx.load_from_string(f.read())
    # Layer -> node names from the study's fp32 teacher file: a pruned student keeps its node names.
    teacher = folder / "remote" / "reference.onnx"
    layer_nodes = {k: [n.name for n in v] for k, v in weighted_nodes(teacher).items()}
    seen = [classify(quantized, onnx.load_from_string(g), layer_nodes) for g in graphs]
    kernels = {k: v["runs_as"] for k, v in last.user_attrs[T_PRECISION].items()}
    assert any({k: r.kernel for k, r in runs.items()} == kernels for runs in seen)

    # export --verify on the remote profile runs the exported model on the device, on val samples.
    view = search.load_study("remote", results=folder)
    report = verify_model(view, view.trials[last.number], _exported(view, last.number, tmp_path))
    row = next(r for r in report.rows if r.metric == "device_outputs")
    assert row.ok and row.measured == 0.0 and "16 val samples on" in row.note, row


def _exported(view, number: int, folder: Path) -> Path:
    out = folder / f"trial-{number}.onnx"
    view.download_artifact(view.trials[number].onnx_artifact, out)
    return out
