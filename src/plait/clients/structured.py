"""Structured outputs: turning a pydantic model into a ``response_format`` and back.

Schema policy (what "strict" means here). OpenAI's strict mode only accepts
schemas in which every object forbids extra keys and lists every property as
required. Rewriting a schema into that shape is lossless in two cases only, so
those are the only rewrites made:

* every object that declares ``properties`` and says nothing about extra keys
  gets ``additionalProperties: false`` (pydantic ignores extra keys by default,
  so forbidding them at generation time changes nothing the caller sees);
* a field whose default is ``None`` and whose schema already admits ``null`` is
  made required and loses its ``default`` keyword (the server then sends
  ``null`` where it would have left the field out, which validates to the
  same ``None``).

Any other optional field (one with a non-``None`` default) stays optional,
because making it required would make the server invent a value where the
model's default should have applied. Such a schema, or one with free-form
mappings (``additionalProperties`` that is not ``false``) or a ``$ref`` with
sibling keywords, is sent with
``strict: false``: the server then treats the schema as guidance and
:func:`validate_reply` remains the real check.
"""

from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ValidationError

from plait.errors import ResponseValidationError

__all__ = ["cached_response_format_payload", "response_format_payload", "validate_reply"]

# Keywords whose value is a single sub-schema, a list of them, or a name -> schema map.
_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "contains")
_SUBSCHEMA_LIST_KEYS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAP_KEYS = ("properties", "$defs", "definitions")

_FENCED_BLOCK = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\r?\n(.*?)```", re.DOTALL)
_SNIPPET_CHARS = 80
_MAX_OBJECT_STARTS = 32


def response_format_payload(model: type[BaseModel]) -> dict[str, Any]:
    """Build the chat-completions ``response_format`` for ``model``.

    Returns a fresh dict the caller may modify; see the module docstring for
    when ``strict`` is true.
    """
    return copy.deepcopy(cached_response_format_payload(model))


@lru_cache(maxsize=256)
def cached_response_format_payload(model: type[BaseModel]) -> dict[str, Any]:
    """The same payload, built once per model class and shared.

    The request hot path calls this for every structured request, and schema
    generation costs far more than the request itself. The returned dict is
    shared between callers and must be treated as read-only.
    """
    schema = copy.deepcopy(model.model_json_schema())
    strict = _tighten(schema)
    return {
        "type": "json_schema",
        "json_schema": {"name": _schema_name(model), "schema": schema, "strict": strict},
    }


def validate_reply(content: str, model: type[BaseModel]) -> BaseModel:
    """Validate a reply against ``model``.

    Models often wrap JSON in a Markdown fence (sometimes after a sentence of
    preamble) even when asked not to, so a fenced block is unwrapped first.
    A reply that is still not JSON, typically one asked for in the prompt
    rather than by a ``response_format`` the server enforces, is read as its
    first JSON object, which must then validate in full.

    Raises:
        ResponseValidationError: the reply is not JSON or does not validate;
            the message names the model and the first problem.
    """
    text = _unfence(content)
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        problems = exc.errors(include_url=False)
        embedded = (
            _first_object(text) if problems and problems[0]["type"] == "json_invalid" else None
        )
        if embedded is None:
            raise ResponseValidationError(_describe(exc, model, text)) from exc
    try:
        return model.model_validate_json(embedded)
    except ValidationError as exc:
        raise ResponseValidationError(_describe(exc, model, embedded)) from exc


def _schema_name(model: type[BaseModel]) -> str:
    # The API accepts only [A-Za-z0-9_-]{1,64}; generic models have names like "Box[int]".
    return re.sub(r"[^A-Za-z0-9_-]", "_", model.__name__)[:64] or "response"


def _tighten(schema: dict[str, Any]) -> bool:
    """Apply the lossless strict-mode rewrites in place; say whether strict mode fits."""
    strict = True
    if schema.get("type") == "object" and "properties" in schema:
        schema.setdefault("additionalProperties", False)
        properties: dict[str, Any] = schema["properties"]
        required: list[str] = list(schema.get("required", []))
        for name, prop in properties.items():
            if name in required:
                continue
            if _defaults_to_null(prop):
                del prop["default"]
                required.append(name)
            else:
                strict = False
        schema["required"] = required
    if "additionalProperties" in schema and schema["additionalProperties"] is not False:
        strict = False
    if "$ref" in schema and len(schema) > 1:
        # Strict mode may refuse a reference with sibling keywords; a refused
        # request would fail permanently, a non-strict one only loses a guarantee.
        strict = False
    for key in _SUBSCHEMA_KEYS:
        sub = schema.get(key)
        if isinstance(sub, dict):
            strict = _tighten(sub) and strict
    for key in _SUBSCHEMA_LIST_KEYS:
        for sub in schema.get(key, ()):
            if isinstance(sub, dict):
                strict = _tighten(sub) and strict
    for key in _SUBSCHEMA_MAP_KEYS:
        subs = schema.get(key)
        if isinstance(subs, dict):
            for sub in subs.values():
                if isinstance(sub, dict):
                    strict = _tighten(sub) and strict
    return strict


def _defaults_to_null(prop: dict[str, Any]) -> bool:
    if "default" not in prop or prop["default"] is not None:
        return False
    if prop.get("type") == "null" or (
        isinstance(prop.get("type"), list) and "null" in prop["type"]
    ):
        return True
    return any(
        isinstance(option, dict) and option.get("type") == "null"
        for option in prop.get("anyOf", ())
    )


def _unfence(content: str) -> str:
    stripped = content.strip()
    if stripped.startswith(("{", "[")) or "```" not in stripped:
        return stripped
    match = _FENCED_BLOCK.search(stripped)
    return match.group(1).strip() if match else stripped


def _first_object(text: str) -> str | None:
    """The first JSON object inside ``text``, as text, or None.

    Only the first few opening braces are tried, so a long reply full of
    braces that are not JSON costs a bounded amount of parsing.
    """
    decoder = json.JSONDecoder()
    start = text.find("{")
    for _ in range(_MAX_OBJECT_STARTS):
        if start < 0:
            return None
        try:
            # Text that parses from a "{" is an object, and ends where it ends.
            _, end = decoder.raw_decode(text, start)
        except ValueError:
            start = text.find("{", start + 1)
            continue
        return text[start:end]
    return None


def _describe(exc: ValidationError, model: type[BaseModel], text: str) -> str:
    problems = exc.errors(include_url=False)
    name = model.__name__
    first = problems[0] if problems else None
    if first is None:
        return f"reply does not validate against {name}"
    if first["type"] == "json_invalid":
        snippet = text[:_SNIPPET_CHARS] + ("..." if len(text) > _SNIPPET_CHARS else "")
        return f"reply is not valid JSON for {name} ({first['msg']}); reply began {snippet!r}"
    location = ".".join(str(part) for part in first["loc"]) or "<root>"
    more = len(problems) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"reply does not validate against {name}: {location}: {first['msg']}{suffix}"
