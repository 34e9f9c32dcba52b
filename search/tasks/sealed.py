"""A held-out split that cannot be read by accident: decide on `val`, open `test` once, to report.

A benchmark that chooses a default or a recipe wraps its task's test split in `SealedSplit` before any
decision and calls `unseal()` only in its final report: any read before that (its length, an item, the
tensors behind it) raises `SplitSealed`, so a choice that peeked at the test split fails loudly instead of
quietly fitting it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from search.tasks.base import Task


class SplitSealed(RuntimeError):
    """The split was read before `unseal()`."""


class SealedSplit:
    """Wraps a map-style dataset; every read raises `SplitSealed` until `unseal()`."""

    def __init__(self, data: Any, name: str = "test") -> None:
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_sealed", True)
        object.__setattr__(self, "reads_before_unseal", 0)

    @property
    def sealed(self) -> bool:
        return self._sealed

    def unseal(self) -> Any:
        """Open the split (the final report); returns the dataset itself."""
        object.__setattr__(self, "_sealed", False)
        return self._data

    def _check(self, what: str) -> None:
        if self._sealed:
            object.__setattr__(self, "reads_before_unseal", self.reads_before_unseal + 1)
            raise SplitSealed(f"the {self._name} split was read ({what}) before the final report: decisions read "
                              "val only")

    def __len__(self) -> int:
        self._check("its length")
        return len(self._data)

    def __getitem__(self, i: Any) -> Any:
        self._check(f"item {i!r}")
        return self._data[i]

    def __getattr__(self, name: str) -> Any:  # e.g. `.tensors`, which dataset_arrays reads
        if name.startswith("__"):
            raise AttributeError(name)
        self._check(f"attribute {name!r}")
        return getattr(self._data, name)


def seal_test(task: Task) -> tuple[Task, SealedSplit | None]:
    """`task` with its test split sealed, and the seal (None when the task has no test split)."""
    if task.test is None:
        return task, None
    seal = SealedSplit(task.test)
    return dataclasses.replace(task, test=seal), seal


__all__ = ["SealedSplit", "SplitSealed", "seal_test"]
