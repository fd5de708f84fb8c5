"""Training-mode records and the textual backward pass, against an in-process fake endpoint.

The fake answers forward calls with ``alias(prompt)`` and backward calls (recognised
by their header) with one ``<FEEDBACK>`` block per item asked about, naming the
item and the user prompt of the call it judged, so each piece of feedback shows
where it came from.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from plait import ExecutionSettings, LLMInference, Module, Parameter, Value, ValueKind
from plait import functional as F
from plait.backward_prompt import HEADER
from plait.errors import ResourcesNotBoundError
from plait.graph import ForwardRecord, InferenceGraph
from plait.optimization import (
    BackwardContext,
    BackwardError,
    BackwardResult,
    VerifierLoss,
    run_backward,
)
from plait.testing import FakeResources
from support.resources import replying

ITEM = re.compile(r'<FEEDBACK item="([^"]+)">\.\.\.</FEEDBACK>')
USER = re.compile(r"^\[user\] (.*)$", re.MULTILINE)


def critic(alias: str, prompt: str) -> str:
    if not prompt.startswith(HEADER):
        return f"{alias}({prompt})"
    judged = USER.findall(prompt)[0]
    return "".join(
        f'<FEEDBACK item="{item}">{item} of [{judged}]</FEEDBACK>' for item in ITEM.findall(prompt)
    )


def fake(**options: Any) -> FakeResources:
    reply = replying(options.pop("reply", critic))
    return FakeResources(reply, aliases=("fast", "optimizer"), **options)


def backward_prompts(resources: FakeResources) -> list[str]:
    return [call.prompt for call in resources.calls if call.alias == "optimizer"]


class ThreeStage(Module):
    """plan -> write -> edit; two learnable system prompts and a frozen one."""

    def __init__(self) -> None:
        super().__init__()
        self.plan_style = Parameter("Plan briefly.", description="how the planner plans")
        self.write_style = Parameter("Write plainly.", description="how the writer writes")
        self.house_rules = Parameter("House rules.", requires_grad=False)
        self.planner = LLMInference("fast", system_prompt=self.plan_style)
        self.writer = LLMInference("fast", system_prompt=self.write_style)
        self.editor = LLMInference("fast", system_prompt=self.house_rules)

    def forward(self, topic: str) -> Any:
        plan = self.planner(f"Plan: {topic}")
        draft = self.writer(f"Write from: {plan}")
        return self.editor(f"Edit: {draft}")


def always_fails(output: Any, target: Any) -> str:
    return "too vague"


async def judged(module: Module, *inputs: Any) -> Value:
    """Run ``module`` in training mode and judge its output with a failing verifier."""
    module.train()
    output = await module(*inputs)
    return await VerifierLoss(always_fails)(output)  # type: ignore[no-any-return]


async def test_training_output_carries_its_record_and_eval_output_stays_plain() -> None:
    resources = fake()
    pipeline = ThreeStage().bind(resources)
    assert await pipeline("tea") == "fast(Edit: fast(Write from: fast(Plan: tea)))"

    pipeline.train()
    output = await pipeline("tea")
    assert isinstance(output, Value)
    assert output.payload == "fast(Edit: fast(Write from: fast(Plan: tea)))"
    record = output.record
    assert isinstance(record, ForwardRecord)
    assert record.node_inputs["writer"] == (("Write from: fast(Plan: tea)",), {})
    assert record.node_outputs["planner"] == "fast(Plan: tea)"
    assert record.graph.nodes["writer"].parameters == (pipeline.write_style,)
    assert record.graph.nodes["editor"].parameters == (pipeline.house_rules,)
    assert output.record.resources is resources

    batch = await pipeline(["tea", "rain"])
    assert [value.payload for value in batch] == [
        "fast(Edit: fast(Write from: fast(Plan: tea)))",
        "fast(Edit: fast(Write from: fast(Plan: rain)))",
    ]
    first, second = (value.record for value in batch)
    assert first is not second
    assert second.node_outputs["input:0"] == "rain"
    assert second.node_inputs["planner"] == (("Plan: rain",), {})


async def test_feedback_reaches_the_learnable_parameters_upstream_and_flows_through_prompts() -> (
    None
):
    resources = fake()
    pipeline = ThreeStage().bind(resources)
    loss = await judged(pipeline, "tea")
    await loss.backward()

    assert pipeline.plan_style.feedback == ("p1 of [Plan: tea]",)
    assert pipeline.write_style.feedback == ("p1 of [Write from: fast(Plan: tea)]",)
    assert pipeline.house_rules.feedback == ()
    prompts = backward_prompts(resources)
    assert len(prompts) == 3
    editor, writer, planner = prompts
    assert "<CRITIQUE>\ntoo vague\n</CRITIQUE>" in editor
    assert 'item="p1"' not in editor  # the frozen system prompt is not asked about
    assert "<CRITIQUE>\nprompt of [Edit: " in writer
    assert "<CRITIQUE>\nprompt of [Write from: fast(Plan: tea)]\n</CRITIQUE>" in planner
    assert 'item="prompt"' not in planner  # its prompt came from the input: nowhere to go
    assert pipeline.write_style.upstream == (pipeline.plan_style,)
    assert pipeline.plan_style.upstream == ()
    assert pipeline.plan_style.scores == pipeline.write_style.scores == (0.0,)


class WithSideBranch(ThreeStage):
    """A fourth learnable prompt on a call whose result the output never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.aside_style = Parameter("Muse.", description="how the aside muses")
        self.aside = LLMInference("fast", system_prompt=self.aside_style)

    def forward(self, topic: str) -> Any:
        self.aside(f"Aside: {topic}")
        return super().forward(topic)


