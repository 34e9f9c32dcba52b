"""hwsearch: hardware-aware compression search (distillation x pruning x quantization, measured).

Public names are imported lazily so `import search` (and `hwsearch --help`) does not pull in torch.
"""

from __future__ import annotations

from search.utils.lazy import exported, lazy_getattr

__version__ = "0.1.0"

# module -> the public names it defines
_EXPORTS = {
    "search.tasks": ("Task", "InputSpec", "InputsDataset", "load_task"),
    "search.config": ("DeviceProfile", "SearchSpace", "load_profile", "load_space"),
    "search.errors": ("UserError", "TrialFailure"),
    "search.plan": ("Plan",),
    "search.metrics": ("Metric", "TOP1", "NEG_MAE"),
    "search.compress": ("kd_loss",),
    "search.measure": ("measure",),
    "search.pipeline": ("run",),
    "search.inspect": ("load_study",),
}

__all__ = ["__version__", *exported(_EXPORTS)]


__getattr__ = lazy_getattr(__name__, _EXPORTS)
