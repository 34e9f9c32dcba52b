"""Inspection: the Pareto front (table, CSV/JSON), the HTML report and the verified export of a trial.

Names load lazily: the CLI imports `search.inspect.commands` just to build its parsers, and that must
not pull in pandas or optuna.
"""

from __future__ import annotations

from search.utils.lazy import exported, lazy_getattr

_EXPORTS = {
    "search.inspect.api": ("load_study", "StudyView", "write_outputs"),
    "search.inspect.front": ("compute_front",),
    "search.inspect.export": ("export_trial", "ExportResult"),
    "search.inspect.verify": ("VerifyError", "VerifyReport"),
}

__all__ = exported(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
