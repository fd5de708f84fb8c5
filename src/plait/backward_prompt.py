"""The backward prompt of one LLM call, and how its answer is read.

TextGrad-style: given the request the node sent, the reply it got and the
feedback on that reply, one LLM call writes feedback for each thing that
could change: the call's learnable parameters, and the parts of its prompt
that earlier nodes wrote (that feedback travels on to them). Each item gets a
tag of its own in the answer, so one reply can blame the system prompt and
clear an upstream input at the same time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from plait.clients.base import ChatRequest
from plait.demos import Demos
from plait.feedback import BackwardContext, BackwardResult
from plait.graph import ParameterLike
from plait.markup import means_no_change, quoted, tagged_items
from plait.parameter import Parameter
from plait.tools import AssistantMessage
from plait.values import to_text


class AskedCall(Protocol):
    """What the prompt reads of the call it is about: an LLMInference, which
    imports this module, so the two members are declared here instead."""

    @property
    def system_prompt(self) -> str | Parameter: ...

    def forward(self, prompt: Any) -> ChatRequest: ...


SYSTEM = (
    "You help improve a pipeline of language-model calls. You see one call: the request it "
    "sent, the reply it got, and a critique of that reply. For each item you are asked "
    "about, say what in it led to the problems in the critique and how it should change. "
    "Be specific and brief. Write 'No change' for an item that is not to blame."
)
HEADER = "Backward pass: write feedback for one step of a pipeline."
"""First line of every backward prompt; also lets scripted test replies recognise one."""


async def llm_backward(module: AskedCall, feedback: str, ctx: BackwardContext) -> BackwardResult:
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
    module: AskedCall, ctx: BackwardContext, feedback: str, items: list[tuple[str, str]]
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
        _render_reply(ctx.output),
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
        f"[{message.get('role', 'user')}] {_with_calls(message.get('content'), message)}"
        for message in messages
    )


def _render_reply(output: Any) -> str:
    """A reply as the backward LLM reads it: a tool-calling turn shows its calls."""
    if isinstance(output, AssistantMessage):
        return _with_calls(output.content, output.to_message())
    return to_text(output)


def _with_calls(content: Any, message: Mapping[str, Any]) -> str:
    parts = [to_text(content)] if content else []
    parts += [
        f"(calls {call['function']['name']}({call['function']['arguments']}))"
        for call in message.get("tool_calls") or ()
    ]
    return " ".join(parts)


def _describe(param: ParameterLike, module: AskedCall) -> str:
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
