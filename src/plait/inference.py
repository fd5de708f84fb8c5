"""LLMInference: one chat-completions call, and how feedback on its reply flows back.

The backward half (the prompt that asks an LLM for feedback on one call) is
:mod:`plait.backward_prompt`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel

from plait.backward_prompt import llm_backward
from plait.clients.base import ChatRequest, ChatResponse
from plait.clients.options import check_option, check_options
from plait.demos import Demos
from plait.errors import ConfigError
from plait.feedback import BackwardContext, BackwardResult
from plait.graph import NodeKind
from plait.module import Module
from plait.parameter import Parameter
from plait.tool_loop import ToolRun, run_loop, run_name
from plait.tools import AssistantMessage, ToolLike, as_tools, tool_call
from plait.values import to_text


class LLMInference(Module):
    """One chat-completions call against the endpoint pool named ``alias``.

    ``forward`` does not talk to the network: it builds the request, and the
    execution engine sends it through the resource manager, which owns rate
    limits, retries and endpoint choice. That split is what lets one batch
    respect an endpoint's limits across thousands of concurrent calls.

    ``demos`` (a :class:`~plait.demos.Demos`) puts worked examples before the
    query as user/assistant turns, after the system prompt; they are read when
    the request is built, so an optimizer that swaps them needs no retrace.
    """

    _plait_node_kind = NodeKind.LLM

    def __new__(cls, *args: Any, **kwargs: Any) -> LLMInference:
        # With tools to run, the call is a loop of turns: a dynamic module
        # (ToolLoop) rather than one request. Chosen here so that user code
        # writes LLMInference either way.
        chosen: type[LLMInference] = cls
        if cls is LLMInference and kwargs.get("tools") and kwargs.get("run_tools", True):
            chosen = ToolLoop
        return super().__new__(chosen)

    def __init__(
        self,
        alias: str,
        system_prompt: str | Parameter = "",
        temperature: float | None = 1.0,
        max_tokens: int | None = None,
        response_format: type[BaseModel] | None = None,
        *,
        demos: Demos | None = None,
        tools: Sequence[ToolLike] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        run_tools: bool = True,
        max_tool_rounds: int = 8,
        **request_options: Any,
    ) -> None:
        """``tools`` are typed functions (or :class:`~plait.tools.Tool`) the model may
        call. With ``run_tools=True`` (the default) the call runs them and
        answers the model until it replies without calls, at most
        ``max_tool_rounds`` rounds, and its output is that reply (see
        :mod:`plait.tool_loop`); with ``run_tools=False`` the output is the
        :class:`~plait.tools.AssistantMessage` with the calls, their arguments
        validated into the functions' types. ``request_options`` go into
        every request as they are, so a server-specific option belongs here.
        """
        super().__init__()
        if not isinstance(alias, str) or not alias:
            raise ConfigError(f"LLMInference alias must be a non-empty str, got {alias!r}")
        where = f"LLMInference({alias!r})"
        if not isinstance(system_prompt, str | Parameter):
            raise ConfigError(
                "LLMInference system_prompt must be a str or Parameter, got "
                f"{type(system_prompt).__name__}"
            )
        if response_format is not None and not (
            isinstance(response_format, type) and issubclass(response_format, BaseModel)
        ):
            raise ConfigError(
                "LLMInference response_format must be a pydantic model class, got "
                f"{response_format!r}"
            )
        for name, value in {"temperature": temperature, "max_tokens": max_tokens}.items():
            check_option(name, value, where)
        for name, value in request_options.items():
            check_option(name, value, where)
        self.tools = as_tools(tools or ())
        if tool_choice is not None and not self.tools:
            raise ConfigError(f"{where}: tool_choice={tool_choice!r} needs tools=[...]")
        check_option("tool_choice", tool_choice, where)
        if (
            not isinstance(max_tool_rounds, int)
            or isinstance(max_tool_rounds, bool)
            or max_tool_rounds < 1
        ):
            raise ConfigError(
                f"{where}: max_tool_rounds must be a positive int, got {max_tool_rounds!r}"
            )
        if not isinstance(run_tools, bool):
            raise ConfigError(f"{where}: run_tools must be True or False, got {run_tools!r}")
        if demos is not None and not isinstance(demos, Demos):
            raise ConfigError(
                f"LLMInference demos must be a Demos, got {type(demos).__name__}; "
                "wrap the pairs: demos=Demos(description, examples=[(input, output), ...])"
            )
        self.alias = alias
        self.system_prompt = system_prompt
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.response_format = response_format
        if demos is not None:
            self.demos = demos
        self.request_options = request_options
        # The wire form is built once, and as plain data it is what a
        # checkpoint's fingerprint compares when a tool's signature changes.
        self.tool_schemas = [tool.schema() for tool in self.tools.values()] or None
        self.tool_choice = tool_choice
        self.run_tools = run_tools
        self.max_tool_rounds = max_tool_rounds

    def _plait_is_leaf(self) -> bool:
        return True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call with per-call request options: ``llm(prompt, temperature=0, stop=[...])``.

        They are checked here, when the call is traced or made, so a misspelt
        option fails before any request is sent rather than once per request.
        """
        if kwargs:
            overrides = {key: value for key, value in kwargs.items() if key != "prompt"}
            check_options(overrides, self._where(), also_known=frozenset(self.request_options))
        return super().__call__(*args, **kwargs)

    def forward(self, prompt: Any, **overrides: Any) -> ChatRequest:
        """Build the request for ``prompt`` (text, or a list of chat messages).

        ``overrides`` replace the module's request options for this call only;
        they are part of the request, so the cache key sees them too.
        """
        system = str(self.system_prompt)
        demos = self._parameters.get("demos")
        shown = demos.messages() if isinstance(demos, Demos) else []
        if isinstance(prompt, list):
            messages = [_chat_message(position, message) for position, message in enumerate(prompt)]
            head = 1 if messages and messages[0].get("role") == "system" else 0
            messages[head:head] = shown
            if system and not head:
                messages.insert(0, {"role": "system", "content": system})
        else:
            messages = [*shown, {"role": "user", "content": to_text(prompt)}]
            if system:
                messages.insert(0, {"role": "system", "content": system})
        if not overrides:
            return ChatRequest(
                messages=messages,
                temperature=self.temperature,
                max_tokens=self.max_tokens,
                response_format=self.response_format,
                options=self.request_options,
                tools=self.tool_schemas,
                tool_choice=self.tool_choice,
            )
        # Checked again here for calls that reach forward without __call__ (a batch of kwargs).
        check_options(overrides, self._where(), also_known=frozenset(self.request_options))
        options = {**self.request_options, **overrides}
        if options.get("n") == 1:
            del options["n"]
        temperature = options.pop("temperature", self.temperature)
        max_tokens = options.pop("max_tokens", self.max_tokens)
        tool_choice = options.pop("tool_choice", self.tool_choice)
        return ChatRequest(
            messages=messages,
            temperature=temperature,
            max_tokens=max_tokens,
            response_format=self.response_format,
            options=options,
            tools=self.tool_schemas,
            tool_choice=tool_choice,
        )

    def stored_models(self) -> tuple[type[BaseModel], ...]:
        """The pydantic classes this call's outputs may be, which a checkpoint may decode."""
        return (AssistantMessage,) if self.tools else ()

    def parse_response(self, response: ChatResponse) -> Any:
        """The node's output: the validated model with ``response_format``, else the text.

        With tools it is the whole turn, an :class:`~plait.tools.AssistantMessage`,
        each tool call's arguments validated against its tool.
        """
        if self.tools:
            calls = [tool_call(raw, self.tools) for raw in response.tool_calls]
            return AssistantMessage(content=response.content, tool_calls=calls)
        if self.response_format is not None and response.parsed is not None:
            return response.parsed
        return response.content

    def _where(self) -> str:
        return f"LLMInference({self.alias!r})"

    async def backward(self, feedback: str, ctx: BackwardContext) -> BackwardResult:
        """TextGrad-style: an LLM reads this call's request, reply and the feedback,
        and writes feedback for its learnable parameters and for the parts of its
        prompt that earlier nodes wrote. A tool loop's turns were recorded as
        calls of their own, so feedback on it walks them instead."""
        if ctx.record is not None:
            return await ctx.walk_inside(feedback)
        return await llm_backward(self, feedback, ctx)

    def extra_repr(self) -> str:
        parts = [f"alias={self.alias!r}"]
        if self.response_format is not None:
            parts.append(f"response_format={self.response_format.__name__}")
        return ", ".join(parts)


