"""hwsearch: hardware-aware compression search (distillation x pruning x quantization, measured).

Public names are imported lazily so `import search` (and `hwsearch --help`) does not pull in torch.
"""

from __future__ import annotations

from search.utils.lazy import lazy_getattr

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
    "run": "search.pipeline",
    "load_study": "search.inspect",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__ = lazy_getattr(__name__, _EXPORTS)
