"""Lazy re-exports for package `__init__`s: `import search` and CLI parsers stay free of torch/optuna."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

Exports = Mapping[str, tuple[str, ...]]  # module path -> the public names it defines


def exported(modules: Exports) -> list[str]:
    """The public names of `modules`, for `__all__`."""
    return sorted(name for names in modules.values() for name in names)


def lazy_getattr(package: str, modules: Exports) -> Callable[[str], Any]:
    """A module-level `__getattr__` that imports a name's module on its first use."""
    owner = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = owner.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
