"""The fakes plait.testing ships: FakeResources in place of the manager, MockClient behind it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from plait import LLMInference, Module
from plait.clients.base import ChatRequest, ChatResponse, LLMClient
from plait.errors import (
    PermanentError,
    RateLimitError,
    ResponseValidationError,
    TransientError,
    UnknownAliasError,
)
from plait.resources import ResourceManager
from plait.resources.protocol import ResourceManagerLike, as_resource_manager
from plait.testing import FakeResources, MockClient, prompt_of

GUARD = 10.0


def ask(text: str, *, system: str | None = None, **fields: Any) -> ChatRequest:
    messages = [{"role": "user", "content": text}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return ChatRequest(messages=messages, **fields)


class Verdict(BaseModel):
    score: int


class Answer(Module):
    def __init__(self) -> None:
        super().__init__()
        self.draft = LLMInference("fast")
        self.judge = LLMInference("judge")

    def forward(self, question: str) -> Any:
        return self.judge(f"Grade: {self.draft(question)}")


# -- FakeResources: replies -----------------------------------------------------------


async def test_without_a_script_every_alias_answers_alias_of_prompt() -> None:
    fake = FakeResources()
    request = ask("hi")
    response = await fake.complete("anything", request)
    assert (response.content, response.model) == ("anything(hi)", "anything")
    assert request.model == "anything"  # as the real manager fills in the model
    fake.check_aliases(["a", "b"])  # no aliases given: any is accepted


async def test_a_mapping_scripts_each_alias_and_a_sequence_plays_in_order() -> None:
    fake = FakeResources({"fast": "Paris", "judge": ["SCORE: 3", "SCORE: 9"]})
    assert (await fake.complete("fast", ask("a"))).content == "Paris"
    assert (await fake.complete("fast", ask("b"))).content == "Paris"
    assert (await fake.complete("judge", ask("c"))).content == "SCORE: 3"
    assert (await fake.complete("judge", ask("d"))).content == "SCORE: 9"
    with pytest.raises(PermanentError, match="'judge' has used all 2 of its scripted replies"):
        await fake.complete("judge", ask("e"))
    assert fake.calls[-1].outcome == "PermanentError"


async def test_a_handler_may_be_sync_or_async() -> None:
    def shout(request: ChatRequest) -> str:
        return prompt_of(request).upper()

    async def later(request: ChatRequest) -> str:
        await asyncio.sleep(0)
        return f"later {prompt_of(request)}"

    assert (await FakeResources(shout).complete("fast", ask("hi"))).content == "HI"
    fake = FakeResources({"fast": shout, "slow": later})
    assert (await fake.complete("slow", ask("hi"))).content == "later hi"
    assert (await fake.complete("fast", ask("yo"))).content == "YO"


async def test_a_scripted_fault_is_raised_and_recorded() -> None:
    fault = TransientError("503 from upstream")
    fake = FakeResources({"fast": [fault, "fine"]})
    with pytest.raises(TransientError) as raised:
        await fake.complete("fast", ask("x"))
    assert raised.value is fault
    assert (await fake.complete("fast", ask("x"), attempt=1)).content == "fine"
    assert [(call.attempt, call.outcome) for call in fake.calls] == [
        (0, "TransientError"),
        (1, "ok"),
    ]


async def test_a_handler_raising_is_a_fault_too() -> None:
    def refuse(request: ChatRequest) -> str:
        raise PermanentError("400 bad request", status_code=400)

    fake = FakeResources(refuse)
    with pytest.raises(PermanentError, match="400"):
        await fake.complete("fast", ask("x"))
    assert fake.calls[0].outcome == "PermanentError"
    assert fake.in_flight == 0


async def test_the_class_example_retries_the_judge_through_the_engine() -> None:
    fake = FakeResources({"fast": "Paris", "judge": [TransientError("503"), "SCORE: 9"]})
    module = Answer().bind(resources=fake, task_retry_delay=0.01)
    assert await asyncio.wait_for(module("Capital of France?"), GUARD) == "SCORE: 9"
    assert fake.prompts("judge") == ["Grade: Paris", "Grade: Paris"]
    assert [call.outcome for call in fake.calls] == ["ok", "TransientError", "ok"]
    assert [call.attempt for call in fake.calls] == [0, 0, 1]


async def test_script_by_prompt_comes_before_the_alias_replies() -> None:
    fake = FakeResources()
    fake.script("q1", PermanentError("refused"), "special")
    with pytest.raises(PermanentError):
        await fake.complete("fast", ask("q1"))
    assert (await fake.complete("fast", ask("q1"))).content == "special"
    assert (await fake.complete("fast", ask("q1"))).content == "fast(q1)"
    assert (await fake.complete("fast", ask("q2"))).content == "fast(q2)"
    assert len(fake.calls_for("q1")) == 3


async def test_replies_can_be_replaced_between_phases() -> None:
    fake = FakeResources({"fast": "before"})
    assert (await fake.complete("fast", ask("x"))).content == "before"
    fake.replies = lambda request: "after"
    assert (await fake.complete("fast", ask("x"))).content == "after"
    with pytest.raises(UnknownAliasError):  # the aliases stay those of the first script
        await fake.complete("other", ask("x"))


async def test_structured_calls_get_the_model_from_text_or_an_instance() -> None:
    fake = FakeResources({"judge": '{"score": 7}', "strict": Verdict(score=3)})
    from_text = await fake.complete("judge", ask("x", response_format=Verdict))
    assert from_text.parsed == Verdict(score=7)
    from_model = await fake.complete("strict", ask("x", response_format=Verdict))
    assert from_model.parsed == Verdict(score=3)
    assert from_model.content == '{"score":3}'
    module = LLMInference("judge", response_format=Verdict).bind(resources=fake)
    assert await asyncio.wait_for(module("x"), GUARD) == Verdict(score=7)


async def test_text_that_does_not_fit_the_response_format_fails_like_a_real_client() -> None:
    fake = FakeResources({"judge": "Sure! Score: 7"})
    with pytest.raises(ResponseValidationError, match="Verdict"):
        await fake.complete("judge", ask("x", response_format=Verdict))


async def test_a_whole_chat_response_is_returned_as_it_is() -> None:
    reply = ChatResponse("hello", "gpt-x", "stop", input_tokens=3, output_tokens=4)
    fake = FakeResources({"fast": reply})
    assert await fake.complete("fast", ask("x")) is reply


# -- FakeResources: aliases and the protocol ------------------------------------------


def test_it_is_a_resource_manager_the_engine_accepts() -> None:
    fake = FakeResources()
    assert isinstance(fake, ResourceManagerLike)
    assert as_resource_manager(fake) is fake


async def test_unknown_aliases_fail_with_the_real_managers_message() -> None:
    fake = FakeResources({"fast": "a", "slow": "b"})
    real = ResourceManager({"fast": {"model": "m"}, "slow": {"model": "n"}})
    with pytest.raises(UnknownAliasError) as from_fake:
        fake.check_aliases(["fast", "fsat", "judge", "fsat"])
    with pytest.raises(UnknownAliasError) as from_real:
        real.check_aliases(["fast", "fsat", "judge", "fsat"])
    assert str(from_fake.value) == str(from_real.value)
    assert "'fsat' -> 'fast'" in str(from_fake.value)
    assert fake.checked == [("fast", "fsat", "judge", "fsat")]
    with pytest.raises(UnknownAliasError, match="unknown alias 'nope'"):
        await fake.complete("nope", ask("x"))
    assert fake.call_count == 0


def test_retry_limits_per_alias() -> None:
    fake = FakeResources(aliases=["fast", "strict"], retry_limits={"strict": 0})
    assert fake.retry_limit("fast") is None
    assert fake.retry_limit("strict") == 0
    with pytest.raises(UnknownAliasError):
        fake.retry_limit("nope")


async def test_an_unknown_alias_fails_a_run_before_any_call() -> None:
    fake = FakeResources(aliases=["fast"])
    with pytest.raises(UnknownAliasError, match="'judge'"):
        await asyncio.wait_for(Answer().bind(resources=fake)("x"), GUARD)
    assert fake.call_count == 0


# -- FakeResources: latency, concurrency, records -------------------------------------


async def test_the_peak_counts_calls_that_really_overlap() -> None:
    fake = FakeResources(latency=0.02)
    for _ in range(3):
        await fake.complete("fast", ask("one at a time"))
    assert fake.peak == 1
    await asyncio.wait_for(
        asyncio.gather(*(fake.complete("fast", ask(f"q{i}")) for i in range(5))), GUARD
    )
    assert fake.peak == 5
    assert fake.in_flight == 0
    # Every call of the burst started before the first of them ended.
    burst = fake.calls[3:]
    first_end = min(call.end_seq for call in burst if call.end_seq is not None)
    assert all(call.start_seq < first_end for call in burst)


async def test_the_peak_is_kept_per_alias_too() -> None:
    fake = FakeResources(latency=0.02)
    calls = [fake.complete("a", ask(f"a{i}")) for i in range(3)]
    calls += [fake.complete("b", ask(f"b{i}")) for i in range(2)]
    await asyncio.wait_for(asyncio.gather(*calls), GUARD)
    assert fake.alias_peak == {"a": 3, "b": 2}
    assert fake.alias_in_flight == {"a": 0, "b": 0}
    assert fake.peak == 5


async def test_the_engines_concurrency_cap_shows_in_the_peak() -> None:
    fake = FakeResources(latency=0.01)
    module = LLMInference("fast").bind(resources=fake, max_concurrent=2)
    outputs = await asyncio.wait_for(module([f"q{i}" for i in range(8)]), GUARD)
    assert outputs == [f"fast(q{i})" for i in range(8)]
    assert fake.peak == 2


async def test_latency_may_depend_on_the_request() -> None:
    fake = FakeResources(latency=lambda request: 0.05 if prompt_of(request) == "slow" else 0.0)
    await asyncio.wait_for(
        asyncio.gather(fake.complete("fast", ask("slow")), fake.complete("fast", ask("quick"))),
        GUARD,
    )
    slow, quick = fake.calls
    assert slow.end is not None
    assert quick.end is not None
    assert slow.end - slow.start >= 0.04
    assert quick.end_seq is not None
    assert slow.end_seq is not None
    assert quick.end_seq < slow.end_seq


async def test_a_gate_holds_calls_until_the_test_opens_it() -> None:
    fake = FakeResources()
    gate = fake.gate("first")
    held = asyncio.create_task(fake.complete("fast", ask("first")))
    await fake.complete("fast", ask("second"))
    await asyncio.sleep(0)
    assert not held.done()
    assert fake.in_flight == 1
    gate.set()
    assert (await asyncio.wait_for(held, GUARD)).content == "fast(first)"
    assert [call.prompt for call in sorted(fake.calls, key=lambda c: c.end_seq or 0)] == [
        "second",
        "first",
    ]


async def test_a_cancelled_call_is_recorded_and_released() -> None:
    fake = FakeResources(latency=10.0)
    task = asyncio.create_task(fake.complete("fast", ask("x")))
    await asyncio.sleep(0.01)
    assert fake.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [call.outcome for call in fake.calls] == ["cancelled"]
    assert fake.in_flight == 0
    assert fake.alias_in_flight == {"fast": 0}


async def test_calls_keep_the_request_its_prompt_and_system_message() -> None:
    fake = FakeResources()
    request = ask("hello", system="Be brief.")
    await fake.complete("fast", request)
    await fake.complete("other", ask("bye"))
    first, second = fake.calls
    assert (first.alias, first.request, first.prompt, first.system) == (
        "fast",
        request,
        "hello",
        "Be brief.",
    )
    assert second.system is None
    assert fake.prompts() == ["hello", "bye"]
    assert fake.prompts("other") == ["bye"]


async def test_without_recording_calls_are_only_counted() -> None:
    fake = FakeResources(record=False)
    await asyncio.gather(*(fake.complete("fast", ask(f"q{i}")) for i in range(4)))
    assert fake.call_count == 4
    assert fake.calls == []
    assert fake.peak >= 1


# -- MockClient ----------------------------------------------------------------------------


def ok(request: ChatRequest) -> ChatResponse:
    return ChatResponse("ok", request.model, input_tokens=7, output_tokens=3)


async def test_a_mock_client_is_an_llm_client_with_sync_or_async_handlers() -> None:
    async def later(request: ChatRequest) -> str:
        await asyncio.sleep(0)
        return f"later {prompt_of(request)}"

    sync_client = MockClient(lambda request: prompt_of(request)[::-1])
    async_client = MockClient(later)
    assert isinstance(sync_client, LLMClient)
    assert (await sync_client.complete(ask("abc", model="m"))).content == "cba"
    response = await async_client.complete(ask("abc", model="m"))
    assert (response.content, response.model, response.finish_reason) == ("later abc", "m", "stop")
    assert async_client.prompts() == ["abc"]


async def test_a_real_manager_over_a_mock_client_holds_max_concurrent() -> None:
    client = MockClient(ok, latency=0.01)
    manager = ResourceManager(
        {"fast": {"model": "m", "max_concurrent": 2}}, client_factory=client.factory
    )
    hello = [{"role": "user", "content": "hello"}]
    await asyncio.wait_for(
        asyncio.gather(*(manager.complete("fast", ChatRequest(hello)) for _ in range(10))), GUARD
    )
    assert client.peak == 2  # reached, never exceeded
    assert len(client.requests) == 10
    usage = manager.usage()["fast"]
    assert (usage.successes, usage.input_tokens, usage.output_tokens) == (10, 70, 30)
    assert [endpoint.model for endpoint in client.endpoints] == ["m"]
    await manager.aclose()
    assert client.closed == 1


async def test_a_real_manager_over_a_mock_client_under_the_engine() -> None:
    client = MockClient(ok, latency=0.005)
    manager = ResourceManager(
        {"fast": {"model": "m", "max_concurrent": 3}}, client_factory=client.factory
    )
    module = LLMInference("fast").bind(resources=manager, max_concurrent=20)
    outputs = await asyncio.wait_for(module([f"q{i}" for i in range(15)]), GUARD)
    assert outputs == ["ok"] * 15
    assert client.peak == 3
    assert sorted(client.prompts()) == sorted(f"q{i}" for i in range(15))


async def test_mock_client_faults_reach_the_manager_as_endpoint_errors() -> None:
    limited = RateLimitError("429", retry_after=0.0)

    def handler(request: ChatRequest) -> Any:
        if request.model == "refuses":
            raise PermanentError("400", status_code=400)
        if request.model == "limited":
            return limited  # a returned exception is raised too
        return ok(request)

    client = MockClient(handler)
    manager = ResourceManager(
        {"a": {"model": "refuses"}, "b": {"model": "limited"}, "c": {"model": "fine"}},
        client_factory=client.factory,
    )
    with pytest.raises(PermanentError):
        await manager.complete("a", ask("x"))
    with pytest.raises(RateLimitError) as raised:
        await manager.complete("b", ask("x"))
    assert raised.value is limited
    assert (await manager.complete("c", ask("x"))).content == "ok"
    usage = manager.usage()
    assert (usage["a"].failures, usage["b"].rate_limited, usage["c"].successes) == (1, 1, 1)
    assert client.in_flight == 0


async def test_mock_client_text_is_validated_into_the_response_format() -> None:
    client = MockClient(lambda request: '{"score": 4}')
    response = await client.complete(ask("x", model="m", response_format=Verdict))
    assert response.parsed == Verdict(score=4)
    bad = MockClient(lambda request: "four")
    with pytest.raises(ResponseValidationError, match="Verdict"):
        await bad.complete(ask("x", model="m", response_format=Verdict))
