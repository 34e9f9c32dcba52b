"""One progress-bar helper (rich, on stderr) so every long step looks and behaves the same."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class _Bar:
    def __init__(self, progress, task_id) -> None:
        self._p, self._id = progress, task_id

    def advance(self, n: float = 1, status: str | None = None) -> None:
        if self._p is not None:
            kw = {"status": status} if status is not None else {}
            self._p.update(self._id, advance=n, **kw)

    def update(self, *, total: float | None = None, status: str | None = None, description: str | None = None,
               completed: float | None = None) -> None:
        if self._p is None:
            return
        kw = {k: v for k, v in {"total": total, "status": status, "description": description,
                                 "completed": completed}.items() if v is not None}
        self._p.update(self._id, **kw)


def make_progress(label_column: str = "{task.description}"):
    """A rich Progress on stderr: label, bar, done/total, elapsed, ETA and a free `status` field."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn(label_column), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                    console=Console(file=sys.stderr))


@contextmanager
def progress_bar(description: str, total: float | None, enabled: bool = True) -> Iterator[_Bar]:
    """A rich progress bar with ETA on stderr; a no-op bar when disabled."""
    if not enabled:
        yield _Bar(None, None)
        return
    with make_progress() as p:
        yield _Bar(p, p.add_task(description, total=total, status=""))
