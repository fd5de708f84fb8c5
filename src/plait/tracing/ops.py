"""Stateless operations that can stand as graph nodes.

They are plain objects, not Modules: they have no parameters or children and
exist so that selection, joining and formatting of traced values become nodes
whose ``forward`` runs on real payloads at execution time.
``plait.functional`` is the public face of these.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from plait.errors import ExecutionError
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
    """``template.format(*args, **kwargs)`` on real values.

    The template is ``forward``'s first argument rather than a field of the op,
    so a Parameter or a composed string used as the template is resolved at run
    time like any other argument (its current value, never a trace token).
    """

    def forward(self, template: Any, /, *args: Any, **kwargs: Any) -> str:
        text = to_text(payload_of(template))
        texts = [to_text(payload_of(arg)) for arg in args]
        named = {key: to_text(payload_of(arg)) for key, arg in kwargs.items()}
        try:
            return text.format(*texts, **named)
        except (KeyError, IndexError) as error:
            raise ExecutionError(f"template {text!r} needs {error}, which was not given") from error


_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Render(Op):
    """Fill ``{name}`` fields of a template and leave every other brace alone.

    Unlike ``str.format`` this is safe for templates that contain JSON examples,
    which prompts often do. As with :class:`Format`, the template is an argument.
    """

    def forward(self, template: Any, /, **values: Any) -> str:
        text = to_text(payload_of(template))
        fields = dict.fromkeys(_FIELD.findall(text))
        missing = [name for name in fields if name not in values]
        if missing:
            raise ExecutionError(f"template {text!r} needs values for {missing}")
        return _FIELD.sub(lambda match: to_text(payload_of(values[match.group(1)])), text)


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
