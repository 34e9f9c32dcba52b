"""Validated configuration: device profiles and search spaces."""

from search.config.loader import load_model, read_yaml_mapping
from search.config.profile import Budgets, DeviceProfile, Measure, Runtime, load_profile
from search.config.space import SearchSpace, TrainBudget, load_space

__all__ = [
    "Budgets",
    "DeviceProfile",
    "Measure",
    "Runtime",
    "SearchSpace",
    "TrainBudget",
    "load_model",
    "load_profile",
    "load_space",
    "read_yaml_mapping",
]
