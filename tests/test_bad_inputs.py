"""Bad input, end to end: every case runs the real CLI (`python -m search ...`) and must end with exit status 2
and exactly one line of output that names the problem, never a traceback, and never after training started.

The cases cover profile and space files (`hwsearch validate`), `hwsearch run` flags and configuration, `--task`
specs, and study lookups (`front`, `export`). They are independent processes, so a module fixture runs the
selected ones a few at a time; each case is still its own test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO

GOOD_PROFILE = """name: p
precisions: [fp32, int8]
budgets: {latency_ms: 1.0, memory_mb: 64}
measure: {backend: local, repeats: 10}
"""

# Files the cases refer to as {d}/<name>; profiles live in device_profiles/, spaces in spaces/.
FILES: dict[str, str | bytes] = {
    "device_profiles/unknown_key.yaml": GOOD_PROFILE + "colour: red\n",
    "device_profiles/wrong_type.yaml": GOOD_PROFILE.replace("memory_mb: 64", "memory_mb: [64]"),
    "device_profiles/negative_budget.yaml": GOOD_PROFILE.replace("latency_ms: 1.0", "latency_ms: -2.5"),
    "device_profiles/zero_budget.yaml": GOOD_PROFILE.replace("memory_mb: 64", "model_mb: 0"),
    "device_profiles/nan_budget.yaml": GOOD_PROFILE.replace("memory_mb: 64", "memory_mb: .NaN"),
    "device_profiles/huge_budget.yaml": GOOD_PROFILE.replace("latency_ms: 1.0", "latency_ms: 1.0e+400"),
    "device_profiles/huge_budget_no_dot.yaml": GOOD_PROFILE.replace("latency_ms: 1.0", "latency_ms: 1e400"),
    "device_profiles/bool_budget.yaml": GOOD_PROFILE.replace("latency_ms: 1.0", "latency_ms: true"),
    "device_profiles/zero_threads.yaml": GOOD_PROFILE + "runtime: {threads: 0}\n",
    "device_profiles/bad_statistic.yaml": GOOD_PROFILE.replace("repeats: 10", "statistic: p99"),
    "device_profiles/remote_without_url.yaml": GOOD_PROFILE.replace("backend: local", "backend: remote"),
    "device_profiles/remote_ftp_url.yaml": GOOD_PROFILE.replace("backend: local",
                                                                "backend: remote, url: 'ftp://pi', token_env: T"),
    "device_profiles/fp32_only.yaml": "name: fp32-only\nprecisions: [fp32]\n",
    "device_profiles/list.yaml": "- fp32\n- int8\n",
    "device_profiles/scalar.yaml": "just a sentence\n",
    "device_profiles/empty.yaml": "",
    "device_profiles/latin1.yaml": b"name: caf\xe9\nprecisions: [fp32]\n",
    "device_profiles/tab_indent.yaml": "name: p\n\tprecisions: [fp32]\n",
    "device_profiles/python_tag.yaml": "name: !!python/object/apply:os.system ['touch {d}/pwned']\n",
    "device_profiles/int_5000_digits.yaml": "name: p\nprecisions: [fp32]\nmeasure: {repeats: " + "9" * 5000 + "}\n",
    "device_profiles/duplicate_key.yaml": GOOD_PROFILE + "name: q\n",
    "spaces/alias_bomb.yaml": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                              "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n",
    "spaces/empty_ratios.yaml": "pruning: {ratios: []}\n",
    "spaces/empty_bits.yaml": "quantization: {bits: []}\n",
    "spaces/unknown_nested_key.yaml": "pruning: {ratios: [0.5], colour: red}\n",
    "spaces/nan_lr.yaml": "distillation: {lr: .nan}\n",
    "spaces/huge_lr.yaml": "distillation: {lr: 1.0e+400}\n",
    "spaces/negative_steps.yaml": "distillation: {budget: {steps: -5}}\n",
    "spaces/zero_steps.yaml": "distillation: {budget: {steps: 0}}\n",
    "spaces/ratio_word.yaml": "pruning: {ratios: ['half']}\n",
    "spaces/bits_string.yaml": "quantization: {bits: '8'}\n",
    "spaces/negative_ratio.yaml": "pruning: {ratios: [-0.5]}\n",
    "spaces/int8_only.yaml": "name: int8-only\nquantization: {bits: [8]}\n",
    "spaces/utf16.yaml": "pruning: {ratios: [0.5]}\n".encode("utf-16"),
    "neither.yaml": "colour: red\n",
    "not_a_db.txt": "hello, I am a text file\nwith two lines\n",
    "tasks.py": """
