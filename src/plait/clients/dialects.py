"""Structured output in each server's dialect: how it is asked for, and how a refusal looks.

Servers that speak chat completions agree on the wire format except here.
Three dialects cover the servers plait is used against:

* ``json_schema``: OpenAI's ``response_format: {"type": "json_schema",
  "json_schema": {"name", "schema", "strict"}}``. vLLM (its older
  ``guided_json`` extra was removed in 0.12), Ollama's ``/v1`` endpoint
  (since 0.5) and llama.cpp's own ``llama-server`` accept it too.
* ``json_object``: ``response_format: {"type": "json_object", "schema": ...}``,
  llama-cpp-python's server, which only admits the types ``text`` and
  ``json_object`` and turns the schema into a sampling grammar.
* ``prompt``: no ``response_format`` at all. The schema is written into the
  system message and the first JSON object of the reply is taken, for a
  server without constrained decoding.

The dialect changes what the server is asked, never what counts as an
answer: every reply is validated against the pydantic model
(:func:`plait.clients.structured.validate_reply`).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from plait.clients.base import ChatRequest
from plait.clients.structured import cached_response_format_payload

__all__ = ["apply_structured_output", "rejects_structured_output", "schema_instruction"]

# A refusal of the form names the field it refused. llama-cpp-python reports
# its request validation failure as a 500 (its error handler wraps every
# exception that way), so a 500 that names the field counts too; an overloaded
# server's 500 or 503 does not name it and stays a transient error.
_REFUSING_STATUSES = frozenset({400, 422, 500, 501})
_FORMAT_FIELD = re.compile(r"response_format|json_schema", re.IGNORECASE)


def apply_structured_output(
    body: dict[str, Any], request: ChatRequest, model: type[BaseModel]
) -> None:
    """Ask for ``model`` (the request's ``response_format``) in ``body``, in its dialect.

    ``body["messages"]`` is replaced, never edited, in the ``prompt`` dialect:
    it is the caller's list, which the cache key and a retry still need as it was.
    """
    dialect = request.structured_output
    if dialect == "json_schema":
        body["response_format"] = cached_response_format_payload(model)
    elif dialect == "json_object":
        body["response_format"] = _json_object_payload(model)
    else:
        body["messages"] = _with_instruction(request.messages, schema_instruction(model))


def rejects_structured_output(status: int, message: str) -> bool:
    """Whether an error reply refuses the structured-output form rather than the request."""
    return status in _REFUSING_STATUSES and _FORMAT_FIELD.search(message) is not None


@lru_cache(maxsize=256)
def schema_instruction(model: type[BaseModel]) -> str:
    """The system instruction that carries ``model``'s schema in the ``prompt`` dialect."""
    schema = json.dumps(_schema(model), ensure_ascii=False)
    return (
        "Answer with a single JSON object that conforms to this JSON schema, and with "
        f"nothing else (no explanation, no Markdown):\n{schema}"
    )


@lru_cache(maxsize=256)
def _json_object_payload(model: type[BaseModel]) -> dict[str, Any]:
    # Shared between requests like the json_schema payload; read-only.
    return {"type": "json_object", "schema": _schema(model)}


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    # The same tightened schema the json_schema dialect sends, so the three
    # dialects ask for exactly the same object.
    schema: dict[str, Any] = cached_response_format_payload(model)["json_schema"]["schema"]
    return schema


def _with_instruction(messages: list[dict[str, Any]], instruction: str) -> list[dict[str, Any]]:
    """``messages`` with ``instruction`` joined to the system message, or one put first.

    Joined rather than added, because many chat templates accept a single
    system message and only in the first place.
    """
    first = messages[0] if messages else None
    if (
        first is not None
        and first.get("role") == "system"
        and isinstance(first.get("content"), str)
    ):
        joined = {**first, "content": f"{first['content']}\n\n{instruction}"}
        return [joined, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]
