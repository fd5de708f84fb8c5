"""The chat model that backward passes and optimizers think with.

Their LLM calls are ordinary plait runs of a one-node module, so they go
through the same scheduler, resource manager, retries and endpoint limits as
forward calls. Questions asked in the same event-loop turn (every node at one
depth of a backward pass, every parameter at one stage of an optimizer step)
are gathered into one batch run, so they run concurrently and a
``max_concurrent`` setting applies to them together.
"""

from __future__ import annotations

import asyncio
from typing import Any

from plait.errors import ResourcesNotBoundError
from plait.execution.resources import as_resource_manager
from plait.execution.results import BatchResult
from plait.execution.runner import run
from plait.execution.settings import resolve_settings
from plait.module import LLMInference

Messages = list[dict[str, Any]]


class TextLLM:
    """Prompt in, reply text out, through the endpoint pool named ``alias``.

    ``resources`` (a ResourceManager, ResourceConfig or mapping) wins over the
    enclosing ``ExecutionSettings``; with neither, a call fails at once with
    advice rather than deep inside the engine.
    """

    def __init__(
        self,
        alias: str = "optimizer",
        resources: Any = None,
        *,
        temperature: float | None = None,
        purpose: str = "this call",
        advice: str = "pass resources=... or run inside ExecutionSettings(resources=...)",
    ) -> None:
        self.alias = alias
        self.resources = None if resources is None else as_resource_manager(resources)
        self.purpose = purpose
        self.advice = advice
        self._module = LLMInference(alias, temperature=temperature)
        self._queue: list[tuple[Messages, asyncio.Future[str]]] = []
        self._flush_pending = False
        self._sending: set[asyncio.Task[None]] = set()

    async def __call__(self, prompt: str, *, system: str = "") -> str:
        if self.resources is None and resolve_settings().resources is None:
            raise ResourcesNotBoundError(
                f"{self.purpose} needs an LLM (alias {self.alias!r}) but no resources are "
                f"available: {self.advice}"
            )
        messages: Messages = [{"role": "user", "content": prompt}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._queue.append((messages, future))
        if not self._flush_pending:
            self._flush_pending = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        self._flush_pending = False
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Messages, asyncio.Future[str]]]) -> None:
        try:
            results: list[BatchResult] = await run(
                self._module,
                [messages for messages, _ in batch],
                resources=self.resources,
                streaming=True,
            )
        except BaseException as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for result, (_, future) in zip(results, batch, strict=True):
            if future.done():
                continue
            if result.error is not None:
                future.set_exception(result.error)
            else:
                future.set_result(str(result.output))