async def test_parameters_off_the_path_to_the_judged_output_get_nothing() -> None:
    resources = fake()
    pipeline = WithSideBranch().bind(resources)
    loss = await judged(pipeline, "tea")
    await loss.backward()
    assert pipeline.aside_style.feedback == ()
    assert pipeline.aside_style.scores == ()
    assert pipeline.plan_style.feedback
    assert pipeline.write_style.feedback
    assert not any("Aside" in prompt for prompt in backward_prompts(resources))


class FanOut(Module):
    """One shared style in two parallel calls; one draft feeding both."""

    def __init__(self) -> None:
        super().__init__()
        self.style = Parameter("Be brief.", description="shared style")
        self.draft_style = Parameter("Draft.", description="how drafts are written")
        self.draft = LLMInference("fast", system_prompt=self.draft_style)
        self.left = LLMInference("fast", system_prompt=self.style)
        self.right = LLMInference("fast", system_prompt=self.style)

    def forward(self, topic: str) -> Any:
        draft = self.draft(f"Draft: {topic}")
        return F.concat(self.left(f"L: {draft}"), self.right(f"R: {draft}"), sep=" + ")


async def test_fan_out_feedback_accumulates_on_shared_parameters_and_nodes() -> None:
    resources = fake()
    pipeline = FanOut().bind(resources)
    loss = await judged(pipeline, "tea")
    await loss.backward()

    assert sorted(pipeline.style.feedback) == [
        "p1 of [L: fast(Draft: tea)]",
        "p1 of [R: fast(Draft: tea)]",
    ]
    draft_prompt = next(p for p in backward_prompts(resources) if "[user] Draft: tea" in p)
    critique = draft_prompt.split("<CRITIQUE>\n", 1)[1].split("\n</CRITIQUE>", 1)[0]
    assert critique == (
        "[1] prompt of [L: fast(Draft: tea)]\n\n[2] prompt of [R: fast(Draft: tea)]"
    )
    assert pipeline.draft_style.feedback == ("p1 of [Draft: tea]",)


async def test_mini_batch_feedback_accumulates_across_examples() -> None:
    resources = fake()
    pipeline = ThreeStage().bind(resources).train()
    outputs = await pipeline(["tea", "rain", "snow"])
    loss = await VerifierLoss(always_fails)(outputs)
    assert loss.score == 0.0
    await loss.backward()
    assert sorted(pipeline.plan_style.feedback) == [
        "p1 of [Plan: rain]",
        "p1 of [Plan: snow]",
        "p1 of [Plan: tea]",
    ]
    assert pipeline.plan_style.scores == (0.0, 0.0, 0.0)
    assert all(value.record.released for value in outputs)


async def test_independent_backward_calls_run_concurrently_on_one_scheduler() -> None:
    resources = fake(latency=0.02)
    pipeline = ThreeStage().bind(resources).train()
    outputs = await pipeline(["a", "b", "c", "d"])
    resources.peak = 0
    loss = await VerifierLoss(always_fails)(outputs)
    await loss.backward()
    assert len(backward_prompts(resources)) == 12
    assert resources.peak == 4  # each depth's four calls (one per example) overlap

    limited = fake(latency=0.02)
    pipeline = ThreeStage().bind(limited).train()
    outputs = await pipeline(["a", "b", "c", "d"])
    limited.peak = 0
    loss = await VerifierLoss(always_fails)(outputs)
    async with ExecutionSettings(max_concurrent=2):
        await loss.backward()
    assert limited.peak == 2


