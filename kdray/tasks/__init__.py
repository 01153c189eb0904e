"""Tasks: what a target is, how a model for it is built, its supervised loss, what a teacher
hands a student, its metrics and the primary metric every table, selection and verdict uses.

Every module in this package that defines a task registers it when it is imported; `get_task`
imports them all on first use, so adding a task is adding one file (and its test).
"""

from kdray.tasks.base import UNLABELLED, Task, get_task, task_names

DEFAULT_TASK = "single_label"

__all__ = ["DEFAULT_TASK", "UNLABELLED", "Task", "get_task", "task_names"]
