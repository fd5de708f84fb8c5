"""Stateless operations that can stand as graph nodes.

They are plain objects, not Modules: they have no parameters or children and
exist so that selection, joining and formatting of traced values become nodes
whose ``forward`` runs on real payloads at execution time.
``plait.functional`` is the public face of these.
"""

from __future__ import annotations

import json
import re
import string
from typing import Any

from pydantic import BaseModel, ValidationError

from plait.errors import ExecutionError, TemplateError
from plait.graph import NodeKind
from plait.values import Value, ValueKind, to_text


def payload_of(obj: Any) -> Any:
    return obj.payload if isinstance(obj, Value) else obj


class Op:
    """Base of the functional operations; subclasses define ``forward``."""

    _plait_node_kind = NodeKind.OP

    def _plait_is_leaf(self) -> bool:
        return True

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Select(Op):
    """``value[key]`` or ``value.key``; dict keys and model fields both work either way."""

    def __init__(self, key: Any, *, attribute: bool = False) -> None:
        self.key = key
        self.attribute = attribute

    def forward(self, value: Any) -> Any:
        data = payload_of(value)
        key = self.key
        try:
            if isinstance(data, BaseModel) and isinstance(key, str):
                return getattr(data, key)
            if self.attribute and not isinstance(data, dict):
                return getattr(data, key)
            return data[key]
        except (KeyError, IndexError, AttributeError, TypeError) as error:
            raise ExecutionError(
                f"cannot select {key!r} from a {type(data).__name__} value: {error}"
            ) from error


class Concat(Op):
    """Join the text of several values with a separator."""

    def __init__(self, sep: str = "") -> None:
        self.sep = sep

    def forward(self, *parts: Any) -> str:
        return self.sep.join(to_text(payload_of(part)) for part in parts)


class Format(Op):
    """``template.format(*args, **kwargs)`` on real values, with plain fields only.

    The template is ``forward``'s first argument rather than a field of the op,
    so a Parameter or a composed string used as the template is resolved at run
    time like any other argument (its current value, never a trace token).
    That also makes it data: a model's reply or an optimizer's rewrite. So only
    ``{name}``, ``{0}`` and ``{}`` fields are filled; a format spec, a
    conversion or an attribute lookup would let that text drive Python's
    format language (``{0:>150000000}`` asks for a 150 MB prompt), and is
    refused. The arguments are text by then, so a spec had little use anyway.
    """

    def forward(self, template: Any, /, *args: Any, **kwargs: Any) -> str:
        text = to_text(payload_of(template))
        texts = [to_text(payload_of(arg)) for arg in args]
        named = {key: to_text(payload_of(arg)) for key, arg in kwargs.items()}
        output = _Bounded(text)
        numbering: _Numbering | None = None
        for literal, name, spec, conversion in _parse(text):
            output.add(literal)
            if name is None:
                continue
            _check_plain(name, spec, conversion)
            if name and not name.isdigit():
                if name not in named:
                    raise TemplateError(
                        f"template {_clip(text)!r} needs {name!r}, which was not given"
                    )
                output.add(named[name])
                continue
            if numbering is None:
                numbering = _Numbering(text, automatic=not name)
            index = numbering.index(name)
            if index >= len(texts):
                raise TemplateError(
                    f"template {_clip(text)!r} needs argument {index}, but {len(texts)} were given"
                )
            output.add(texts[index])
        return output.text()


MAX_TEMPLATE_OUTPUT = 8_000_000
"""The most characters :class:`Format` and :class:`Render` produce.

About two million tokens: more than any model's context window, so only a
template that repeats a large value thousands of times reaches it.
"""

_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]*")
_PLAIN_ONLY = (
    "a template is data, so only plain {name}, {0} and {} fields are filled "
    "(format the value itself before passing it)"
)
_FORMATTER = string.Formatter()
_CLIP = 80


def _parse(text: str) -> list[tuple[str, str | None, str | None, str | None]]:
    try:
        return list(_FORMATTER.parse(text))
    except ValueError as error:
        raise TemplateError(f"template {_clip(text)!r} cannot be parsed: {error}") from None