async def test_records_are_released_after_backward_unless_kept() -> None:
    pipeline = ThreeStage().bind(fake())
    loss = await judged(pipeline, "tea")
    record = loss.targets[0].record
    await loss.backward(retain_record=True)
    assert not record.released
    await loss.backward()
    assert record.released
    assert record.node_inputs == {}
    assert record.node_outputs == {}
    assert len(pipeline.plan_style.feedback) == 2
    with pytest.raises(BackwardError, match="released"):
        await loss.backward()


async def test_backward_refuses_values_it_cannot_walk() -> None:
    pipeline = ThreeStage().bind(fake())
    plain = await VerifierLoss(always_fails)(Value(ValueKind.TEXT, "eval-mode output"))
    with pytest.raises(BackwardError, match=r"train\(\)"):
        await plain.backward()
    output = await pipeline.train()("tea")
    with pytest.raises(BackwardError, match="not on feedback"):
        await output.backward()
    with pytest.raises(BackwardError, match="feedback Value"):
        await run_backward(["just text"])  # type: ignore[list-item]


class Pick(Module):
    """Returns its first input; feedback should blame only that one."""

    def forward(self, first: str, second: str) -> str:
        return first

    def backward(self, feedback: str, ctx: BackwardContext) -> BackwardResult:
        return BackwardResult(inputs={0: f"first: {feedback}"})


class AskingPick(Module):
    """Same routing as Pick, but an async override that consults the backward LLM."""

    def forward(self, first: str, second: str) -> str:
        return first

    async def backward(self, feedback: str, ctx: BackwardContext) -> BackwardResult:
        answer = await ctx.ask(f"Which input explains: {feedback}?")
        return BackwardResult(inputs={0: answer})


class TwoSources(Module):
    def __init__(self, pick: Module) -> None:
        super().__init__()
        self.one_style = Parameter("One.", description="first source style")
        self.two_style = Parameter("Two.", description="second source style")
        self.one = LLMInference("fast", system_prompt=self.one_style)
        self.two = LLMInference("fast", system_prompt=self.two_style)
        self.pick = pick

    def forward(self, topic: str) -> Any:
        return self.pick(self.one(f"1: {topic}"), self.two(f"2: {topic}"))


@pytest.mark.parametrize(
    ("pick", "routed"),
    [(Pick, "first: too vague"), (AskingPick, "optimizer(Which input explains: too vague?)")],
)
async def test_user_overrides_of_backward_route_feedback(pick: type[Module], routed: str) -> None:
    resources = fake()
    pipeline = TwoSources(pick()).bind(resources)
    loss = await judged(pipeline, "tea")
    await loss.backward()
    assert pipeline.one_style.feedback == ("p1 of [1: tea]",)
    assert pipeline.two_style.feedback == ()
    (first_call,) = [p for p in backward_prompts(resources) if p.startswith(HEADER)]
    assert f"<CRITIQUE>\n{routed}\n</CRITIQUE>" in first_call


class BadRoute(Module):
    def forward(self, text: str) -> str:
        return text

    def backward(self, feedback: str, ctx: BackwardContext) -> BackwardResult:
        return BackwardResult(inputs={"nope": feedback})


class Chained(Module):
    def __init__(self, tail: Module) -> None:
        super().__init__()
        self.style = Parameter("S.", description="style")
        self.head = LLMInference("fast", system_prompt=self.style)
        self.tail = tail

    def forward(self, topic: str) -> Any:
        return self.tail(self.head(topic))


async def test_feedback_for_an_input_the_node_lacks_is_an_error() -> None:
    pipeline = Chained(BadRoute()).bind(fake())
    loss = await judged(pipeline, "tea")
    with pytest.raises(BackwardError, match="'nope'"):
        await loss.backward()


class Shout(Module):
    def forward(self, text: str) -> str:
        return text.upper()


async def test_ops_and_custom_modules_pass_feedback_through_to_inputs_and_parameters() -> None:
    template = Parameter("Say {what} twice.", description="the request template")

    class Templated(Module):
        def __init__(self) -> None:
            super().__init__()
            self.template = template
            self.head = LLMInference("fast")
            self.shout = Shout()

        def forward(self, topic: str) -> Any:
            return self.shout(self.head(F.render(self.template, what=topic)))

    resources = fake()
    pipeline = Templated().bind(resources)
    loss = await judged(pipeline, "tea")
    await loss.backward()
    head_call = next(p for p in backward_prompts(resources) if "[user] Say tea twice." in p)
    assert "<CRITIQUE>\ntoo vague\n</CRITIQUE>" in head_call  # through Shout unchanged
    assert template.feedback == ("prompt of [Say tea twice.]",)  # through the render op


