"""`pip install` outside the repository: a wheel built from this tree, installed into a fresh venv, runs a
short study from an empty folder with the shipped space and profile given by name."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # builds a wheel and runs a study in a fresh interpreter


def test_the_wheel_runs_a_study_from_an_empty_folder_with_spaces_and_profiles_by_name(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("hwsearch-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # The dependencies (torch, onnxruntime, ...) from this environment, not hwsearch itself: a .pth line adds
    # the folder, and .pth files in it (this checkout's editable install) are not read from there.
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300)
    empty = tmp_path / "work"
    empty.mkdir()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import search; print(search.__file__)"], cwd=empty,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert where.startswith(str(venv)), where  # the installed wheel, not the checkout
    listed = subprocess.run([str(venv / "bin" / "hwsearch"), "profiles"], cwd=empty, capture_output=True, text=True,
                            timeout=300)
    assert listed.returncode == 0 and "local-1core" in listed.stdout and str(venv) in listed.stdout, listed.stderr
    init = subprocess.run([str(venv / "bin" / "hwsearch"), "init", "mine.py"], cwd=empty, capture_output=True,
                          text=True, timeout=300)
    assert init.returncode == 0 and "def make_task" in (empty / "mine.py").read_text(), init.stderr
    r = subprocess.run([str(venv / "bin" / "hwsearch"), "run", "--task", "digits", "--space", "default", "--device",
                        "local-1core", "--trials", "2", "--study", "wheel", "--no-progress"],
                       cwd=empty, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "study 'wheel':" in r.stdout and " complete, 0 failed" in r.stdout, r.stdout
    assert (empty / "results" / "wheel" / "study.db").is_file()
    bad = subprocess.run([str(venv / "bin" / "hwsearch"), "run", "--task", "digits", "--space", "no-such-space",
                          "--device", "local-1core", "--trials", "2", "--study", "x"], cwd=empty, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "no shipped space of that name (shipped: aggressive, default" in bad.stderr


@pytest.mark.parametrize("value", ["default", "default.yaml"])
def test_a_shipped_space_and_profile_by_name_from_any_folder(tmp_path, monkeypatch, value):
    from search.config import load_profile, load_space
    from search.errors import ConfigError

    monkeypatch.chdir(tmp_path)  # no spaces/ here
    assert load_space(value) == load_space(REPO / "spaces" / "default.yaml")
    assert load_profile("local-1core").name == "local-1core"
    (tmp_path / "default").write_text("name: mine\n")  # an existing file is a path, never a shipped name
    assert load_space("default").name == "mine"
    with pytest.raises(ConfigError, match=r"^no-such: file not found, and no shipped profile of that name "
                                          r"\(shipped: jetson-orin-nano-cpu, local-1core"):
        load_profile("no-such")
    with pytest.raises(ConfigError, match=r"^sub/default\.yaml: file not found$"):  # a path stays a path
        load_space("sub/default.yaml")
