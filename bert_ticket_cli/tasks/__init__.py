"""Tasks as objects: one registry of every task (GLUE, SQuAD, MLM, the generated task).

A task object owns its facts (fields, labels, splits, metrics, leaderboard names), its loading
(raw splits from files or the hub, then model-ready splits and a collator: :class:`TaskData`),
its metrics and its leaderboard files.  ``tasks/`` sits above ``data/`` (the loaders) and
``metrics/`` (the metric functions) and below the workflows; ``engine/`` evaluates through a
:class:`TaskData` without importing this package.
"""

from bert_ticket_cli.data.common import default_cache_dir
from bert_ticket_cli.tasks.base import Task, TaskData
from bert_ticket_cli.tasks.registry import MLM, SYNTHETIC, TASKS, get_task, glue_metrics, load_task_data, task_info

__all__ = [
    "MLM",
    "SYNTHETIC",
    "TASKS",
    "Task",
    "TaskData",
    "default_cache_dir",
    "get_task",
    "glue_metrics",
    "load_task_data",
    "task_info",
]
