"""The backend registry: suite ``backends.NAME.type`` -> backend class, filled by ``@register_backend``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.core.registry import Registry

if TYPE_CHECKING:
    from harness.backends.base import Backend

BACKENDS: Registry[type[Backend]] = Registry("backend")
register_backend = BACKENDS.register
