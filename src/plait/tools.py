"""Tools: typed Python functions a model may call, and running the calls it asks for.

A tool is described to the model by a JSON schema, and the model's arguments
come back as JSON; both ends are the function's own signature, read once by
pydantic, so the schema the model sees and the validation its arguments meet
can never disagree. Parameter descriptions come from the docstring, in the
Google style::

    def get_weather(city: str, days: int = 1) -> str:
        \"\"\"Look up the weather forecast for a city.

        Args:
            city: the city's name, e.g. "Paris".
            days: how many days ahead to forecast.
        \"\"\"

The first paragraph is the tool's description; each ``name: text`` line of
the ``Args:`` section (``name (type): text`` too, and indented continuation
lines) describes one parameter.

A model's mistakes are answers, not failures: arguments that do not parse or
do not fit, an unknown tool name, or a tool that raises all become error
text for the model to read, so a conversation can recover the way it would
with a person.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from pydantic.errors import PydanticInvalidForJsonSchema, PydanticSchemaGenerationError

from plait.clients.base import RawToolCall
from plait.errors import ConfigError, ToolArgumentsError

__all__ = ["AssistantMessage", "Tool", "ToolCall", "as_tools", "run_tool_calls", "tool_answer"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ARGS_HEADERS = frozenset({"args:", "arguments:", "parameters:", "params:"})
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SCHEMA_ERRORS = (PydanticSchemaGenerationError, PydanticInvalidForJsonSchema, TypeError)


class ToolCall(BaseModel):
    """One call the model asked for, with its arguments in the tool's own types.

    ``error`` is set when the call cannot be run as sent (its arguments are
    not JSON, do not fit the tool, or it names no known tool); ``arguments``
    then holds what could be read, and :func:`run_tool_calls` answers the
    model with the error instead of running anything.
    """

    id: str
    name: str
    arguments: dict[str, Any] = {}
    raw_arguments: str = ""
    error: str | None = None

    def to_message(self) -> dict[str, Any]:
        """This call as the ``tool_calls`` entry of an assistant chat message."""
        text = self.raw_arguments or json.dumps(pydantic_core.to_jsonable_python(self.arguments))
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": text},
        }


class AssistantMessage(BaseModel):
    """A model turn as a whole: its text and the tool calls it made, in order.

    The output of an ``LLMInference`` with tools and ``run_tools=False``.
    Append :meth:`to_message` and the tool results to the conversation to
    continue it.
    """

    content: str = ""
    tool_calls: list[ToolCall] = []

    def to_message(self) -> dict[str, Any]:
        """The chat message that records this turn in a conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.tool_calls:
            message["tool_calls"] = [call.to_message() for call in self.tool_calls]
        elif message["content"] is None:
            message["content"] = ""
        return message


class Tool:
    """A function a model may call: its name, description and parameter schema.

    ``fn`` may be sync or ``async``; every parameter needs a type annotation
    pydantic can describe, since that is what the model is shown and what its
    arguments are validated into. ``*args`` and ``**kwargs`` are refused: a
    model can only send named arguments that the schema lists.
    """

    __slots__ = ("_is_async", "_model", "_positional", "description", "fn", "name", "parameters")

    def __init__(
        self, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None
    ) -> None:
        if not callable(fn):
            raise ConfigError(f"a tool must be a callable (a function), got {fn!r}")
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", ""))
        if not _NAME.match(self.name):
            raise ConfigError(
                f"tool name {self.name!r} is not usable: a tool's name must be 1-64 letters, "
                "digits, '_' or '-' (pass name=... to Tool)"
            )
        summary, documented = _read_docstring(inspect.getdoc(fn) or "")
        self.description = summary if description is None else description
        self._model, self._positional = _arguments_model(fn, self.name, documented)
        self.parameters = _schema(self._model, self.name)
        # A callable object counts as async when its __call__ is a coroutine function.
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            type(fn).__call__
        )

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # The arguments model is made at run time and cannot be pickled by
        # reference; rebuilding from the function gives the same tool.
        return (_rebuilt, (self.fn, self.name, self.description))

    def schema(self) -> dict[str, Any]:
        """This tool's entry in the request's ``tools`` array."""
        function = {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }
        return {"type": "function", "function": function}

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """``arguments`` converted into the function's parameter types, defaults filled in.

        Raises:
            ToolArgumentsError: an argument is missing, unknown or of the wrong type.
        """
        try:
            model = self._model.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, error['loc'])) or 'arguments'}: {error['msg']}"
                for error in exc.errors()
            )
            raise ToolArgumentsError(
                f"invalid arguments for the tool {self.name!r}: {problems}"
            ) from None
        return {
            field.alias or key: getattr(model, key)
            for key, field in type(model).model_fields.items()
        }

    async def run(self, arguments: Mapping[str, Any], *, executor: Executor | None = None) -> Any:
        """Validate ``arguments`` and call the function; a sync one runs on ``executor``.

        ``executor`` defaults to the event loop's own thread pool, which is
        bounded, so a batch of slow sync tools cannot start unbounded threads.
        """
        values = self.validate(arguments)
        args = [values.pop(name) for name in self._positional if name in values]
        if self._is_async:
            return await self.fn(*args, **values)
        call = functools.partial(self.fn, *args, **values)
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(executor, context.run, call)