def raises():
    raise RuntimeError("dataset server is down")

def wrong_type():
    return {"name": "not a task"}
""",
    "setup_fails.py": """import torch
from torch import nn
from torch.utils.data import TensorDataset
from search import InputSpec, Task


class Bag(nn.Module):  # token ids in, class scores out
    def __init__(self):
        super().__init__()
        self.emb, self.fc = nn.Embedding(10, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.emb(x).mean(1))


class DataDependent(nn.Module):  # python control flow on values: torch.export cannot trace it
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x) if float(x.sum()) > 0 else -self.fc(x)


def _ids():
    x, y = torch.randint(1, 10, (16, 6)), torch.randint(0, 2, (16,))
    return TensorDataset(x, y)


def ids_declared_as_floats():
    return Task(name="ids", teacher=Bag(), train=_ids(), val=_ids(), input_shape=(6,), num_classes=2,
                input_spec=InputSpec(dtype="float32"))


def not_exportable():
    d = TensorDataset(torch.rand(16, 4), torch.randint(0, 2, (16,)))
    return Task(name="data-dependent", teacher=DataDependent(), train=d, val=d, input_shape=(4,), num_classes=2)
""",
    "broken_import.py": "import no_such_module_anywhere\n\ndef make():\n    pass\n",
    "exits.py": "import sys\nsys.exit('refusing to load')\n",
    "bad_task.py": """import torch
from search import Task

def make():
    return Task(name="bad", teacher=torch.nn.Linear(4, 2), train=None, val=None, input_shape=(4,), num_classes=2)
