"""Inspection: the Pareto front (table, CSV/JSON), the HTML report and the verified export of a trial.

Names load lazily: the CLI imports `search.inspect.commands` just to build its parsers, and that must
not pull in pandas or optuna.
"""

from __future__ import annotations

from search.utils.lazy import lazy_getattr

_EXPORTS = {
    "load_study": "search.inspect.api",
    "StudyView": "search.inspect.api",
    "write_outputs": "search.inspect.api",
    "compute_front": "search.inspect.front",
    "export_trial": "search.inspect.export",
    "ExportResult": "search.inspect.export",
    "VerifyError": "search.inspect.verify",
    "VerifyReport": "search.inspect.verify",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