class ToolLoop(LLMInference):
    """An ``LLMInference`` with tools to run: a dynamic module whose forward is the loop.

    ``LLMInference(alias, tools=[...])`` builds one (``run_tools=True`` is the
    default). Its ``turn`` child is a plain ``LLMInference`` with the same
    settings and ``run_tools=False``, called once per model turn; each tool
    is a :class:`~plait.tool_loop.ToolRun` child, called once per run.
    Settings assigned later (``llm.temperature = 0``) reach the turn too;
    the tools are fixed at construction.
    """

    _TURN_SETTINGS: ClassVar[frozenset[str]] = frozenset(
        {
            "system_prompt",
            "temperature",
            "max_tokens",
            "response_format",
            "request_options",
            "tool_choice",
            "demos",
        }
    )

    def __init__(self, alias: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(alias, *args, **kwargs)
        if not self.tools:
            # Only an empty iterator gets here: it looked like tools to __new__.
            raise ConfigError(f"{self._where()}: tools=... held no tools; pass a list")
        demos = self._parameters.get("demos")
        self.turn = LLMInference(
            alias,
            self.system_prompt,
            self.temperature,
            self.max_tokens,
            self.response_format,
            demos=demos if isinstance(demos, Demos) else None,
            tools=list(self.tools.values()),
            tool_choice=self.tool_choice,
            run_tools=False,
            **self.request_options,
        )
        for name, tool in self.tools.items():
            self.register_module(run_name(name), ToolRun(tool))

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        turn = self._modules.get("turn")
        if turn is not None and name in self._TURN_SETTINGS:
            setattr(turn, name, value)

    async def forward(self, prompt: Any, **overrides: Any) -> Any:  # type: ignore[override]
        """The model's last reply (text, or the ``response_format`` model) once it
        stops calling tools; ``overrides`` go into every turn's request."""
        return await run_loop(
            self,
            prompt,
            overrides,
            max_rounds=self.max_tool_rounds,
            response_format=self.response_format,
            where=self._where(),
        )


def _chat_message(position: int, message: Any) -> dict[str, Any]:
    if isinstance(message, AssistantMessage):
        return message.to_message()
    if not isinstance(message, Mapping) or "role" not in message:
        raise TypeError(
            "a list prompt to LLMInference must hold chat messages like "
            f"{{'role': 'user', 'content': ...}}; item {position} is "
            f"{type(message).__name__}. To send several texts, join them into one string."
        )
    return dict(message)