""",
}

RUN = ["run", "--task", "digits", "--space", "spaces/default.yaml", "--device", "device_profiles/local-1core.yaml",
       "--trials", "2", "--study", "bad", "--results", "{results}", "--no-progress"]
# For --task cases: a journal storage opens faster than SQLite, and the task is what is under test.
RUN_TASK = [*RUN, "--storage", "journal:{results}/journal.log", "--task"]
STUDY = ["--study", "X", "--results", "{d}/results"]  # a study with trials 0 (COMPLETE) and 1 (FAIL)


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]
    expect: str  # a substring of the one line: the field/flag/file and what is wrong
    bug: str = ""  # set: a known bug in a file this suite's authors may not change (strict xfail)
    marks: tuple = field(default=())


def V(id: str, file: str, expect: str, *more: str, bug: str = "") -> Case:  # noqa: N802 - reads as a table
    return Case(f"validate-{id}", ["validate", f"{{d}}/{file}", *more], expect, bug)


CASES = [
    # ---- device profiles and search spaces: `hwsearch validate`
    V("missing-file", "device_profiles/absent.yaml", "absent.yaml: file not found"),
    V("a-folder", "device_profiles/folder.yaml", "folder.yaml: not a regular file"),
    V("profile-unknown-key", "device_profiles/unknown_key.yaml", "colour: unknown key (allowed keys: name,"),
    V("profile-wrong-type", "device_profiles/wrong_type.yaml", "budgets.memory_mb: Input should be a valid number"),
    V("profile-negative-budget", "device_profiles/negative_budget.yaml", "budgets.latency_ms: Input should be "
      "greater than 0 (got -2.5)"),
    V("profile-zero-budget", "device_profiles/zero_budget.yaml", "budgets.model_mb: Input should be greater than 0"),
    V("profile-nan", "device_profiles/nan_budget.yaml", "budgets.memory_mb: must be a finite number"),
    V("profile-1e400", "device_profiles/huge_budget.yaml", "budgets.latency_ms: must be a finite number"),
    V("profile-1e400-yaml-string", "device_profiles/huge_budget_no_dot.yaml",
      "budgets.latency_ms: Input should be a valid number (got '1e400')"),
    V("profile-bool-budget", "device_profiles/bool_budget.yaml", "budgets.latency_ms: Input should be a valid number"),
    V("profile-zero-threads", "device_profiles/zero_threads.yaml", "runtime.threads: Input should be greater than"),
    V("profile-bad-statistic", "device_profiles/bad_statistic.yaml", "measure.statistic: Input should be 'p50'"),
    V("profile-remote-no-url", "device_profiles/remote_without_url.yaml", "backend 'remote' needs url"),
    V("profile-remote-ftp-url", "device_profiles/remote_ftp_url.yaml", "url must start with http:// or https://"),
    V("yaml-list", "device_profiles/list.yaml", "expected a YAML mapping at the top level, got list"),
    V("yaml-scalar", "device_profiles/scalar.yaml", "expected a YAML mapping at the top level, got str"),
    V("yaml-empty", "device_profiles/empty.yaml", "expected a YAML mapping at the top level, got empty"),
    V("not-utf8", "device_profiles/latin1.yaml", "latin1.yaml: not UTF-8 text (byte 9)"),
    V("utf16", "spaces/utf16.yaml", "utf16.yaml: not UTF-8 text"),
    V("yaml-tab", "device_profiles/tab_indent.yaml", "invalid YAML at line 2, column 1"),
    V("yaml-python-tag", "device_profiles/python_tag.yaml", "could not determine a constructor for the tag"),
    V("space-empty-ratios", "spaces/empty_ratios.yaml", "pruning.ratios: Tuple should have at least 1 item"),
    V("space-empty-bits", "spaces/empty_bits.yaml", "quantization.bits: Tuple should have at least 1 item"),
    V("space-unknown-nested-key", "spaces/unknown_nested_key.yaml", "pruning.colour: unknown key (allowed keys: "
      "ratios"),
    V("space-nan", "spaces/nan_lr.yaml", "distillation.lr: must be a finite number"),
    V("space-1e400", "spaces/huge_lr.yaml", "distillation.lr: must be a finite number"),
    V("space-negative-steps", "spaces/negative_steps.yaml", "distillation.budget.steps: Input should be greater "
      "than 0 (got -5)"),
    V("space-zero-steps", "spaces/zero_steps.yaml", "distillation.budget.steps: Input should be greater than 0"),
    V("space-ratio-word", "spaces/ratio_word.yaml", "pruning.ratios[0]: Input should be a valid number"),
    V("space-bits-string", "spaces/bits_string.yaml", "quantization.bits: Input should be a valid array"),
    V("space-negative-ratio", "spaces/negative_ratio.yaml", "every ratio must lie in [0, 1) (got -0.5)"),
    V("neither-profile-nor-space", "neither.yaml", "cannot tell a device profile"),
    V("space-bits-the-device-cannot-run", "spaces/int8_only.yaml",
      "quantization.bits: 8 needs precision int8, which profile 'fp32-only' runs for no op type", "--device",
      "{d}/device_profiles/fp32_only.yaml"),
    V("missing-device-profile", "spaces/int8_only.yaml", "absent.yaml: file not found", "--device",
      "{d}/absent.yaml"),
    V("int-with-5000-digits", "device_profiles/int_5000_digits.yaml", "invalid YAML: Exceeds the limit"),
    V("duplicate-key", "device_profiles/duplicate_key.yaml", "key 'name' is given twice"),
    V("yaml-alias-bomb", "spaces/alias_bomb.yaml", "aliases (*name) are not allowed"),
    # ---- `hwsearch run` flags: refused by the parser, before anything is loaded
    Case("run-unknown-flag", [*RUN, "--bogus"], "unrecognized arguments: --bogus"),
    Case("run-trials-0", [*RUN, "--trials", "0"], "argument --trials: must be >= 1, got 0"),
    Case("run-trials-negative", [*RUN, "--trials", "-3"], "argument --trials: must be >= 1, got -3"),
    Case("run-trials-word", [*RUN, "--trials", "abc"], "argument --trials: expected a whole number, got 'abc'"),
    Case("run-workers-0", [*RUN, "--workers", "0"], "argument --workers: must be >= 1, got 0"),
    Case("run-sampler-bogus", [*RUN, "--sampler", "bogus"], "argument --sampler: invalid choice: 'bogus'"),
    Case("run-timeout-negative", [*RUN, "--timeout", "-1"], "argument --timeout: must be a finite number > 0"),
    Case("run-timeout-nan", [*RUN, "--timeout", "nan"], "argument --timeout: must be a finite number > 0, got nan"),
    Case("run-refine-negative", [*RUN, "--refine", "-1"], "argument --refine: must be >= 0, got -1"),
    Case("run-train-on-tpu", [*RUN, "--train-on", "tpu"], "argument --train-on: invalid choice: 'tpu'"),
    Case("run-missing-study", [a for a in RUN if a not in ("--study", "bad")],
         "the following arguments are required: --study"),
    Case("unknown-command", ["bogus"], "argument COMMAND: invalid choice: 'bogus'"),
    Case("measure-a-text-file", ["measure", "{d}/not_a_db.txt", "--device", "device_profiles/local-1core.yaml"],
         "measuring not_a_db.txt: loading the model failed"),
    # ---- `hwsearch run` configuration: refused before the task is loaded or anything trained
    Case("run-space-missing", [*RUN, "--space", "{d}/absent.yaml"], "absent.yaml: file not found"),
    Case("run-device-is-a-space", [*RUN, "--device", "spaces/default.yaml"], "distillation: unknown key"),
    Case("run-storage-not-a-url", [*RUN, "--storage", "not-a-database"],
         "--storage 'not-a-database': expected sqlite:///path"),
    Case("run-seed-negative", [*RUN, "--seed", "-1"], "--seed"),
    Case("run-storage-journal-unwritable", [*RUN, "--storage", "journal:/proc/no/such/folder/j.log"], "--storage"),
    Case("run-study-escapes-results", [*RUN, "--study", "../escape"], "--study '../escape': use letters"),
    Case("run-study-empty", [*RUN, "--study", ""], "--study '': use letters"),
    Case("run-results-under-a-file", [*RUN, "--results", "{d}/not_a_db.txt/results"], "not_a_db.txt"),
    # ---- `--task`
    Case("task-unknown-name", [*RUN_TASK, "nope"], "--task 'nope': expected a built-in (digits, fashion-mnist, "
         "fashion-mnist-resnet18, wordnet-supersense, wordnet-lm)"),
    Case("task-file-missing", [*RUN_TASK, "missing.py:f"], "--task 'missing.py:f': file missing.py not found"),
    Case("task-function-missing", [*RUN_TASK, "{d}/tasks.py:not_there"], "tasks.py has no function 'not_there'"),
    Case("task-function-raises", [*RUN_TASK, "{d}/tasks.py:raises"],
         "the task function raised RuntimeError: dataset server is down"),
    Case("task-wrong-return-type", [*RUN_TASK, "{d}/tasks.py:wrong_type"],
         "the function returned dict, expected search.Task"),
    Case("task-module-import-fails", [*RUN_TASK, "{d}/broken_import.py:make"],
         "failed: ModuleNotFoundError: No module named 'no_such_module_anywhere'"),
    Case("task-input-dtype-not-declared", [*RUN_TASK, "{d}/setup_fails.py:ids_declared_as_floats"],
         "input_spec.dtype is 'float32' but train[0]'s input is int64"),
    Case("task-teacher-not-exportable", [*RUN_TASK, "{d}/setup_fails.py:not_exportable"],
         "task 'data-dependent': exporting the teacher to ONNX failed:"),
    Case("task-module-calls-sys-exit", [*RUN_TASK, "{d}/exits.py:make"], "it called sys.exit('refusing to load')"),
    Case("task-with-a-bad-field", [*RUN_TASK, "{d}/bad_task.py:make"],
         "the returned Task's train must be a map-style dataset"),
    # ---- exported-study lookups
    Case("front-unknown-study", ["front", "--study", "nope", "--results", "{d}/results"],
         "no study 'nope' in"),
    Case("export-trial-999", ["export", *STUDY, "--trial", "999", "--out", "{results}/out"],
         "study 'X' has no trial 999 (trials: 0..1)"),
    Case("export-trial-negative", ["export", *STUDY, "--trial", "-1", "--out", "{results}/out"],
         "study 'X' has no trial -1"),
    Case("export-failed-trial", ["export", *STUDY, "--trial", "1", "--out", "{results}/out"],
         "trial 1 is FAIL: out of memory; only COMPLETE trials can be exported"),
    Case("export-trial-word", ["export", *STUDY, "--trial", "last", "--out", "{results}/out"],
         "argument --trial: invalid int value: 'last'"),
    Case("front-storage-not-a-url", ["front", "--study", "X", "--storage", "not a database"],
         "--storage 'not a database': expected sqlite:///path"),
    Case("front-storage-text-file", ["front", "--study", "X", "--storage", "sqlite:///{d}/not_a_db.txt"],
         "file is not a database"),
    Case("front-storage-journal-text-file", ["front", "--study", "X", "--storage", "journal:{d}/not_a_db.txt"],
         "cannot open the journal file"),
]
assert len({c.id for c in CASES}) == len(CASES)


def _write_inputs(d: Path) -> None:
    for name, content in FILES.items():
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.replace("{d}", str(d)))
    (d / "device_profiles" / "folder.yaml").mkdir()
    import optuna  # a study as `hwsearch run` stores it: trial 0 COMPLETE, trial 1 FAIL with its reason
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    (d / "results" / "X").mkdir(parents=True)
    study = optuna.create_study(study_name="X", storage=f"sqlite:///{d}/results/X/study.db",
                                directions=["maximize", "minimize", "minimize"])
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.9, 1.0, 10.0]))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "out of memory"}))


def _run(case: Case, d: Path) -> tuple[subprocess.CompletedProcess, Path]:
    results = d / "runs" / case.id
    args = [a.replace("{d}", str(d)).replace("{results}", str(results)) for a in case.args]
    proc = subprocess.run([sys.executable, "-m", "search", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    return proc, results


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> tuple[Path, dict[str, tuple[subprocess.CompletedProcess, Path]]]:
    """The selected cases, run a few at a time (independent processes; most of their time is imports)."""
    d = tmp_path_factory.mktemp("bad-inputs")
    _write_inputs(d)
    wanted = [item.callspec.params["case"] for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec")]
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1))) as pool:
        done = dict(zip([c.id for c in wanted], pool.map(lambda c: _run(c, d), wanted), strict=True))
    return d, done


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_is_one_line_and_exit_status_2(case: Case, outcomes):
    d, done = outcomes
    proc, results = done[case.id]
    output = proc.stdout + proc.stderr
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert "Traceback" not in output, output[-2000:]
    assert proc.returncode == 2, (proc.returncode, output[-2000:])
    assert len(lines) == 1, output
    assert lines[0].startswith("hwsearch") and case.expect in lines[0], lines[0]
    # Caught before any work: nothing trained, exported or measured, no teacher cached.
    made = [p.name for p in results.rglob("*") if p.suffix in (".onnx", ".pt", ".json") or p.name == "teachers"]
    assert not made, made
    assert not (d / "pwned").exists()  # a YAML tag never runs code


def test_the_suite_is_broad():
    kinds = {c.args[0] if c.args[0] != "run" else ("task" if c.args[-2] == "--task" else "run") for c in CASES}
    assert len(CASES) >= 30 and {"validate", "run", "task", "front", "export"} <= kinds
