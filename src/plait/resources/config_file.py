"""Reading a resource config file (YAML, JSON or TOML) into plain data.

What the file says must be what plait uses. YAML and JSON parsers keep the
last of two equal keys without a word, so a file that sets ``model`` twice
(or defines the alias ``fast`` twice, often after a copy and paste) would
silently run with whichever came last; here that is an error naming the key
and, for YAML, both lines. Merge keys (``<<: *defaults``) are not duplicates:
overriding a merged value is what they are for. A file that is not UTF-8 is
refused with the place of the first bad byte rather than a raw
``UnicodeDecodeError``. Every error names the file.
"""

from __future__ import annotations

import functools
import json
import tomllib
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from plait.errors import ConfigError

__all__ = ["read_config_file"]

_SUFFIXES = (".yaml", ".yml", ".json", ".toml")
_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_config_file(file: Path) -> Any:
    """The data in ``file``; ConfigError naming the file (and line) for anything wrong."""
    suffix = file.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ConfigError(f"{file}: unsupported config file type; use .yaml, .yml, .json or .toml")
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc.strerror}") from None
    try:
        # utf-8-sig: a byte-order mark some editors write is not content.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{file}, line {line}: the file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
            f"offset {exc.start}); save it as UTF-8"
        ) from None
    try:
        if suffix == ".json":
            return json.loads(text, object_pairs_hook=functools.partial(_unique_keys, file))
        if suffix == ".toml":
            return tomllib.loads(text)
        # A SafeLoader subclass: only plain data is built, as with safe_load.
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{file}, line {exc.lineno}: invalid JSON: {exc.msg}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_problem(file, exc)) from None


def _yaml_problem(file: Path, exc: yaml.YAMLError) -> str:
    """PyYAML's problem with its line, and its context where it has one (a
    duplicate anchor is "found duplicate anchor 'x'; first occurrence (line 1),
    second occurrence")."""
    mark = getattr(exc, "problem_mark", None)
    where = f", line {mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or "cannot parse"
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        problem = f"{context} (line {context_mark.line + 1}), {problem}"
    return f"{file}{where}: invalid YAML: {problem}"


def _unique_keys(file: Path, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ConfigError(
                f"{file}: invalid JSON: the key {key!r} appears twice in one object; the "
                "second would silently replace the first"
            )
        result[key] = value
    return result


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, Hashable):
                continue  # the base class reports an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {key!r} appears twice (lines {seen[key]} and {line}); "
                    "the second would silently replace the first",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)
