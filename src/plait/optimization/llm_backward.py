"""TextGrad-style backward for an LLM call: a model explains what to change.

Given the request an ``LLMInference`` node sent, the reply it got and the
feedback on that reply, one LLM call writes feedback for each thing that
could be changed: the call's learnable parameters, and the parts of its
prompt that earlier nodes wrote (that feedback travels on to those nodes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plait.optimization.backward import BackwardContext, BackwardResult
from plait.optimization.text import means_no_change, quoted, tagged_items
from plait.values import to_text

if TYPE_CHECKING:
    from plait.module import LLMInference
    from plait.parameter import Parameter

SYSTEM = (
    "You help improve a pipeline of language-model calls. You see one call: the request it "
    "sent, the reply it got, and a critique of that reply. For each item you are asked "
    "about, say what in it led to the problems in the critique and how it should change. "
    "Be specific and brief. Write 'No change' for an item that is not to blame."
)
HEADER = "Backward pass: write feedback for one step of a pipeline."
"""First line of every backward prompt; also lets scripted test replies recognise one."""


async def llm_backward(module: LLMInference, feedback: str, ctx: BackwardContext) -> BackwardResult:
    """Ask ``ctx.llm`` for feedback on every learnable parameter and traced input."""
    params = ctx.learnable
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


def _describe(param: Parameter, module: LLMInference) -> str:
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
