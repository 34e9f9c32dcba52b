"""Tasks: what to compress (teacher + data). Built-ins are `digits` and `fashion-mnist`."""

from search.tasks.base import InputSpec, Task
from search.tasks.builtin import BUILTIN_TASKS
from search.tasks.inputs import InputsDataset
from search.tasks.loader import load_task

__all__ = ["BUILTIN_TASKS", "InputSpec", "InputsDataset", "Task", "load_task"]
