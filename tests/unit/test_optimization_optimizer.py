"""FeedbackOptimizer against an in-process fake endpoint with scripted rewrites."""

from __future__ import annotations

import re
from typing import Any

import pytest

from plait import ExecutionSettings, Parameter
from plait.errors import ConfigError, ResourcesNotBoundError
from plait.optimization import FeedbackOptimizer, Optimizer
from plait.optimization.optimizer import CONDENSE_HEADER, UPDATE_HEADER
from plait.testing import FakeResources
from support.resources import replying


def between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def rewriter(alias: str, prompt: str) -> str:
    if prompt.startswith(UPDATE_HEADER):
        current = between(prompt, "<CURRENT_VALUE>\n", "\n</CURRENT_VALUE>")
        return f"<SUMMARY>asked for more</SUMMARY>\n<VALUE>{current} (revised)</VALUE>"
    if prompt.startswith(CONDENSE_HEADER):
        notes = re.findall(r"^\[\d+\] (.*)$", prompt, re.MULTILINE)
        return f"<SUMMARY>{len(notes)} notes</SUMMARY>"
    return f"{alias}({prompt})"


def fake(**options: Any) -> FakeResources:
    reply = replying(options.pop("reply", rewriter))
    return FakeResources(reply, aliases=("optimizer",), **options)


def updates_sent(resources: FakeResources) -> list[str]:
    return [call.prompt for call in resources.calls if call.prompt.startswith(UPDATE_HEADER)]


def learnable(value: str, description: str) -> Parameter:
    return Parameter(value, description=description)


async def test_step_rewrites_upstream_first_and_later_prompts_see_the_new_values() -> None:
    plan = learnable("Plan.", "how plans are made")
    write = learnable("Write.", "how drafts are written")
    frozen = Parameter("Rules.", requires_grad=False)
    write.accumulate_feedback("be concrete", upstream=[plan, frozen])
    plan.accumulate_feedback("plan in steps")
    frozen.accumulate_feedback("ignored: frozen parameters are never rewritten")
    resources = fake(latency=0.01)

    updates = await FeedbackOptimizer([write, frozen, plan], resources=resources).step()

    assert (plan.value, write.value, frozen.value) == (
        "Plan. (revised)",
        "Write. (revised)",
        "Rules.",
    )
    assert [update.parameter for update in updates] == [plan, write]
    assert all(update.applied and update.reason == "updated" for update in updates)
    assert updates[0].summary == "asked for more"
    first, second = resources.calls
    assert first.end_seq is not None
    assert first.end_seq < second.start_seq
    assert "<PURPOSE>how plans are made</PURPOSE>" in first.prompt
    upstream = between(second.prompt, "<UPSTREAM>", "</UPSTREAM>")
    assert "how plans are made: <<<\nPlan. (revised)\n>>>" in upstream
    assert "fixed text: <<<\nRules.\n>>>" in upstream
    assert "[1] be concrete" in second.prompt
    assert plan.feedback == write.feedback == ()
    assert frozen.feedback  # untouched, like its value


async def test_parameters_with_no_link_between_them_are_rewritten_concurrently() -> None:
    params = [learnable(f"P{index}.", f"text {index}") for index in range(3)]
    for param in params:
        param.accumulate_feedback("shorter")
    resources = fake(latency=0.02)
    await FeedbackOptimizer(params, resources=resources).step()
    assert resources.peak == 3
    assert [param.value for param in params] == ["P0. (revised)", "P1. (revised)", "P2. (revised)"]


async def test_parameters_without_feedback_are_left_alone() -> None:
    quiet = learnable("Quiet.", "no feedback for this one")
    quiet.record_score(1.0)
    resources = fake()
    assert await FeedbackOptimizer([quiet], resources=resources).step() == []
    assert resources.calls == []
    assert quiet.value == "Quiet."
    assert quiet.scores == ()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("  Plain new text.  ", "Plain new text."),
        ("<SUMMARY>wanted brevity</SUMMARY>\nBe brief.", "Be brief."),
        ("Here you go:\n<VALUE>Be brief.", "Be brief."),
    ],
)
async def test_a_reply_without_the_requested_markers_falls_back_to_the_whole_reply(
    reply: str, expected: str
) -> None:
    param = learnable("Be long.", "style")
    param.accumulate_feedback("too long")
    resources = fake(reply=lambda alias, prompt: reply)
    (update,) = await FeedbackOptimizer([param], resources=resources).step()
    assert param.value == expected
    assert update.applied


async def test_a_reply_repeating_the_current_value_changes_nothing() -> None:
    param = learnable("Same.", "style")
    param.accumulate_feedback("fine")
    resources = fake(reply=lambda alias, prompt: "<VALUE>Same.</VALUE>")
    (update,) = await FeedbackOptimizer([param], resources=resources).step()
    assert (update.applied, update.reason, param.value) == (False, "unchanged", "Same.")


