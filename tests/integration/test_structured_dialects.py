"""Structured output in each server's dialect, over real HTTP to the simulator.

The simulator plays the server: ``any`` admits every form, ``llama_cpp``
refuses ``json_schema`` the way llama-cpp-python's server does (a 500 carrying
its request-validation message) and ``text_only`` refuses every
``response_format`` with a 400. Requests are counted where they arrive, at the
server. Every endpoint gets a model name of its own, because what ``auto``
learns is remembered per endpoint for the whole test process.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from plait import LLMInference, Module
from plait.clients.dialects import schema_instruction
from plait.errors import ResponseValidationError, StructuredOutputRejectedError
from plait.resources import ResourceManager
from plait.testing import Simulator

CLIENTS = ["lean", "openai"]


class Sentiment(BaseModel):
    sentiment: Literal["positive", "negative"]


class Classify(Module):
    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference(
            "fast", system_prompt="You label reviews.", response_format=Sentiment
        )

    def forward(self, review: str) -> Any:
        return self.llm(f"Review: {review}")


class Bodies:
    """Records the body of every request the simulator admits (its ``fault`` hook)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def __call__(self, seq: int, body: dict[str, Any]) -> None:
        self.seen.append(body)

    def formats(self) -> list[str]:
        return [(body.get("response_format") or {}).get("type", "prompt") for body in self.seen]


def endpoint(sim: Simulator, client: str = "lean", **fields: Any) -> dict[str, Any]:
    model = f"dialect-{uuid.uuid4().hex[:12]}"
    return {"model": model, "base_url": sim.base_url, "api_key": None, "client": client, **fields}


@asynccontextmanager
async def managed(entry: dict[str, Any]) -> AsyncIterator[ResourceManager]:
    manager = ResourceManager({"fast": entry})
    try:
        yield manager
    finally:
        await manager.aclose()


async def classify(manager: ResourceManager, reviews: list[str]) -> list[Any]:
    result: list[Any] = await Classify().bind(resources=manager)(reviews)
    return result


async def classify_one(manager: ResourceManager, review: str) -> Any:
    return await Classify().bind(resources=manager)(review)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    ("dialect", "server"),
    [("json_schema", "any"), ("json_object", "llama_cpp"), ("prompt", "text_only")],
)
async def test_each_dialect_is_sent_in_its_form_and_the_reply_validates(
    client: str, dialect: str, server: Any
) -> None:
    bodies = Bodies()
    async with Simulator(structured_dialect=server, fault=bodies) as sim:
        async with managed(endpoint(sim, client, structured_output=dialect)) as manager:
            answers = await classify(manager, ["great", "awful"])
        stats = sim.stats()
    assert answers == [Sentiment(sentiment="positive")] * 2
    assert stats.requests == 2
    assert stats.refused_formats == 0
    schema = Sentiment.model_json_schema()
    schema["additionalProperties"] = False
    body = bodies.seen[0]
    if dialect == "json_schema":
        spec = body["response_format"]["json_schema"]
        assert spec["schema"] == schema
        assert spec["strict"] is True
    elif dialect == "json_object":
        assert body["response_format"] == {"type": "json_object", "schema": schema}
    else:
        assert "response_format" not in body
        # Joined to the module's system prompt: one system message, first.
        system = [m for m in body["messages"] if m["role"] == "system"]
        assert len(system) == 1
        assert body["messages"][0] is not None
        assert system[0]["content"].startswith("You label reviews.\n\n")
        assert json.dumps(schema) in system[0]["content"]
        assert body["messages"][-1] == {"role": "user", "content": "Review: great"}


@pytest.mark.parametrize("client", CLIENTS)
async def test_auto_falls_back_once_then_goes_straight_to_the_learnt_dialect(
    client: str,
) -> None:
    bodies = Bodies()
    async with Simulator(structured_dialect="llama_cpp", fault=bodies) as sim:
        async with managed(endpoint(sim, client)) as manager:
            first = await classify(manager, ["great"])
            after_first = sim.stats().requests
            second = await classify(manager, ["awful"])
            usage = manager.usage()["fast"]
        stats = sim.stats()
    assert first == second == [Sentiment(sentiment="positive")]
    assert after_first == 2  # the refused json_schema request, then json_object
    assert stats.requests == 3  # the second call sent json_object at once
    assert stats.refused_formats == 1
    assert bodies.formats() == ["json_object", "json_object"]
    # One call each, both successes: the refusal was not a failed attempt or a retry.
    assert (usage.requests, usage.successes, usage.failures, usage.retries) == (2, 2, 0, 0)


async def test_auto_reaches_the_prompt_dialect_on_a_server_without_constrained_decoding() -> None:
    bodies = Bodies()
    async with Simulator(structured_dialect="text_only", fault=bodies) as sim:
        async with managed(endpoint(sim)) as manager:
            first = await classify(manager, ["great"])
            second = await classify(manager, ["awful", "fine"])
        stats = sim.stats()
    assert first + second == [Sentiment(sentiment="positive")] * 3
    assert stats.refused_formats == 2  # json_schema, then json_object, once each
    assert stats.requests == 5
    assert bodies.formats() == ["prompt"] * 3