def _rebuilt(fn: Callable[..., Any], name: str, description: str) -> Tool:
    return Tool(fn, name=name, description=description)


ToolLike = Callable[..., Any] | Tool
"""What ``LLMInference(tools=[...])`` takes: a :class:`Tool` or a plain function."""


def as_tools(tools: Iterable[ToolLike]) -> dict[str, Tool]:
    """``tools`` as :class:`Tool` objects by name; plain functions are wrapped."""
    if isinstance(tools, str | bytes) or not isinstance(tools, Iterable):
        raise ConfigError(f"tools must be a list of functions, got {tools!r}")
    found: dict[str, Tool] = {}
    for item in tools:
        tool = item if isinstance(item, Tool) else Tool(item)
        if tool.name in found:
            raise ConfigError(
                f"two tools named {tool.name!r}; give one another name with Tool(fn, name=...)"
            )
        found[tool.name] = tool
    return found


def tool_call(raw: RawToolCall, tools: Mapping[str, Tool]) -> ToolCall:
    """A reply's tool call checked against the tools: typed arguments, or the error."""
    call = ToolCall(id=raw.id, name=raw.name, raw_arguments=raw.arguments, error=raw.error)
    if raw.parsed is None:
        return call
    call.arguments = raw.parsed
    tool = tools.get(raw.name)
    if tool is None:
        call.error = _unknown_tool(raw.name, tools)
        return call
    try:
        call.arguments = tool.validate(raw.parsed)
    except ToolArgumentsError as exc:
        call.error = str(exc)
    return call


async def run_tool_calls(
    calls: Sequence[ToolCall],
    tools: Iterable[ToolLike] | Mapping[str, Tool],
    *,
    executor: Executor | None = None,
) -> list[dict[str, str]]:
    """Run one turn's tool calls concurrently; their results are tool messages, in call order.

    Async tools run as tasks, sync ones on ``executor`` (default: the event
    loop's bounded thread pool). A call that cannot run, or whose tool
    raises, is answered with ``"Error: ..."`` so the model can correct
    itself; nothing here raises for the model's or a tool's mistake.
    """
    known = tools if isinstance(tools, Mapping) else as_tools(tools)
    contents = await asyncio.gather(*(_answer(call, known, executor) for call in calls))
    return [
        {"role": "tool", "tool_call_id": call.id, "content": content}
        for call, content in zip(calls, contents, strict=True)
    ]


async def _answer(call: ToolCall, tools: Mapping[str, Tool], executor: Executor | None) -> str:
    if call.error is not None:
        return f"Error: {call.error}"
    tool = tools.get(call.name)
    if tool is None:
        return f"Error: {_unknown_tool(call.name, tools)}"
    return await tool_answer(tool, call.arguments, executor=executor)


async def tool_answer(
    tool: Tool, arguments: Mapping[str, Any], *, executor: Executor | None = None
) -> str:
    """What the model is told for one call: the tool's result as text, or ``"Error: ..."``.

    Only a tool's ``Exception`` becomes text; cancellation and interrupts
    still stop the run.
    """
    try:
        result = await tool.run(arguments, executor=executor)
    except ToolArgumentsError as exc:
        return f"Error: {exc}"
    except Exception as exc:
        return f"Error: the tool {tool.name!r} raised {type(exc).__name__}: {exc}"
    return _as_text(result)


def _as_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    return pydantic_core.to_json(result, fallback=str).decode()