def _check_plain(name: str, spec: str | None, conversion: str | None) -> None:
    if conversion is None and not spec and _PLAIN_NAME.fullmatch(name):
        return
    field = "{" + name + (f"!{conversion}" if conversion is not None else "")
    field += (f":{spec}" if spec else "") + "}"
    if conversion is not None:
        raise TemplateError(f"template field {field!r} has a conversion; {_PLAIN_ONLY}")
    if spec:
        raise TemplateError(f"template field {field!r} has a format spec; {_PLAIN_ONLY}")
    raise TemplateError(f"template field {field!r} is not a plain name; {_PLAIN_ONLY}")


def _clip(text: str) -> str:
    return text if len(text) <= _CLIP else text[:_CLIP] + "..."


class _Numbering:
    """Positional fields are all ``{}`` or all numbered, as ``str.format`` insists."""

    __slots__ = ("_automatic", "_next", "_template")

    def __init__(self, template: str, *, automatic: bool) -> None:
        self._template = template
        self._automatic = automatic
        self._next = 0

    def index(self, name: str) -> int:
        if self._automatic != (not name):
            raise TemplateError(
                f"template {_clip(self._template)!r} mixes {{}} with numbered fields; use one kind"
            )
        if name:
            return int(name)
        self._next += 1
        return self._next - 1


class _Bounded:
    """The pieces of a filled template, refusing to grow past MAX_TEMPLATE_OUTPUT."""

    __slots__ = ("_parts", "_size", "_template")

    def __init__(self, template: str) -> None:
        self._template = template
        self._parts: list[str] = []
        self._size = 0

    def add(self, piece: str) -> None:
        self._size += len(piece)
        if self._size > MAX_TEMPLATE_OUTPUT:
            raise TemplateError(
                f"template {_clip(self._template)!r} would produce more than "
                f"{MAX_TEMPLATE_OUTPUT:,} characters"
            )
        self._parts.append(piece)

    def text(self) -> str:
        return "".join(self._parts)


_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Render(Op):
    """Fill ``{name}`` fields of a template and leave every other brace alone.

    Unlike ``str.format`` this is safe for templates that contain JSON examples,
    which prompts often do. As with :class:`Format`, the template is an argument,
    and the filled text is bounded by :data:`MAX_TEMPLATE_OUTPUT`.
    """

    def forward(self, template: Any, /, **values: Any) -> str:
        text = to_text(payload_of(template))
        fields = dict.fromkeys(_FIELD.findall(text))
        missing = [name for name in fields if name not in values]
        if missing:
            raise TemplateError(f"template {_clip(text)!r} needs values for {missing}")
        texts = {name: to_text(payload_of(values[name])) for name in fields}
        output = _Bounded(text)
        start = 0
        for match in _FIELD.finditer(text):
            output.add(text[start : match.start()])
            output.add(texts[match.group(1)])
            start = match.end()
        output.add(text[start:])
        return output.text()


class ParseStructured(Op):
    """Parse JSON text (optionally into a pydantic model) into a structured Value.

    Bad JSON or a failed validation gives an error Value rather than raising,
    so one malformed reply can be inspected or routed instead of sinking a run.
    """

    def __init__(self, model: type[BaseModel] | None = None) -> None:
        self.model = model

    def forward(self, text: Any) -> Value:
        raw = to_text(payload_of(text)).strip()
        fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", raw, re.DOTALL)
        if fenced:
            raw = fenced.group(1)
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as error:
            message = f"not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
            return Value(ValueKind.ERROR, ValueError(message), meta={"text": raw})
        if self.model is None:
            return Value(ValueKind.STRUCTURED, data)
        try:
            return Value(ValueKind.STRUCTURED, self.model.model_validate(data))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "<root>"
            message = f"does not validate as {self.model.__name__}: {where}: {first['msg']}"
            return Value(ValueKind.ERROR, ValueError(message), meta={"text": raw})