async def test_history_keeps_scores_and_refuses_to_return_to_a_worse_value() -> None:
    param = learnable("First.", "style")
    proposals = iter(["<VALUE>Second.</VALUE>", "<VALUE>  first. </VALUE>"])
    resources = fake(reply=lambda alias, prompt: next(proposals))
    optimizer = FeedbackOptimizer([param], resources=resources)

    param.accumulate_feedback("needs work")
    param.record_score(0.2)
    await optimizer.step()
    assert param.value == "Second."

    param.accumulate_feedback("closer")
    param.record_score(0.6)
    param.record_score(0.8)
    (update,) = await optimizer.step()
    assert not update.applied
    assert update.reason == "rejected: a value like it scored 0.20"
    assert param.value == "Second."
    history = between(updates_sent(resources)[1], "<HISTORY>", "</HISTORY>")
    assert "- score 0.20: <<<\nFirst.\n>>>" in history
    assert "- score 0.70: <<<\nSecond.\n>>>" in history
    assert [(entry.value, entry.score) for entry in optimizer.history[param]] == [
        ("First.", 0.2),
        ("Second.", pytest.approx(0.7)),
    ]


def words(text: str) -> int:
    return len(text.split())


async def test_feedback_that_would_overflow_the_prompt_is_condensed_in_chunks_first() -> None:
    param = learnable("Be helpful.", "style")
    for index in range(40):
        param.accumulate_feedback(f"note {index}: please add more concrete examples here")
    resources = fake(latency=0.01)
    budget = 120
    optimizer = FeedbackOptimizer(
        [param], resources=resources, max_prompt_tokens=budget, count_tokens=words
    )
    await optimizer.step()
    condense = [c for c in resources.calls if c.prompt.startswith(CONDENSE_HEADER)]
    assert len(condense) > 1
    assert all(words(call.prompt) <= budget for call in condense)
    assert resources.peak == len(condense)  # the chunks are condensed concurrently
    (final,) = updates_sent(resources)
    assert words(final) <= budget
    assert "notes" in between(final, "<FEEDBACK>", "</FEEDBACK>")
    assert param.value == "Be helpful. (revised)"


async def test_condensing_that_does_not_shrink_ends_in_truncation() -> None:
    param = learnable("Be helpful.", "style")
    param.accumulate_feedback("word " * 300)

    def stubborn(alias: str, prompt: str) -> str:
        if prompt.startswith(CONDENSE_HEADER):
            return "<SUMMARY>" + "more words " * 400 + "</SUMMARY>"
        return rewriter(alias, prompt)

    resources = fake(reply=stubborn)
    await FeedbackOptimizer(
        [param], resources=resources, max_prompt_tokens=150, count_tokens=words
    ).step()
    (final,) = updates_sent(resources)
    assert words(final) <= 150


async def test_a_budget_with_no_room_for_feedback_is_a_clear_error() -> None:
    param = learnable("Be helpful.", "style")
    param.accumulate_feedback("more")
    optimizer = FeedbackOptimizer([param], resources=fake(), max_prompt_tokens=5)
    with pytest.raises(ConfigError, match="leaves no room"):
        await optimizer.step()


async def test_optimizer_resources_come_from_bind_or_execution_settings() -> None:
    param = learnable("Be helpful.", "style")
    param.accumulate_feedback("more")
    with pytest.raises(ResourcesNotBoundError, match=r"optimizer\.bind"):
        await FeedbackOptimizer([param]).step()
    assert param.value == "Be helpful."

    param.accumulate_feedback("more")
    bound = fake()
    await FeedbackOptimizer([param]).bind(bound).step()
    assert len(updates_sent(bound)) == 1

    param.accumulate_feedback("more")
    settings_side = fake()
    async with ExecutionSettings(resources=settings_side):
        await FeedbackOptimizer([param], alias="optimizer").step()
    assert len(updates_sent(settings_side)) == 1


class _Noop(Optimizer):
    async def step(self) -> list[Any]:
        return []


async def test_optimizer_base_class_contract() -> None:
    with pytest.raises(ConfigError, match="no parameters"):
        _Noop([])
    with pytest.raises(ConfigError, match="takes Parameters"):
        _Noop(["text"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="abstract"):
        Optimizer([learnable("y", "y")])  # type: ignore[abstract]
    shared = learnable("x", "shared")
    optimizer = _Noop([shared, shared])
    assert optimizer.params == [shared]
    shared.accumulate_feedback("a")
    shared.record_score(0.5)
    optimizer.zero_feedback()
    assert shared.feedback == ()
    assert shared.scores == ()
    assert await optimizer.step() == []
    with pytest.raises(ConfigError, match="max_prompt_tokens"):
        FeedbackOptimizer([shared], max_prompt_tokens=0)
    with pytest.raises(ConfigError, match="history_size"):
        FeedbackOptimizer([shared], history_size=-1)


async def test_upstream_links_that_form_a_cycle_fall_back_to_the_given_order() -> None:
    first = learnable("One.", "first")
    second = learnable("Two.", "second")
    first.accumulate_feedback("a", upstream=[second])
    second.accumulate_feedback("b", upstream=[first])
    resources = fake()
    updates = await FeedbackOptimizer([first, second], resources=resources).step()
    assert [update.parameter for update in updates] == [first, second]
    assert (first.value, second.value) == ("One. (revised)", "Two. (revised)")
