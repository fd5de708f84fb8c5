"""The interface the engine needs from a resource manager, and coercion to it.

The engine only ever calls ``complete``, ``check_aliases`` and ``retry_limit``,
so an in-process object with those methods (a test double, a null client for
benchmarks) can stand in for the real :class:`~plait.resources.ResourceManager`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from plait.clients.base import ChatRequest, ChatResponse
from plait.errors import ConfigError
from plait.resources.config import ResourceConfig
from plait.resources.manager import ResourceManager


@runtime_checkable
class ResourceManagerLike(Protocol):
    async def complete(
        self, alias: str, request: ChatRequest, *, attempt: int = 0
    ) -> ChatResponse: ...

    def check_aliases(self, aliases: Iterable[str]) -> None: ...

    def retry_limit(self, alias: str) -> int | None: ...


def as_resource_manager(resources: Any) -> ResourceManagerLike:
    """Accept a manager, a ResourceConfig, or a plain mapping that describes one."""
    if isinstance(resources, ResourceManagerLike):
        return resources
    if isinstance(resources, ResourceConfig | Mapping):
        return ResourceManager(resources)
    raise ConfigError(
        "resources must be a ResourceConfig, a mapping of alias -> endpoint settings, or a "
        f"ResourceManager; got {type(resources).__name__}"
    )