def _unknown_tool(name: str, tools: Mapping[str, Tool]) -> str:
    names = ", ".join(repr(known) for known in tools) or "none"
    return (
        f"the model called {name!r}, but there is no tool named {name!r} (the tools are: {names})"
    )


def _arguments_model(
    fn: Callable[..., Any], name: str, documented: Mapping[str, str]
) -> tuple[type[BaseModel], tuple[str, ...]]:
    """A pydantic model of ``fn``'s parameters, and the names that must go by position.

    Fields are named ``p0``, ``p1``... with the parameter names as aliases,
    so a parameter called ``schema`` or ``model_config`` cannot clash with
    pydantic's own attributes.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"tool {name!r}: cannot read the function's signature: {exc}") from None
    params = list(signature.parameters.values())
    hints = _type_hints(fn, name, params)
    fields: dict[str, Any] = {}
    for index, param in enumerate(params):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            star = "*" if param.kind is param.VAR_POSITIONAL else "**"
            raise ConfigError(
                f"tool {name!r}: parameter {star}{param.name} cannot be described to a model; "
                "list every argument as a named, typed parameter"
            )
        if param.name not in hints:
            raise ConfigError(
                f"tool {name!r}: parameter {param.name!r} has no type annotation; the model "
                "is shown each parameter's type, so annotate it (e.g. 'city: str')"
            )
        default = ... if param.default is param.empty else param.default
        description = documented.get(param.name)
        fields[f"p{index}"] = (
            hints[param.name],
            Field(default, alias=param.name, description=description),
        )
    config = ConfigDict(extra="forbid")
    try:
        model = create_model(f"{name}_arguments", __config__=config, **fields)
    except _SCHEMA_ERRORS as exc:
        raise _unsupported(name, params, hints, exc) from None
    positional = tuple(p.name for p in params if p.kind is p.POSITIONAL_ONLY)
    return model, positional


def _schema(model: type[BaseModel], name: str) -> dict[str, Any]:
    try:
        schema = model.model_json_schema()
    except _SCHEMA_ERRORS as exc:
        raise ConfigError(f"tool {name!r}: its parameters have no JSON schema: {exc}") from None
    schema.pop("title", None)
    schema.setdefault("properties", {})
    return schema


def _type_hints(
    fn: Callable[..., Any], name: str, params: list[inspect.Parameter]
) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except NameError as exc:
        missing = getattr(exc, "name", None) or ""
        culprit = next(
            (p.name for p in params if isinstance(p.annotation, str) and missing in p.annotation),
            "?",
        )
        raise ConfigError(
            f"tool {name!r}: the type of parameter {culprit!r} cannot be resolved ({exc}); "
            "define the types a tool uses at module level"
        ) from None


def _unsupported(
    name: str, params: list[inspect.Parameter], hints: Mapping[str, Any], exc: Exception
) -> ConfigError:
    """The error naming the parameter whose type pydantic cannot describe."""
    for param in params:
        try:
            TypeAdapter(hints[param.name]).json_schema()
        except _SCHEMA_ERRORS:
            hint = hints[param.name]
            shown = getattr(hint, "__qualname__", None) or repr(hint)
            return ConfigError(
                f"tool {name!r}: parameter {param.name!r} has type {shown}, which has no JSON "
                "schema; use JSON-like types (str, int, float, bool, lists, dicts, enums, "
                "pydantic models, dates)"
            )
    return ConfigError(f"tool {name!r}: its parameters have no JSON schema: {exc}")


def _read_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The first paragraph, and each parameter's text from the ``Args:`` section.

    An entry starts at the section's first indentation; deeper lines continue
    the entry above them, and a line back at the header's level ends the section.
    """
    lines = doc.splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip():
            break
        summary.append(line.strip())
    documented: dict[str, str] = {}
    header: int | None = None
    entry: int | None = None
    current: str | None = None
    for line in lines:
        text = line.strip()
        indent = len(line) - len(line.lstrip())
        if header is None:
            header = indent if text.lower() in _ARGS_HEADERS else None
            continue
        if not text:
            continue
        if indent <= header:
            break
        if entry is None:
            entry = indent
        match = _ARG_LINE.match(text)
        if indent == entry and match:
            current = match.group(1).lstrip("*")
            documented[current] = match.group(2).strip()
        elif current is not None:
            documented[current] = f"{documented[current]} {text}".strip()
    return " ".join(summary), documented