async def test_the_learnt_dialect_outlives_the_manager_that_learnt_it() -> None:
    async with Simulator(structured_dialect="llama_cpp") as sim:
        entry = endpoint(sim)
        async with managed(entry) as manager:
            await classify(manager, ["great"])
        async with managed(dict(entry)) as another:
            answers = await classify(another, ["awful"])
        stats = sim.stats()
    assert answers == [Sentiment(sentiment="positive")]
    assert (stats.requests, stats.refused_formats) == (3, 1)


async def test_concurrent_first_calls_learn_the_dialect_with_one_refusal_per_form() -> None:
    bodies = Bodies()
    async with Simulator(structured_dialect="text_only", latency=0.01, fault=bodies) as sim:
        async with managed(endpoint(sim, max_concurrent=8)) as manager:
            first = await classify(manager, [f"review {i}" for i in range(8)])
            after_first = sim.stats()
            second = await classify(manager, [f"review {i}" for i in range(8, 16)])
        stats = sim.stats()
    assert first + second == [Sentiment(sentiment="positive")] * 16
    # While the dialect is unknown one call tries it and the other seven wait
    # for its outcome, so json_schema and json_object are each refused once.
    assert (after_first.refused_formats, after_first.requests) == (2, 10)
    assert (stats.refused_formats, stats.requests) == (2, 18)
    assert bodies.formats() == ["prompt"] * 16
    assert stats.peak_concurrency > 1  # once learnt, the calls ran side by side again


async def test_a_trial_that_fails_transiently_hands_the_trial_on_without_another_refusal() -> None:
    bodies = Bodies()
    failed: list[int] = []

    def fail_first_json_object(seq: int, body: dict[str, Any]) -> str | None:
        bodies(seq, body)
        if not failed and body.get("response_format", {}).get("type") == "json_object":
            failed.append(seq)
            return "503"
        return None

    async with Simulator(
        structured_dialect="llama_cpp", latency=0.01, fault=fail_first_json_object
    ) as sim:
        async with managed(endpoint(sim, max_concurrent=4)) as manager:
            answers = await classify(manager, [f"review {i}" for i in range(4)])
            usage = manager.usage()["fast"]
        stats = sim.stats()
    assert answers == [Sentiment(sentiment="positive")] * 4
    assert failed  # the first json_object request did fail
    assert stats.refused_formats == 1
    assert stats.requests == 1 + 1 + 4  # the refusal, the 503, four answers
    assert usage.retries == 1  # the 503 was retried; the refusal was not a retry


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_fixed_dialect_the_server_refuses_fails_at_once_naming_the_setting(
    client: str,
) -> None:
    async with Simulator(structured_dialect="llama_cpp") as sim:
        async with managed(endpoint(sim, client, structured_output="json_schema")) as manager:
            with pytest.raises(StructuredOutputRejectedError) as caught:
                await classify_one(manager, "great")
        stats = sim.stats()
    # llama-cpp-python answers with a 500, which alone would be retried; the
    # refusal is recognised, so the call is not sent again.
    assert stats.requests == 1
    message = str(caught.value)
    assert "'json_schema'" in message
    assert "structured_output" in message
    assert "json_object" in message
    assert caught.value.status_code == 500


async def test_the_fallback_spends_no_retry_and_no_second_rate_permit() -> None:
    # One request per 10 seconds and no retries at all: a fallback that were a
    # retry would fail, and one that took a second permit would wait 10 s.
    async with Simulator(structured_dialect="llama_cpp") as sim:
        entry = endpoint(sim, rate_limit=6, max_retries=0)
        async with managed(entry) as manager:
            answers = await classify(manager, ["great"])
            wait = manager.limiter("fast").expected_wait()
        stats = sim.stats()
    assert answers == [Sentiment(sentiment="positive")]
    assert (stats.requests, stats.refused_formats) == (2, 1)
    assert wait <= 10.5  # one permit spent; a second would make it about 20 s


async def test_a_prompt_dialect_reply_that_does_not_validate_is_not_cached(
    tmp_path: Path,
) -> None:
    replies = iter(["I think it is positive.", 'Sure:\n```json\n{"sentiment": "negative"}\n```'])

    def reply(body: dict[str, Any]) -> str:
        assert schema_instruction(Sentiment) in body["messages"][0]["content"]
        return next(replies)

    cache = str(tmp_path / "replies.sqlite")
    async with Simulator(reply=reply) as sim:
        async with managed(endpoint(sim, structured_output="prompt", cache=cache)) as manager:
            with pytest.raises(ResponseValidationError, match="not valid JSON for Sentiment"):
                await classify_one(manager, "meh")
            answered = await classify_one(manager, "meh")
            cached = await classify_one(manager, "meh")
        stats = sim.stats()
    assert answered == cached == Sentiment(sentiment="negative")
    assert stats.requests == 2  # the invalid reply was asked again; the valid one was kept
