"""The chat model that backward passes and optimizers think with.

Their LLM calls are ordinary runs of a one-call pipeline, so they go through
the same scheduler, resource manager, retries and endpoint limits as forward
calls. Questions asked in the same event-loop turn (every node at one depth
of a backward pass, every parameter at one stage of an optimizer step) are
gathered into one batch run, so they run concurrently and a ``max_concurrent``
setting applies to them together.

The one-call pipeline is defined here rather than borrowed from
``LLMInference`` so that the feedback and optimization code can ask questions
without the execution layer reaching up into the user layer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from plait.clients.base import ChatRequest, ChatResponse
from plait.errors import ResourcesNotBoundError
from plait.execution.call import run
from plait.execution.results import BatchResult
from plait.execution.settings import ResolvedSettings, resolve_settings
from plait.graph import InferenceGraph, NodeKind
from plait.resources.protocol import as_resource_manager
from plait.tracing.tracer import Tracer

Messages = list[dict[str, Any]]


class _Question:
    """A leaf pipeline of one chat call: messages in, reply text out."""

    _plait_node_kind = NodeKind.LLM
    training = False

    def __init__(self, alias: str, temperature: float | None) -> None:
        self.alias = alias
        self.temperature = temperature
        self._graph: InferenceGraph | None = None

    def forward(self, messages: Messages) -> ChatRequest:
        return ChatRequest(messages=messages, temperature=self.temperature)

    def parse_response(self, response: ChatResponse) -> str:
        return response.content

    def resolved_settings(self, **overrides: Any) -> ResolvedSettings:
        return resolve_settings(overrides)

    def _plait_is_leaf(self) -> bool:
        return True

    def named_modules(self) -> Iterator[tuple[str, _Question]]:
        yield "", self

    def named_parameters(self) -> Iterator[tuple[str, Any]]:
        return iter(())

    def parameters(self) -> Iterator[Any]:
        return iter(())

    def _plait_graph(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> InferenceGraph:
        if self._graph is None:
            self._graph = Tracer().trace(self, *args, **kwargs)
        return self._graph


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
        self._question = _Question(alias, temperature)
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
                self._question,
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
