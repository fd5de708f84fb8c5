"""Which chat-completions request options a call may set, checked before anything is sent.

A misspelt option (``temprature=0``) would otherwise reach the server, which
either ignores it, so the call silently runs with the default, or refuses it
once per request of a whole batch. Checking names and values where the call
is written, with the module named, turns both into one clear error.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from typing import Any

from plait.errors import ConfigError, UnknownOptionError

__all__ = ["KNOWN_OPTIONS", "check_option", "check_options"]

KNOWN_OPTIONS = frozenset(
    {
        "temperature",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "top_p",
        "n",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning_effort",
        "service_tier",
        "metadata",
        "top_k",
        "min_p",
        "repetition_penalty",
    }
)
"""OpenAI's sampling options and the ones common OpenAI-compatible servers add."""

_NUMBERS = frozenset(
    {
        "temperature",
        "seed",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "top_logprobs",
        "top_k",
        "min_p",
        "repetition_penalty",
    }
)

_FIXED = {
    "model": "the model comes from the endpoint that the alias names",
    "messages": "the messages are the prompt",
    "tools": "set tools=[...] on the LLMInference",
    "response_format": "set response_format= on the LLMInference",
    "stream": "to stream the reply, iterate it: async for delta in module.stream(prompt)",
    "stream_options": "module.stream(prompt) asks for usage in the last chunk itself",
}


def check_options(
    options: Mapping[str, Any], where: str, *, also_known: frozenset[str] = frozenset()
) -> None:
    """Refuse an option that is unknown, fixed by plait, or has a bad value.

    ``also_known`` are further names to accept: the extra options a module
    was built with, so a server-specific option set there can be changed per call.
    """
    for name, value in options.items():
        if name not in KNOWN_OPTIONS and name not in also_known and name not in _FIXED:
            close = difflib.get_close_matches(name, sorted(KNOWN_OPTIONS | also_known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownOptionError(
                f"unexpected keyword argument {name!r} for {where}: it is not a request "
                f"option{hint}; known options: {', '.join(sorted(KNOWN_OPTIONS))}. A "
                "server-specific option can be set on the LLMInference itself"
            )
        check_option(name, value, where)


def check_option(name: str, value: Any, where: str) -> None:
    """Refuse a bad value for one option (any name: the server decides what it means)."""
    fixed = _FIXED.get(name)
    if fixed is not None:
        raise ConfigError(f"{where}: the request option {name!r} cannot be set here: {fixed}")
    if name == "n" and value not in (None, 1):
        raise ConfigError(
            f"{where}: request option 'n'={value!r} is not supported: plait returns one reply "
            "per call; to get several replies, make several calls (a batch of the same input)"
        )
    if name == "temperature" and value is not None and not (_is_number(value) and value >= 0):
        raise ConfigError(f"{where}: 'temperature' must be a number >= 0 or None, got {value!r}")
    if name in _NUMBERS and isinstance(value, bool):
        # json.dumps sends True as true, which a server refuses (or reads as 1).
        raise ConfigError(f"{where}: {name!r} must be a number, not the bool {value}")
    if name in ("max_tokens", "max_completion_tokens") and not _is_count_or_none(value):
        raise ConfigError(f"{where}: {name!r} must be a positive int or None, got {value!r}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{where}: request option {name!r} must be JSON data (str, number, bool, None, "
            f"lists and dicts of those), got {type(value).__name__}: {value!r}"
        ) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_count_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