async def test_the_llm_backward_falls_back_to_the_whole_reply_and_skips_no_change() -> None:
    def plain_critic(alias: str, prompt: str) -> str:
        if not prompt.startswith(HEADER):
            return f"{alias}({prompt})"
        if "[user] Edit:" in prompt:
            return '<FEEDBACK item="prompt">No change.</FEEDBACK>'
        return "  Make it shorter.  "

    resources = fake(reply=plain_critic)
    pipeline = ThreeStage().bind(resources)
    loss = await judged(pipeline, "tea")
    await loss.backward()
    assert len(backward_prompts(resources)) == 1  # "No change" stopped the walk at the editor
    assert not pipeline.write_style.feedback

    loss = await judged(pipeline, "tea")
    resources.replies = replying(
        lambda alias, prompt: (
            "Make it shorter." if prompt.startswith(HEADER) else f"{alias}({prompt})"
        )
    )
    await loss.backward()
    assert pipeline.write_style.feedback == ("Make it shorter.",)
    assert pipeline.plan_style.feedback == ("Make it shorter.",)


async def test_backward_resources_come_from_the_forward_then_the_caller() -> None:
    forward_side = fake()
    pipeline = ThreeStage().bind(forward_side)
    loss = await judged(pipeline, "tea")
    explicit = fake()
    await loss.backward(resources=explicit, retain_record=True)
    assert len(backward_prompts(explicit)) == 3
    assert backward_prompts(forward_side) == []
    await loss.backward()
    assert len(backward_prompts(forward_side)) == 3

    unbound = ThreeStage()
    unbound.train()
    async with ExecutionSettings(resources=fake()):
        output = await unbound("tea")
        output.record.resources = None
        loss = await VerifierLoss(always_fails)(output)
    with pytest.raises(ResourcesNotBoundError, match="'optimizer'"):
        await loss.backward(retain_record=True)
    settings_side = fake()
    async with ExecutionSettings(resources=settings_side):
        await loss.backward()
    assert len(backward_prompts(settings_side)) == 3


async def test_a_loss_inside_a_traced_step_backpropagates_to_the_pipeline() -> None:
    class Step(Module):
        def __init__(self) -> None:
            super().__init__()
            self.pipeline = ThreeStage()
            self.loss = VerifierLoss(lambda output, target: f"should mention {target}")

        def forward(self, topic: str, target: str) -> Any:
            return self.loss(self.pipeline(topic), target)

    resources = fake()
    step = Step().bind(resources).train()
    loss = await step("tea", "milk")
    assert str(loss) == "should mention milk"
    assert loss.score == 0.0
    await loss.backward()
    assert step.pipeline.plan_style.feedback == ("p1 of [Plan: tea]",)
    assert "<CRITIQUE>\nshould mention milk\n</CRITIQUE>" in backward_prompts(resources)[0]
    assert loss.record.released


def test_a_value_wrapping_a_value_merges_into_one() -> None:
    record = ForwardRecord(InferenceGraph({}, [], []))
    inner = Value(ValueKind.TEXT, "fix it", "loss", {"score": 0.5, "tag": "inner"})
    outer = Value(ValueKind.OTHER, inner, "step", {"tag": "outer"}, record=record)
    assert outer.kind is ValueKind.TEXT
    assert outer.payload == "fix it"
    assert outer.ref == "step"
    assert outer.meta == {"score": 0.5, "tag": "outer"}
    assert outer.record is record
    assert Value(ValueKind.OTHER, inner).ref == "loss"


class InlineStyle(Module):
    """A learnable text composed into the user prompt rather than the system prompt."""

    def __init__(self) -> None:
        super().__init__()
        self.style = Parameter("In one line.", description="format instruction")
        self.answer = LLMInference("fast")

    def forward(self, question: str) -> Any:
        return self.answer(f"{self.style}\n{question}")


async def test_a_parameter_composed_into_a_prompt_gets_feedback() -> None:
    resources = fake()
    pipeline = InlineStyle().bind(resources)
    loss = await judged(pipeline, "why?")
    await loss.backward()
    (prompt,) = backward_prompts(resources)
    assert "- p1: this text, which appears in the request: <<<\nIn one line.\n>>>" in prompt
    assert "Its purpose: format instruction" in prompt
    assert pipeline.style.feedback == ("p1 of [In one line.]",)
