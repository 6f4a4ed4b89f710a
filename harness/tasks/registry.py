"""The task registry: suite ``tasks.NAME.type`` -> task class, filled by ``@register_task``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.core.registry import Registry

if TYPE_CHECKING:
    from harness.tasks.base import Task

TASKS: Registry[type[Task]] = Registry("task")
register_task = TASKS.register
