"""What the simulator says back: scripted replies, tool calls, schema-shaped JSON, echoes.

Tests need replies they can predict from the prompt alone, and structured
output calls need replies that parse, so the order is: the ``reply``
callable, then the first matching rule, then (for a request that carries a
schema, as ``response_format`` or in its system message) a minimal object
that satisfies the schema, then an echo of the last user message. A reply
may be a :class:`ToolCallReply`, sent as tool calls; a rule with one is
passed over once the conversation holds a tool's answer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from plait.testing._config import ReplyFn, RuleReply
from plait.testing._dialects import requested_schema, schema_in_prompt
from plait.testing._tool_calls import ToolCallReply, has_tool_results

_STRING_FORMATS = {
    "date-time": "1970-01-01T00:00:00Z",
    "date": "1970-01-01",
    "time": "00:00:00",
    "email": "x@example.com",
    "uri": "http://x.example",
    "uuid": "00000000-0000-0000-0000-000000000000",
}
_MAX_SCHEMA_DEPTH = 32


class Replier:
    """Chooses the assistant message for one parsed request body."""

    __slots__ = ("_calls", "_reply", "_rules")

    def __init__(self, reply: ReplyFn | None, rules: Sequence[tuple[str, RuleReply]]) -> None:
        self._reply = reply
        self._rules = [(re.compile(pattern), answer) for pattern, answer in rules]
        self._calls = 0

    def message(self, body: dict[str, Any], messages: list[Any]) -> tuple[dict[str, Any], str]:
        """The assistant message and its finish reason; the ``reply`` callable's
        exceptions propagate."""
        answer = self._choose(body, messages)
        if isinstance(answer, ToolCallReply):
            message = answer.message(self._calls)
            self._calls += len(answer.calls)
            return message, "tool_calls"
        return {"role": "assistant", "content": answer}, "stop"

    def _choose(self, body: dict[str, Any], messages: list[Any]) -> str | ToolCallReply:
        if self._reply is not None:
            return _as_reply(self._reply(body))
        if self._rules:
            prompt = "\n".join(message_text(m) for m in messages)
            answered = has_tool_results(messages)
            for pattern, answer in self._rules:
                if answered and isinstance(answer, ToolCallReply):
                    continue
                if pattern.search(prompt):
                    return answer
        schema = requested_schema(body)
        if schema is not None:
            return json.dumps(synthesize(schema))
        response_format = body.get("response_format")
        if isinstance(response_format, dict) and response_format.get("type") == "json_object":
            return "{}"
        system = [
            message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "system"
        ]
        prompted = schema_in_prompt(system)
        if prompted is not None:
            # As a chat model asked in words answers: a sentence, then a fence.
            return f"Here is the JSON:\n```json\n{json.dumps(synthesize(prompted))}\n```"
        return "ECHO: " + last_user_text(messages)


def reply_text(message: dict[str, Any]) -> str:
    """What a reply's token count is taken from: its text and its calls' arguments."""
    parts = [message.get("content") or ""]
    for call in message.get("tool_calls") or ():
        parts.append(call["function"]["arguments"])
    return "".join(parts)


def message_text(message: Any) -> str:
    """The text of one chat message, joining the text parts of multi-part content."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def synthesize(schema: Any) -> Any:
    """Return the smallest plain value that a JSON schema accepts.

    Handles what pydantic and hand-written schemas use in practice: local
    ``$ref``/``$defs``, ``anyOf``/``oneOf``/``allOf``, ``const``, ``enum``,
    typed scalars with simple bounds, arrays with ``minItems`` and nested
    objects (every listed property is filled in, so parsers see all fields).
    """
    root = schema if isinstance(schema, dict) else {}
    return _synth(root, root, 0)


def _synth(schema: Any, root: dict[str, Any], depth: int) -> Any:
    if not isinstance(schema, dict) or depth > _MAX_SCHEMA_DEPTH:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _synth(_resolve(ref, root), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return _synth(_first_non_null(options), root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else None
    return _synth_typed(kind, schema, root, depth)


def _synth_typed(kind: Any, schema: dict[str, Any], root: dict[str, Any], depth: int) -> Any:
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {name: _synth(sub, root, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        count = schema.get("minItems", 0)
        item = _synth(schema.get("items", {}), root, depth + 1)
        return [item] * count if isinstance(count, int) and count > 0 else []
    if kind == "string":
        fmt = _STRING_FORMATS.get(schema.get("format", ""))
        if fmt is not None:
            return fmt
        length = schema.get("minLength", 1)
        return "x" * max(1, length if isinstance(length, int) else 1)
    if kind in ("number", "integer"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return False
    return None


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    low = schema.get("minimum")
    exclusive = schema.get("exclusiveMinimum")
    value: float = 0
    if isinstance(low, int | float) and low > value:
        value = low
    if isinstance(exclusive, int | float) and exclusive >= value:
        value = math.floor(exclusive) + 1 if integer else exclusive + 1
    high = schema.get("maximum")
    if isinstance(high, int | float) and high < value:
        value = high
    return math.ceil(value) if integer else value


def _resolve(ref: str, root: dict[str, Any]) -> Any:
    if not ref.startswith("#"):
        return {}
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        if not isinstance(node, dict):
            return {}
        node = node.get(part.replace("~1", "/").replace("~0", "~"), {})
    return node


def _first_non_null(options: list[Any]) -> Any:
    for option in options:
        if not (isinstance(option, dict) and option.get("type") == "null"):
            return option
    return options[0]


def last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


def _as_reply(value: str | dict[str, Any] | BaseModel | ToolCallReply) -> str | ToolCallReply:
    if isinstance(value, str | ToolCallReply):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, dict):
        return json.dumps(value)
    raise TypeError(
        f"reply callable returned {type(value).__name__}; expected str, dict, model or "
        "ToolCallReply"
    )
