"""hwsearch: hardware-aware compression search (distillation x pruning x quantization, measured).

Public names are imported lazily so `import search` (and `hwsearch --help`) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "Task": "search.tasks",
    "InputSpec": "search.tasks",
    "load_task": "search.tasks",
    "DeviceProfile": "search.config",
    "SearchSpace": "search.config",
    "load_profile": "search.config",
    "load_space": "search.config",
    "UserError": "search.errors",
    "TrialFailure": "search.errors",
    "Plan": "search.plan",
    "kd_loss": "search.compress",
    "measure": "search.measure",
    "run": "search.study",
    "load_study": "search.inspect",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
