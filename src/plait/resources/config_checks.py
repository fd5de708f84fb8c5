"""Checks on the text fields of an endpoint config: env references, URLs, headers, keys.

Each check raises ``ValueError`` from inside a pydantic validator, which
:mod:`plait.resources.config` turns into a :class:`~plait.errors.ConfigError`
line naming the alias and field. They run at construction, so a URL the HTTP
stack cannot use, or a header value that would split into two headers on the
wire, is refused before any request instead of failing (or, worse, being
sent) once per call of a batch. Messages describe what is wrong and where in
the text; they never quote a key or a header value, which may be secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "check_api_key",
    "check_base_url",
    "check_headers",
    "expand_env",
    "expand_header_values",
    "refuse_bool",
]

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

# RFC 9110 token characters: what a header name may hold.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def expand_env(text: str) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` with values from the environment.

    Follows the shell: the default applies when the variable is unset or empty.
    A reference with no default to an unset variable is an error, because
    silently sending an empty key or URL fails much later and less clearly. So
    is a ``${`` that does not start a well-formed reference (``${HOST`` with
    its brace missing): sent as it is, it would be a URL or key nobody meant.
    """
    if "${" not in text:
        return text
    parts: list[str] = []
    position = 0
    while (start := text.find("${", position)) >= 0:
        match = _ENV_REFERENCE.match(text, start)
        if match is None:
            raise ValueError(
                f"the environment reference starting at character {start + 1} is not closed "
                "or not a valid name; write ${NAME} or ${NAME:-default}"
            )
        parts.append(text[position:start])
        parts.append(_lookup(match.group(1), match.group(2)))
        position = match.end()
    parts.append(text[position:])
    return "".join(parts)


def _lookup(name: str, default: str | None) -> str:
    value = os.environ.get(name)
    if value:
        return value
    if default is not None:
        return default
    if value is None:
        raise ValueError(f"environment variable {name} is not set (referenced as ${{{name}}})")
    return value


def expand_header_values(headers: Mapping[Any, Any]) -> dict[Any, Any]:
    """``expand_env`` on each text value, with a failure naming its header."""
    expanded = {}
    for number, (name, value) in enumerate(headers.items(), start=1):
        try:
            expanded[name] = expand_env(value) if isinstance(value, str) else value
        except ValueError as exc:
            shown = repr(name) if isinstance(name, str) and _TOKEN.fullmatch(name) else number
            raise ValueError(f"header {shown}: {exc}") from None
    return expanded


def check_base_url(url: str) -> str:
    """Refuse a URL without an http(s) scheme or host, with spaces, a bad port or a query."""
    if not url.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    bad = _first_control_or_space(url)
    if bad is not None:
        raise ValueError(f"contains {_describe(url[bad])} at character {bad + 1}")
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(
            "names no host; write the server's address, as in http://localhost:8000/v1"
        )
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("has a port that is not a number from 1 to 65535")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        # The client appends /chat/completions, which would land inside them.
        raise ValueError(
            "has a query (?...) or fragment (#...); the request path is appended to the "
            "base_url, so it must end at the path, as in https://host/v1"
        )
    return url


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    """Refuse header names that are not tokens and values holding control characters.

    A CR or LF in either would end the header early and start another one
    (header injection), so a value from an environment variable or a file
    could add headers, or a second request, to every call.
    """
    for number, (name, value) in enumerate(headers.items(), start=1):
        if not name:
            raise ValueError(f"header {number} has an empty name")
        if not _TOKEN.fullmatch(name):
            valid = _TOKEN.match(name)
            shown = valid.group() if valid else ""
            where = len(shown)
            raise ValueError(
                f"header {number} has an invalid name (starting {shown!r}, then "
                f"{_describe(name[where])} at character {where + 1}); names may hold "
                "only letters, digits and !#$%&'*+-.^_`|~"
            )
        for index, char in enumerate(value):
            if char != "\t" and _is_control(char):
                raise ValueError(
                    f"header {name!r}: its value holds {_describe(char)} at character "
                    f"{index + 1}; header values may not hold control characters (a CR or "
                    "LF would start another header on the wire); the value is not shown"
                )
    return headers


def check_api_key(key: str) -> None:
    """Refuse a key holding whitespace or control characters, never quoting it."""
    bad = _first_control_or_space(key)
    if bad is not None:
        hint = " (a key read from a file keeps its newline: strip it)" if key[bad] in "\r\n" else ""
        raise ValueError(
            f"holds {_describe(key[bad])} at character {bad + 1}{hint}; the key is not shown"
        )


def refuse_bool(value: object) -> object:
    """A bool where a number is meant is a mistake pydantic would quietly take as 1 or 0."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not the bool {value}")
    return value


def _is_control(char: str) -> bool:
    return ord(char) < 0x20 or ord(char) == 0x7F


def _first_control_or_space(text: str) -> int | None:
    for index, char in enumerate(text):
        if _is_control(char) or char.isspace():
            return index
    return None


def _describe(char: str) -> str:
    names = {"\r": "a carriage return (CR)", "\n": "a line feed (LF)", " ": "a space"}
    return names.get(char, f"the character U+{ord(char):04X}")
