"""LLMInference: one chat-completions call, and how feedback on its reply flows back.

The backward half is TextGrad-style: given the request the node sent, the
reply it got and the feedback on that reply, one LLM call writes feedback for
each thing that could change — the call's learnable parameters, and the parts
of its prompt that earlier nodes wrote (that feedback travels on to them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from plait.clients.base import ChatRequest, ChatResponse
from plait.demos import Demos
from plait.errors import ConfigError
from plait.feedback import BackwardContext, BackwardResult
from plait.graph import NodeKind, ParameterLike
from plait.markup import means_no_change, quoted, tagged_items
from plait.module import Module
from plait.parameter import Parameter
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

    def __init__(
        self,
        alias: str,
        system_prompt: str | Parameter = "",
        temperature: float | None = 1.0,
        max_tokens: int | None = None,
        response_format: type[BaseModel] | None = None,
        demos: Demos | None = None,
        **request_options: Any,
    ) -> None:
        super().__init__()
        if not isinstance(alias, str) or not alias:
            raise ConfigError(f"LLMInference alias must be a non-empty str, got {alias!r}")
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
        if temperature is not None and (
            not isinstance(temperature, int | float)
            or isinstance(temperature, bool)
            or not temperature >= 0
        ):
            raise ConfigError(
                f"LLMInference temperature must be a number >= 0 or None, got {temperature!r}"
            )
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ConfigError(f"LLMInference max_tokens must be a positive int, got {max_tokens!r}")
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

    def _plait_is_leaf(self) -> bool:
        return True

    def forward(self, prompt: Any) -> ChatRequest:
        """Build the request for ``prompt`` (text, or a list of chat messages)."""
        system = str(self.system_prompt)
        demos = self._parameters.get("demos")
        shown = demos.messages() if isinstance(demos, Demos) else []
        if isinstance(prompt, list):
            for position, message in enumerate(prompt):
                if not isinstance(message, Mapping) or "role" not in message:
                    raise TypeError(
                        "a list prompt to LLMInference must hold chat messages like "
                        f"{{'role': 'user', 'content': ...}}; item {position} is "
                        f"{type(message).__name__}. To send several texts, join them "
                        "into one string."
                    )
            messages = [dict(message) for message in prompt]
            head = 1 if messages and messages[0].get("role") == "system" else 0
            messages[head:head] = shown
            if system and not head:
                messages.insert(0, {"role": "system", "content": system})
        else:
            messages = [*shown, {"role": "user", "content": to_text(prompt)}]
            if system:
                messages.insert(0, {"role": "system", "content": system})
        return ChatRequest(
            messages=messages,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            response_format=self.response_format,
            options=self.request_options,
        )

    def parse_response(self, response: ChatResponse) -> Any:
        """The node's output: the validated model with ``response_format``, else the text."""
        if self.response_format is not None and response.parsed is not None:
            return response.parsed
        return response.content

    async def backward(self, feedback: str, ctx: BackwardContext) -> BackwardResult:
        """TextGrad-style: an LLM reads this call's request, reply and the feedback,
        and writes feedback for its learnable parameters and for the parts of its
        prompt that earlier nodes wrote."""
        return await _llm_backward(self, feedback, ctx)

    def extra_repr(self) -> str:
        parts = [f"alias={self.alias!r}"]
        if self.response_format is not None:
            parts.append(f"response_format={self.response_format.__name__}")
        return ", ".join(parts)


SYSTEM = (
    "You help improve a pipeline of language-model calls. You see one call: the request it "
    "sent, the reply it got, and a critique of that reply. For each item you are asked "
    "about, say what in it led to the problems in the critique and how it should change. "
    "Be specific and brief. Write 'No change' for an item that is not to blame."
)
HEADER = "Backward pass: write feedback for one step of a pipeline."
"""First line of every backward prompt; also lets scripted test replies recognise one."""


async def _llm_backward(
    module: LLMInference, feedback: str, ctx: BackwardContext
) -> BackwardResult:
    """Ask ``ctx.llm`` for feedback on every learnable parameter and traced input.

    Demonstrations are chosen, not written, so no feedback is asked for them.
    """
    params = [param for param in ctx.learnable if not isinstance(param, Demos)]
    traced = ctx.traced_inputs()
    if not params and not traced:
        return BackwardResult()
    items: list[tuple[str, str]] = []
    for index, param in enumerate(params, 1):
        items.append((f"p{index}", _describe(param, module)))
    for key in traced:
        items.append((_input_item(key), _describe_input(key)))
    prompt = _prompt(module, ctx, feedback, items)
    reply = await ctx.ask(prompt, system=SYSTEM)
    answers = tagged_items(reply, "FEEDBACK")
    if not answers:
        whole = reply.strip()
        answers = {item: whole for item, _ in items}
    result = BackwardResult()
    for index, param in enumerate(params, 1):
        text = answers.get(f"p{index}", "")
        if not means_no_change(text):
            result.parameters[param] = text
    for key in traced:
        text = answers.get(_input_item(key), "")
        if not means_no_change(text):
            result.inputs[key] = text
    return result


def _prompt(
    module: LLMInference, ctx: BackwardContext, feedback: str, items: list[tuple[str, str]]
) -> str:
    prompt = ctx.inputs.get(0, "")
    request = module.forward(prompt)
    lines = [
        HEADER,
        "",
        "<REQUEST>",
        _render_messages(request.messages),
        "</REQUEST>",
        "<REPLY>",
        to_text(ctx.output),
        "</REPLY>",
        "<CRITIQUE>",
        feedback,
        "</CRITIQUE>",
        "",
        "Items:",
        *(f"- {item}: {description}" for item, description in items),
        "",
        "Answer with one block per item, exactly in this form:",
        *(f'<FEEDBACK item="{item}">...</FEEDBACK>' for item, _ in items),
    ]
    return "\n".join(lines)


def _render_messages(messages: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"[{message.get('role', 'user')}] {to_text(message.get('content', ''))}"
        for message in messages
    )


def _describe(param: ParameterLike, module: LLMInference) -> str:
    where = (
        "the system prompt of this call"
        if param is module.system_prompt
        else f"this text, which appears in the request: {quoted(param.value)}"
    )
    return f"{where}. Its purpose: {param.description}"


def _input_item(key: int | str) -> str:
    return "prompt" if key == 0 else f"input-{key}"


def _describe_input(key: int | str) -> str:
    what = "the user prompt" if key == 0 else f"the input {key!r}"
    return (
        f"the parts of {what} that earlier steps of the pipeline wrote "
        "(your feedback goes to those steps)"
    )
