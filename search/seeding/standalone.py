"""A study's trial context outside `hwsearch run`, for analyses of the teacher (`hwsearch sensitivity`).

With `study=NAME` the context is the study's own: `results/NAME/` (its reference model, structure cache and
drift anchor), read from `results/NAME/study.db` when that study exists (and refused when it was made for
another task, space or profile). Without one, a scratch folder per teacher, `results/sensitivity/<task>-<fp>/`,
holds the same things, so a later analysis of the same teacher measures nothing twice. Nothing here creates
an Optuna study on disk: a later `hwsearch run --study NAME` starts from an empty storage as usual.
"""

from __future__ import annotations

import re
from pathlib import Path

from search.errors import UserError

SCRATCH = "sensitivity"
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def load_inputs(task: str, space: str | Path, device: str | Path, *, results: str | Path = "results",
                data_dir: str | Path | None = None, train_on: str = "auto", progress: bool = True):
    """(Task, SearchSpace, DeviceProfile), checked: bad files and tasks are UserErrors naming them."""
    from search.config import load_profile, load_space
    from search.tasks import load_task

    space_cfg, profile = load_space(space), load_profile(device)
    space_cfg.bits_for(profile, source=str(space))
    t = load_task(task, data_dir=data_dir, results_dir=results, train_on=train_on, progress=progress)
    return t, space_cfg, profile


def study_folder(t, study: str | None, results: str | Path = "results") -> Path:
    """results/<study>/, or the teacher's scratch folder results/sensitivity/<task>-<teacher fingerprint>/."""
    if study is not None:
        if not _STUDY_NAME.fullmatch(study):
            raise UserError(f"--study {study!r}: use letters, digits, '.', '_' or '-', starting with a letter or "
                            "digit (it names the folder results/<study>/)")
        return Path(results) / study
    from search.study.context import teacher_fingerprint

    return Path(results) / SCRATCH / f"{_slug(t.name)}-{teacher_fingerprint(t.teacher, t.train)[:12]}"


def open_context(task: str, space: str | Path, device: str | Path, *, study: str | None = None,
                 results: str | Path = "results", seed: int = 0, data_dir: str | Path | None = None,
                 train_on: str = "auto", progress: bool = True, loaded=None):
    """(Context, study folder) for `task` (a built-in name or `file.py:function`) on this space and profile;
    `loaded`: what `load_inputs` returned for these arguments, when the caller has it already."""
    if study is not None:
        study_folder(None, study, results)  # a bad name fails before anything loads
    t, space_cfg, profile = loaded or load_inputs(task, space, device, results=results, data_dir=data_dir,
                                                  train_on=train_on, progress=progress)
    study_dir = study_folder(t, study, results)

    import optuna

    from search.study.record import DIRECTIONS
    from search.study.setup import build_context, check_same_setup
    from search.study.storage import default_url, open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    st = None
    if study is not None and (study_dir / "study.db").is_file():
        try:
            st = optuna.load_study(study_name=study, storage=open_storage(default_url(study_dir)))
        except KeyError:  # a database without this study name: treat as new
            st = None
        if st is not None:
            check_same_setup(st, task, space_cfg, profile)
    if st is None:  # in memory: the facts build_context records are not kept (the folder's caches are)
        st = optuna.create_study(directions=list(DIRECTIONS))
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--results: cannot create the folder {study_dir} ({e.strerror})") from None
    ctx = build_context(st, t, space_cfg, profile, study_dir, seed=seed, train_on=train_on, task_spec=task,
                        space_file=str(space), profile_file=str(device))
    return ctx, study_dir


def sensitivity(task: str, space: str | Path, device: str | Path, *, study: str | None = None,
                results: str | Path = "results", seed: int = 0, bn_batches: int | None = None, refresh: bool = False,
                data_dir: str | Path | None = None, train_on: str = "auto", progress: bool = True):
    """`measure_sensitivity` of the task's teacher, the context built as `open_context` says (the Python API of
    `hwsearch sensitivity`). A cached table is returned without building the context (nothing is measured)."""
    from search.seeding.sensitivity import DEFAULT_BN_BATCHES, load_cached, measure_sensitivity, sensitivity_key

    bn_batches = DEFAULT_BN_BATCHES if bn_batches is None else bn_batches
    if bn_batches < 0:
        raise UserError(f"--bn-batches must be 0 or more, got {bn_batches}")
    if study is not None:
        study_folder(None, study, results)
    loaded = load_inputs(task, space, device, results=results, data_dir=data_dir, train_on=train_on,
                         progress=progress)
    t, space_cfg, profile = loaded
    folder = study_folder(t, study, results)
    key = sensitivity_key(t, space_cfg, profile, seed=seed, bn_batches=bn_batches)
    if not refresh and (found := load_cached(folder, key)) is not None:
        return found
    ctx, study_dir = open_context(task, space, device, study=study, results=results, seed=seed,
                                  train_on=train_on, loaded=loaded)
    return measure_sensitivity(ctx, bn_batches=bn_batches, cache_dir=study_dir, refresh=refresh, progress=progress)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "task"
