"""Tasks: what a target is, how a model for it is built, its supervised loss, what a teacher
hands a student, its metrics and the primary metric every table, selection and verdict uses.

Every module in this package that defines a task registers it on import (`kdray.tasks.base`),
so adding a task is adding one file (and its test).
"""

from kdray.tasks import multi_label, single_label
from kdray.tasks.base import TASKS, UNLABELLED, Task, get_task

DEFAULT_TASK = single_label.SingleLabel.name

__all__ = ["DEFAULT_TASK", "TASKS", "UNLABELLED", "Task", "get_task", "multi_label", "single_label"]
