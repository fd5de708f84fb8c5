"""Scripted tool calls: a simulator reply that asks for tools instead of answering.

A tool-using pipeline is tested by scripting the model's half of the
conversation: which tools it calls, with which arguments (or with broken
arguments, to test the error path), and what it says once the results are in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True, init=False)
class ToolCallReply:
    """An assistant turn that calls tools: ``ToolCallReply([("get_weather", {"city": "Paris"})])``.

    Each call is a tool name and its arguments: a dict (sent as its JSON) or
    a string sent exactly as given, so a test can script invalid JSON.
    ``content`` is the text sent alongside the calls (``null`` when None).

    As a rule's reply, it only answers a conversation that holds no tool
    message yet; once the tools have answered, the next matching rule (or the
    echo) gives the plain answer, so one rule scripts a whole round trip.
    """

    calls: tuple[tuple[str, str], ...]
    content: str | None

    def __init__(
        self, calls: Sequence[tuple[str, Mapping[str, Any] | str]], content: str | None = None
    ) -> None:
        if isinstance(calls, str) or not calls:
            raise ValueError("ToolCallReply needs a list of (tool name, arguments) pairs")
        encoded = []
        for name, arguments in calls:
            text = arguments if isinstance(arguments, str) else json.dumps(dict(arguments))
            encoded.append((str(name), text))
        object.__setattr__(self, "calls", tuple(encoded))
        object.__setattr__(self, "content", content)

    def to_json(self) -> dict[str, Any]:
        """This reply as JSON data, the form a spawned simulator's rules travel in."""
        return {"tool_calls": [list(call) for call in self.calls], "content": self.content}

    @classmethod
    def from_json(cls, data: Any) -> ToolCallReply:
        """The reply :meth:`to_json` wrote.

        Raises:
            ValueError: ``data`` is not ``{"tool_calls": [[name, arguments], ...],
                "content": text or null}``.
        """
        calls = data.get("tool_calls") if isinstance(data, dict) else None
        content = data.get("content") if isinstance(data, dict) else None
        if (
            not isinstance(calls, list)
            or not all(
                isinstance(call, list)
                and len(call) == 2
                and isinstance(call[0], str)
                and isinstance(call[1], str | dict)
                for call in calls
            )
            or not (content is None or isinstance(content, str))
        ):
            raise ValueError(
                'a tool-call reply must be {"tool_calls": [[name, arguments], ...], '
                f'"content": text or null}}, got {data!r}'
            )
        return cls([(name, arguments) for name, arguments in calls], content)

    def message(self, first_id: int) -> dict[str, Any]:
        """The assistant message, its calls numbered from ``first_id``."""
        return {
            "role": "assistant",
            "content": self.content,
            "tool_calls": [
                {
                    "id": f"call_sim_{first_id + offset}",
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
                for offset, (name, arguments) in enumerate(self.calls)
            ],
        }


def has_tool_results(messages: Sequence[Any]) -> bool:
    """Whether the conversation already holds a tool's answer."""
    return any(isinstance(m, dict) and m.get("role") == "tool" for m in messages)
