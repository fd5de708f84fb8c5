"""The model/tool loop: what ``LLMInference(tools=[...], run_tools=True)`` runs.

The loop is a dynamic forward (DESIGN 10), so it inherits everything the
engine gives a dynamic module instead of re-implementing it. Each model turn
is a call of the loop's ``turn`` child, an ordinary ``LLMInference`` with
the same settings: it takes an endpoint slot, is rate limited, retried,
cached and checkpointed like any call. Each tool run is a call of a
:class:`ToolRun` child, a dynamic node of its own: it gets a span and a
profile slice, holds no endpoint slot, and its answer is stored as one of
the forward's calls, so a rerun after a crash replays it instead of running
the tool again (DESIGN 10, durable replay).

Replay matches calls by their position in the forward and a fingerprint of
their arguments, which is why the calls of one turn are started in the
order the model made them, before any is awaited: the positions are the
same in every run that sees the same turn.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pydantic_core
from pydantic import BaseModel

from plait.clients.structured import validate_reply
from plait.errors import TaskTimeoutError, ToolRoundsError
from plait.module import Module
from plait.tools import AssistantMessage, Tool, ToolCall, tool_answer
from plait.values import to_text

TOOL_THREADS = 16
"""Threads shared by every sync tool in the process.

A pool of plait's own rather than the event loop's default one, which also
resolves host names for HTTP: slow tools must not hold up connecting.
"""

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def tool_threads() -> ThreadPoolExecutor:
    """The bounded pool sync tools run on, started on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(TOOL_THREADS, thread_name_prefix="plait-tool")
        return _pool


class ToolRun(Module):
    """One tool as a node of the loop: each call of it is one run of the tool.

    ``tool_name`` and ``tool_schema`` are plain attributes so that the
    fingerprint a stored run is matched by changes when the tool's
    signature does; the function itself is not part of it (its code is
    not seen, as for any module's ``forward``).
    """

    def __init__(self, tool: Tool) -> None:
        super().__init__()
        self._tool = tool
        self.tool_name = tool.name
        self.tool_schema = tool.schema()

    async def forward(self, arguments: dict[str, Any]) -> str:
        return await tool_answer(self._tool, arguments, executor=tool_threads())

    def span_description(self) -> tuple[str, dict[str, Any]]:
        """The span a run of this tool gets: GenAI's ``execute_tool``, arguments left out
        (they may hold personal data or secrets)."""
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": self.tool_name,
            "gen_ai.tool.type": "function",
        }
        return f"execute_tool {self.tool_name}", attributes

    def extra_repr(self) -> str:
        return repr(self.tool_name)


def run_name(tool: str) -> str:
    """The child name a tool's :class:`ToolRun` is registered under (shown in spans)."""
    return f"tool_{tool}"


async def run_loop(
    owner: Module,
    prompt: Any,
    overrides: Mapping[str, Any],
    *,
    max_rounds: int,
    response_format: type[BaseModel] | None,
    where: str,
) -> Any:
    """Ask, run the tools the model calls, answer it, until it replies without calls.

    ``owner`` holds the ``turn`` child and one :class:`ToolRun` per tool;
    ``overrides`` go into every turn's request.

    Raises:
        ToolRoundsError: the model still called tools after ``max_rounds`` rounds.
    """
    turn: Any = owner._modules["turn"]
    conversation: list[Any] = (
        list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": to_text(prompt)}]
    )
    rounds = 0
    while True:
        message: AssistantMessage = await turn(conversation, **overrides)
        if not message.tool_calls:
            if response_format is None:
                return message.content
            return validate_reply(message.content, response_format)
        if rounds == max_rounds:
            names = ", ".join(repr(call.name) for call in message.tool_calls)
            raise ToolRoundsError(
                f"{where}: the model still called tools ({names}) after max_tool_rounds="
                f"{max_rounds} rounds; raise max_tool_rounds, or make the prompt say when "
                "to stop calling tools"
            )
        rounds += 1
        # Started in call order, all before the first await: see the module docstring.
        pending = [_start(owner, call) for call in message.tool_calls]
        answers = await asyncio.gather(*pending)
        conversation = [
            *conversation,
            message.to_message(),
            *(
                {"role": "tool", "tool_call_id": call.id, "content": answer}
                for call, answer in zip(message.tool_calls, answers, strict=True)
            ),
        ]


def _start(owner: Module, call: ToolCall) -> Any:
    """The call's answer: a run of its tool, or at once the error that stops it running."""
    if call.error is not None:
        return _ready(f"Error: {call.error}")
    runner = owner._modules[run_name(call.name)]
    arguments = pydantic_core.to_jsonable_python(call.arguments)
    return _timed(call.name, runner(arguments))


async def _ready(text: str) -> str:
    return text


async def _timed(name: str, run: Any) -> str:
    """A run cut short by ``task_timeout`` is an answer too: the model may try otherwise."""
    try:
        answer: str = await run
    except TaskTimeoutError as exc:
        return f"Error: the tool {name!r} did not finish in time ({exc})"
    return answer
