"""Open a finished (or running) study for reading: `load_study(...)` -> StudyView, and write a study's
outputs after a run (`write_outputs`).

Layouts: `results/<study>/study.db` (SQLite, study name = folder name) with artifacts in
`results/<study>/artifacts/`, or a storage URL (PostgreSQL, SQLite elsewhere, a JournalFile) with the
study name given and artifacts in the folder the study attribute S_ARTIFACTS names.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.errors import UserError, redact_url
from search.inspect.export import export_trial
from search.inspect.holdout import score_test
from search.inspect.report import write_report
from search.inspect.view import StudyData
from search.utils.atomic import atomic_write_text

if TYPE_CHECKING:  # optuna loads only when a study is opened
    import optuna

DB_NAME = "study.db"
FRONT_CSV = "front.csv"
REPORT_HTML = "report.html"


def is_storage_url(value: str) -> bool:
    return "://" in value or value.startswith("journal:")


def open_storage(url: str) -> Any:
    """The search's own storage opener (same URL conventions), after checking that a file-backed
    storage exists: opening a missing SQLite or journal file would silently create an empty one."""
    from search.study.storage import open_storage as _open

    for prefix in ("sqlite:///", "journal:"):
        if url.startswith(prefix):
            path = Path(url.removeprefix(prefix).removeprefix("//") if prefix == "journal:" else url[len(prefix):])
            if not path.is_file():
                raise UserError(f"--storage {url}: {path} not found")
    with warnings.catch_warnings():  # its heartbeat options warn (experimental/deprecated); a reader needs none
        warnings.simplefilter("ignore")
        try:
            return _open(url)
        except UserError:
            raise
        except Exception as e:  # a file that is not a journal (Optuna's reader fails deep inside), ...
            reason = " ".join(str(e).split())[:200]
            raise UserError(f"--storage {redact_url(url)}: cannot read it as a study storage "
                            f"({type(e).__name__}: {reason})") from None


def _study_names(storage: Any) -> list[str]:
    import optuna

    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))


class StudyView(StudyData):
    """A study opened for reading (see StudyData), with what a user does with one: export a trial, write
    the report, save the front."""

    def export(self, trial: int, out_dir: str | Path, verify: bool = False) -> Path:
        """Write model.onnx + manifest.json for `trial` into `out_dir`; returns the model's path.
        With `verify`, raises search.inspect.verify.VerifyError when the re-measurement disagrees."""
        return export_trial(self, trial, out_dir, verify=verify).model

    def report(self, path: str | Path | None = None) -> Path:
        """Write the self-contained HTML report (default results/<study>/report.html)."""
        return write_report(self, Path(path) if path else self.folder / REPORT_HTML)

    def save_front(self, path: str | Path | None = None) -> Path:
        """Write the front as CSV (default results/<study>/front.csv)."""
        return atomic_write_text(Path(path) if path else self.folder / FRONT_CSV, self.front.to_csv(index=False))


def load_study(name_or_url: str, *, results: str | Path = "results", study_name: str | None = None) -> StudyView:
    """Open a study by name (results/<name>/study.db) or by storage URL (`study_name` then names the
    study; it may be left out when the storage holds exactly one)."""
    import optuna

    results = Path(results)
    if is_storage_url(name_or_url):
        storage = open_storage(name_or_url)
        names = _study_names(storage)
        if study_name is None:
            if len(names) != 1:
                raise UserError(f"--storage {redact_url(name_or_url)} holds {len(names)} studies "
                                f"({', '.join(names) or 'none'}): name one with --study")
            study_name = names[0]
        url = name_or_url
    else:
        if study_name not in (None, name_or_url):
            raise UserError(f"study named twice: {name_or_url!r} and {study_name!r}")
        study_name = name_or_url
        if not results.is_dir():
            raise UserError(f"results folder {results} not found (pass --results DIR or --storage URL)")
        db = results / study_name / DB_NAME
        if not db.is_file():
            known = sorted(p.parent.name for p in results.glob(f"*/{DB_NAME}"))
            raise UserError(f"no study '{study_name}' in {results}/ ({db} not found; studies there: "
                            f"{', '.join(known) or 'none'})")
        url = f"sqlite:///{db}"
        storage = open_storage(url)
        names = _study_names(storage)
    if study_name not in names:
        raise UserError(f"no study '{study_name}' in {redact_url(url)} (studies there: {', '.join(names) or 'none'})")
    study = optuna.load_study(study_name=study_name, storage=storage)
    return StudyView(name=study_name, storage_url=url, study=study, folder=results / study_name, results=results)


def write_outputs(study: optuna.Study, study_dir: str | Path, task: Any | None = None) -> None:
    """Test scores of the front points (when `task` is given), front.csv and report.html for a study the
    search just ran (called by search.run). A failure here must not lose the run's result: the study is
    stored, so it becomes a warning naming the fix."""
    folder = Path(study_dir)
    view = StudyView(name=study.study_name, study=study, folder=folder, results=folder.parent)
    if task is not None:
        try:
            score_test(view, task)
        except Exception as e:
            print(f"warning: the front was not scored on the test split ({type(e).__name__}: {e}); "
                  f"run `hwsearch front --study {study.study_name} --score-test` to retry", file=sys.stderr)
        view = StudyView(name=study.study_name, study=study, folder=folder, results=folder.parent)
    try:
        view.save_front()
        view.report()
    except Exception as e:
        print(f"warning: front.csv/report.html not written ({type(e).__name__}: {e}); "
              f"run `hwsearch plot --study {study.study_name}` to retry", file=sys.stderr)
