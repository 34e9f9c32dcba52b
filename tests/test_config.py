"""Profiles and spaces: shipped files validate; broken ones give one line, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, run_cli

from search.config import load_profile, load_space
from search.errors import ConfigError

SHIPPED = sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("device_profiles/*.yaml"), *REPO.glob("spaces/*.yaml")])

GOOD_PROFILE = """name: p
precisions: [fp32, int8]
budgets: {latency_ms: 1.0, memory_mb: 64}
measure: {backend: local, repeats: 10}
"""


def test_every_shipped_file_validates():
    assert len(SHIPPED) >= 8
    r = run_cli("validate", *SHIPPED)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("OK ") == len(SHIPPED)


def test_shipped_profiles_and_spaces_load():
    names = {load_profile(REPO / "device_profiles" / f"{n}.yaml").name for n in
             ("local-1core", "local-2core", "raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano-cpu")}
    assert len(names) == 5
    assert load_profile(REPO / "device_profiles/raspberry-pi-4.yaml").measure.backend == "remote"
    assert load_space(REPO / "spaces/default.yaml").quantization.bits == (32, 8)


# (kind, file text, substring that must name the field / the problem)
BROKEN = [
    ("profile", GOOD_PROFILE + "colour: red\n", "colour: unknown key (allowed keys: name, description"),
    ("profile", GOOD_PROFILE.replace("latency_ms: 1.0", "latency_ms: 0"), "budgets.latency_ms: Input should be greater than 0"),
    ("profile", GOOD_PROFILE.replace("latency_ms: 1.0", "latency_ms: -5"), "budgets.latency_ms"),
    ("profile", GOOD_PROFILE.replace("memory_mb: 64", "memory_mb: 'lots'"), "budgets.memory_mb: Input should be a valid number"),
    ("profile", GOOD_PROFILE.replace("latency_ms: 1.0", "latency_ms: .nan"), "budgets.latency_ms: must be a finite number"),
    ("profile", GOOD_PROFILE.replace("repeats: 10", "repeats: 100000000000"), "measure.repeats: Input should be less than"),
    ("profile", GOOD_PROFILE.replace("[fp32, int8]", "[]"), "precisions: Tuple should have at least 1 item after validation"),
    ("profile", GOOD_PROFILE.replace("[fp32, int8]", "{Conv: [fp32, int8], Foo: [fp32]}"), "precisions.Foo.[key]: Input should be 'Conv', 'Gemm' or 'MatMul'"),
    ("profile", GOOD_PROFILE.replace("[fp32, int8]", "{Conv: [int8]}"), "precisions: must include fp32 (Conv)"),
    ("profile", GOOD_PROFILE.replace("[fp32, int8]", "[fp32, fp16]"), "precisions[1]: Input should be 'fp32', 'int16', 'int8', 'int4' or 'int8-dynamic'"),
    ("profile", GOOD_PROFILE.replace("[fp32, int8]", "[fp32, int3]"), "precisions[1]: Input should be 'fp32'"),
    ("profile", GOOD_PROFILE.replace("[fp32, int8]", "[int8]"), "precisions: must include fp32"),
    ("profile", GOOD_PROFILE.replace("backend: local", "backend: remote"), "measure: backend 'remote' needs url"),
    ("profile", GOOD_PROFILE.replace("backend: local", "backend: cloud"), "measure.backend: Input should be 'local' or 'remote'"),
    ("profile", GOOD_PROFILE + "runtime: {threads: 2, thread: 1}\n", "runtime.thread: unknown key (allowed keys: provider, threads"),
    ("profile", GOOD_PROFILE + "channel_multiple: 0\n", "channel_multiple: Input should be greater than or equal to 1"),
    ("profile", "- just\n- a list\n", "expected a YAML mapping at the top level, got list"),
    ("profile", "name: [unclosed\n", "invalid YAML at line"),
    ("space", "pruning: {ratios: []}\n", "pruning.ratios: Tuple should have at least 1 item"),
    ("space", "pruning: {ratios: [0.5, 1.5]}\n", "every ratio must lie in [0, 1)"),
    ("space", "quantization: {bits: [32, 3]}\n", "quantization.bits[1]: Input should be 32, 16, 8 or 4"),
    ("space", "quantization: {bits: []}\n", "quantization.bits: Tuple should have at least 1 item"),
    ("space", "distillation: {temperature: {low: 4, high: 1}}\n", "distillation.temperature: low (4.0) must be <= high (1.0)"),
    ("space", "distillation: {promote: {candidates: 1}}\n", "distillation.promote.candidates: Input should be greater than or equal to 2"),
    ("space", "distillation: {temperature: {low: 0, high: 4, log: true}}\n", "log-scale range needs low > 0"),
    ("space", "distillation: {budget: {epochs: 1, steps: 10}}\n", "distillation.budget: give exactly one of epochs or steps"),
    ("space", "distillation: {lr: 0}\n", "distillation.lr: Input should be greater than 0"),
    ("space", "pruning: {granularity: channel}\n", "pruning.granularity: Input should be 'layer' or 'block'"),
    ("space", "accuracy: {max_drop: 2}\n", "accuracy.max_drop: Input should be less than or equal to 1"),
    ("space", "quantization: {per_channel: 'yes'}\n", "quantization.per_channel: Input should be a valid boolean"),
]


@pytest.mark.parametrize(("kind", "text", "expect"), BROKEN, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(BROKEN)])
def test_broken_file_is_one_line_exit_2(tmp_path: Path, kind: str, text: str, expect: str):
    folder = tmp_path / ("device_profiles" if kind == "profile" else "spaces")
    folder.mkdir()
    f = folder / "broken.yaml"
    f.write_text(text)
    r = run_cli("validate", str(f))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert str(f) in lines[0] and expect in lines[0], lines[0]


def test_non_utf8_and_missing_and_empty(tmp_path: Path):
    bad = tmp_path / "spaces" / "latin1.yaml"
    bad.parent.mkdir()
    bad.write_bytes(b"name: caf\xe9\n")
    empty = tmp_path / "spaces" / "empty.yaml"
    empty.write_text("")
    for path, expect in ((bad, "not UTF-8"), (tmp_path / "nope.yaml", "file not found"), (empty, "got empty")):
        r = run_cli("validate", str(path))
        assert r.returncode == 2 and expect in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bits_the_profile_cannot_run(tmp_path: Path):
    r = run_cli("validate", "spaces/aggressive.yaml", "--device", "device_profiles/raspberry-pi-4.yaml")
    assert r.returncode == 2
    assert "quantization.bits: 4 needs precision int4" in r.stderr and "allowed bits: 32, 8" in r.stderr
    r = run_cli("validate", "spaces/default.yaml", "--device", "device_profiles/raspberry-pi-4.yaml")
    assert r.returncode == 0, r.stderr


def test_one_bad_file_among_good_ones_fails_but_reports_all(tmp_path: Path):
    f = tmp_path / "spaces" / "x.yaml"
    f.parent.mkdir()
    f.write_text("pruning: {ratios: [2]}\n")
    r = run_cli("validate", "spaces/default.yaml", str(f), "device_profiles/local-1core.yaml")
    assert r.returncode == 2
    assert r.stdout.count("OK ") == 2 and "x.yaml" in r.stderr


def test_loader_raises_config_error_in_python(tmp_path: Path):
    f = tmp_path / "p.yaml"
    f.write_text("name: p\nbudgets: {model_mb: 0}\n")
    with pytest.raises(ConfigError, match=r"budgets\.model_mb"):
        load_profile(f)


def test_bad_cli_flag_is_one_line():
    r = run_cli("validate")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_help_and_validate_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from search.cli import main\n"
            "try:\n    main(['validate', 'spaces/default.yaml'])\nexcept SystemExit: pass\n"
            "print('torch' in sys.modules, 'optuna' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip().endswith("False False"), out.stdout + out.stderr
    code = "import sys\nfrom search.cli import build_parser\nbuild_parser()\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_a_study_from_before_a_new_space_field_resumes_and_a_changed_space_does_not():
    """check_same_setup re-reads the stored space through today's schema: a field added since (here
    `augment` of the budgets) takes its default instead of refusing the resume; a real change still refuses."""
    import optuna

    from search.config import load_profile, load_space
    from search.errors import UserError
    from search.study.record import S_PROFILE, S_PROFILE_DIGEST, S_SPACE, S_TASK
    from search.study.setup import check_same_setup

    space = load_space(REPO / "spaces" / "default.yaml")
    profile = load_profile(REPO / "device_profiles" / "local-1core.yaml")
    old = space.model_dump(mode="json")
    for budget in ("budget", "refine"):
        del old["distillation"][budget]["augment"]
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for k, v in {S_TASK: "digits", S_SPACE: old, S_PROFILE: profile.model_dump(mode="json"),
                 S_PROFILE_DIGEST: profile.digest()}.items():
        study.set_user_attr(k, v)
    check_same_setup(study, "digits", space, profile)
    changed = space.model_copy(update={"distillation": space.distillation.model_copy(update={"lr": 0.1})})
    with pytest.raises(UserError, match="another search space"):
        check_same_setup(study, "digits", changed, profile)
