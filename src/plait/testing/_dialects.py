"""The simulator's structured-output dialects: which ``response_format`` forms it admits.

Real servers disagree on how structured output is asked for (see
``plait.clients.dialects``), and a client has to cope with each one's refusal.
The simulator plays one of them:

* ``any`` (the default) admits every form: ``json_schema`` and ``json_object``
  (with or without a ``schema``);
* ``llama_cpp`` is llama-cpp-python's server (0.3.x): only the types ``text``
  and ``json_object``; any other is refused the way that server refuses it,
  with its request-validation message in a 500 body;
* ``text_only`` is a server without constrained decoding: any
  ``response_format`` but ``text`` gets a 400 naming the field.

Whatever the dialect, a request that carries its JSON schema in a system
message (the ``prompt`` dialect) is answered like a chat model would: a
sentence, then the object in a fenced block.
"""

from __future__ import annotations

import json
from typing import Any, Literal

StructuredDialectName = Literal["any", "llama_cpp", "text_only"]
STRUCTURED_DIALECTS: tuple[str, ...] = ("any", "llama_cpp", "text_only")

_LLAMA_CPP_TYPES = ("text", "json_object")
_SCHEMA_KEYS = ("properties", "type", "$defs", "anyOf")


def refusal(dialect: str, body: dict[str, Any]) -> tuple[int, str] | None:
    """The status and message refusing ``body``'s ``response_format``, or None to admit it."""
    response_format = body.get("response_format")
    if dialect == "any" or not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if dialect == "llama_cpp" and kind not in _LLAMA_CPP_TYPES:
        # What pydantic inside that server reports, wrapped in its 500.
        expected = "'text' or 'json_object'"
        return 500, (
            "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', "
            f"'response_format', 'type'), 'msg': \"Input should be {expected}\", "
            f"'input': {kind!r}, 'ctx': {{'expected': \"{expected}\"}}}}\n\n"
            "    POST /v1/chat/completions"
        )
    if dialect == "text_only" and kind != "text":
        return 400, (
            f"response_format of type {kind!r} is not supported: this server has no "
            "constrained decoding"
        )
    return None


def requested_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema ``body`` asks the reply to follow, in whichever form it is sent."""
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            return schema if isinstance(schema, dict) else {}
        if kind == "json_object":
            schema = response_format.get("schema")
            return schema if isinstance(schema, dict) else None
    return None


def schema_in_prompt(system_texts: list[str]) -> dict[str, Any] | None:
    """A JSON schema written into a system message, as a model reading it would find it."""
    decoder = json.JSONDecoder()
    for text in system_texts:
        if "json schema" not in text.lower():
            continue
        start = text.find("{")
        while start >= 0:
            try:
                found, end = decoder.raw_decode(text, start)
            except ValueError:
                start = text.find("{", start + 1)
                continue
            if isinstance(found, dict) and any(key in found for key in _SCHEMA_KEYS):
                return found
            start = text.find("{", end)
    return None
