"""The response cache: its key, its store, and how runs and endpoints use it."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from plait import ExecutionSettings, LLMInference
from plait.clients.base import ChatRequest, ChatResponse, RawToolCall
from plait.errors import ConfigError
from plait.storage.cache import ResponseCache, default_cache_path, open_cache, request_key
from plait.testing import FakeResources, MockClient
from support.llm import OUTPUT_TOKENS, SECRET, EchoLLM, echo_llm, manager

GUARD = 30.0


class Answer(BaseModel):
    text: str


class Other(BaseModel):
    text: str
    score: int


def base_request() -> ChatRequest:
    return ChatRequest(
        messages=[{"role": "user", "content": "hi"}],
        model="m",
        temperature=0.5,
        max_tokens=10,
        options={"seed": 1},
    )


async def bounded(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, GUARD)


# -- the key ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other-model"},
        {"messages": [{"role": "user", "content": "hello"}]},
        {"temperature": 0.7},
        {"max_tokens": 11},
        {"response_format": Answer},
        {"options": {"seed": 2}},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"tool_choice": "required"},
    ],
)
def test_every_part_of_the_request_is_in_the_key(change: dict[str, Any]) -> None:
    assert request_key(replace(base_request(), **change)) != request_key(base_request())


def test_the_key_is_stable_and_ignores_option_order() -> None:
    one = replace(base_request(), options={"seed": 1, "top_p": 0.5})
    two = replace(base_request(), options={"top_p": 0.5, "seed": 1})
    assert request_key(one) == request_key(two)
    assert request_key(replace(base_request(), response_format=Answer)) != request_key(
        replace(base_request(), response_format=Other)
    )


# -- the store --------------------------------------------------------------------------


def test_a_reply_round_trips_through_disk(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    request = base_request()
    assert cache.get(request) is None
    reply = ChatResponse("hello", "m-0613", "stop", input_tokens=3, output_tokens=4)
    cache.put(request, reply)
    assert cache.get(request) == reply  # from memory until committed
    cache.flush()
    assert cache._store._pending == {}  # committed rows are read from disk, not kept
    assert cache.get(request) == reply
    cache.close()
    reopened = ResponseCache(tmp_path)
    assert reopened.get(request) == reply
    assert len(reopened) == 1
    reopened.clear()
    assert reopened.get(request) is None
    reopened.close()


def test_a_reply_with_tool_calls_is_not_cached(tmp_path: Path) -> None:
    """The store keeps text replies only: a tool-call turn served from it would lose
    its calls, so it is left to the checkpoint's replay instead."""
    cache = ResponseCache(tmp_path)
    request = base_request()
    call = RawToolCall("call_1", "lookup", '{"q": "x"}', {"q": "x"})
    cache.put(request, ChatResponse("", "m", "tool_calls", tool_calls=[call]))
    cache.flush()
    assert cache.get(request) is None
    assert len(cache) == 0
    cache.close()


def test_structured_replies_are_validated_again_on_a_hit(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "replies.sqlite")
    request = replace(base_request(), response_format=Answer)
    cache.put(request, ChatResponse('{"text": "x"}', "m"))
    hit = cache.get(request)
    assert hit is not None
    assert hit.parsed == Answer(text="x")
    # A stored reply that no longer validates is a miss, not an error.
    cache.put(request, ChatResponse('{"wrong": 1}', "m"))
    assert cache.get(request) is None
    cache.close()
    assert (tmp_path / "replies.sqlite").exists()


def test_threads_and_two_handles_on_one_file_share_it_safely(tmp_path: Path) -> None:
    first, second = ResponseCache(tmp_path), ResponseCache(tmp_path)
    errors: list[BaseException] = []

    def work(cache: ResponseCache) -> None:
        try:
            for index in range(200):
                request = replace(
                    base_request(), messages=[{"role": "user", "content": str(index)}]
                )
                cache.put(request, ChatResponse(f"r{index}", "m"))
                found = cache.get(request)
                assert found is not None
                assert found.content == f"r{index}"
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(cache,)) for cache in [first, second] * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD)
    assert errors == []
    first.flush()
    second.flush()
    assert len(first) == 200
    first.close()
    second.close()


def test_open_cache_follows_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAIT_CACHE_DIR", str(tmp_path / "default"))
    assert open_cache(None) is None
    assert open_cache(False) is None
    assert default_cache_path() == tmp_path / "default"
    default = open_cache(True)
    assert default is not None
    assert default.path == (tmp_path / "default" / "responses.sqlite").resolve()
    named = open_cache(tmp_path / "mine")
    assert named is open_cache(str(tmp_path / "mine"))
    own = ResponseCache(tmp_path / "own")
    assert open_cache(own) is own
    for cache in (default, named, own):
        assert cache is not None
        cache.close()


def test_a_bad_cache_setting_is_rejected() -> None:
    with pytest.raises(ConfigError, match="cache"):
        ExecutionSettings(cache=42)


# -- in runs ----------------------------------------------------------------------------


async def test_a_second_run_with_the_cache_makes_no_requests(tmp_path: Path) -> None:
    fake = echo_llm()
    resources = manager(fake)
    module = LLMInference("fast", temperature=0.0).bind(resources=resources, cache=tmp_path)
    prompts = [f"p{index}" for index in range(10)]
    first = await bounded(module(prompts))
    assert len(fake.requests) == 10
    second = await bounded(module(prompts))
    assert second == first
    assert len(fake.requests) == 10
    usage = resources.usage()["fast"]
    assert (usage.requests, usage.cache_hits) == (10, 10)
    # Hits add no tokens: only the ten real replies are counted.
    assert usage.output_tokens == 10 * OUTPUT_TOKENS


async def test_a_cache_shared_by_another_process_is_read_from_disk(tmp_path: Path) -> None:
    fake = echo_llm()
    module = LLMInference("fast").bind(resources=manager(fake), cache=tmp_path)
    await bounded(module(["a", "b"]))
    shared = open_cache(tmp_path)
    assert shared is not None
    shared.flush()  # what exiting the interpreter does
    # A separate handle (as another process would have) sees the committed rows.
    other = ResponseCache(tmp_path / "responses.sqlite")
    request = ChatRequest(messages=[{"role": "user", "content": "a"}], model="fake-model")
    request.temperature = 1.0
    hit = other.get(request)
    assert hit is not None
    assert hit.content == "ECHO: a"
    other.close()


async def test_an_endpoint_can_opt_in_or_out_of_caching(tmp_path: Path) -> None:
    fake = echo_llm()
    never = manager(fake, cache=False)
    module = LLMInference("fast").bind(resources=never, cache=tmp_path / "run")
    await bounded(module(["a"]))
    await bounded(module(["a"]))
    assert len(fake.requests) == 2
    always = manager(fake, cache=str(tmp_path / "endpoint"))
    plain = LLMInference("fast").bind(resources=always)
    await bounded(plain(["b"]))
    await bounded(plain(["b"]))
    assert len(fake.requests) == 3
    assert always.usage()["fast"].cache_hits == 1


async def test_failed_calls_are_not_cached(tmp_path: Path) -> None:
    llm = EchoLLM()
    fake = MockClient(llm)
    llm.fail_prompts.add("bad")
    module = LLMInference("fast").bind(resources=manager(fake), cache=tmp_path)
    with pytest.raises(Exception, match="refused"):
        await bounded(module("bad"))
    llm.fail_prompts.clear()
    assert await bounded(module("bad")) == "ECHO: bad"
    assert len(fake.requests) == 2


async def test_the_cache_file_holds_no_secret(tmp_path: Path) -> None:
    fake = echo_llm()
    await bounded(LLMInference("fast").bind(resources=manager(fake), cache=tmp_path)(["x"]))
    assert_no_secret_in(tmp_path)


def assert_no_secret_in(directory: Path) -> None:
    files = list(directory.iterdir())
    assert files
    for path in files:
        assert SECRET.encode() not in path.read_bytes()


async def test_the_cache_needs_a_resource_manager(tmp_path: Path) -> None:
    module = LLMInference("fast").bind(resources=FakeResources(), cache=tmp_path)
    with pytest.raises(ConfigError, match="ResourceManager"):
        await bounded(module("x"))


# -- repeated samples -------------------------------------------------------------------


class Sampler:
    """A model that never answers the same way twice: reply n is ``sample n``."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, request: ChatRequest) -> ChatResponse:
        self.count += 1
        return ChatResponse(content=f"sample {self.count}", model=request.model)


@pytest.mark.parametrize(
    ("settings", "samples"),
    [
        ({"temperature": 0.7}, 3),
        ({"temperature": None}, 3),
        ({"temperature": 0.0}, 1),
        ({"temperature": 0.7, "seed": 7}, 1),
    ],
)
async def test_repeated_samples_are_cached_apart_unless_the_request_is_deterministic(
    tmp_path: Path, settings: dict[str, Any], samples: int
) -> None:
    """Three identical requests in one run at temperature > 0 are three samples,
    and a rerun gets the same three back from the cache, not one of them thrice;
    at temperature 0 or with a seed they are one request's answer."""
    sampler = Sampler()
    module = LLMInference("fast", **settings).bind(
        resources=manager(MockClient(sampler)), cache=tmp_path, max_concurrent=1
    )
    first = await bounded(module(["same"] * 3))
    second = await bounded(module(["same"] * 3))
    counted = ResponseCache(tmp_path)
    try:
        assert len(counted) == samples
    finally:
        counted.close()
    if samples > 1:
        assert len(set(first)) == 3
        assert sorted(second) == sorted(first)
        assert sampler.count == 3
    else:
        assert len(set(second)) == 1


async def test_concurrent_twins_are_stored_as_separate_samples(tmp_path: Path) -> None:
    """Three identical calls in flight at once all miss; each reply is its own sample."""
    sampler = Sampler()
    module = LLMInference("fast", temperature=0.7).bind(
        resources=manager(MockClient(sampler, latency=0.02)), cache=tmp_path, max_concurrent=3
    )
    first = await bounded(module(["same"] * 3))
    second = await bounded(module(["same"] * 3))
    assert sorted(second) == sorted(first)
    assert len(set(first)) == 3
    assert sampler.count == 3


@pytest.mark.parametrize("where", ["run", "endpoint", "endpoint, with a run cache elsewhere"])
@pytest.mark.parametrize(("temperature", "samples"), [(0.7, 3), (0.0, 1)])
async def test_an_endpoint_cache_numbers_repeated_samples_like_a_run_cache(
    tmp_path: Path, where: str, temperature: float, samples: int
) -> None:
    """The sample numbering of DESIGN 12 is one mechanism, whichever setting names
    the cache: an endpoint's own ``cache`` keeps three samples at temperature 0.7
    apart and serves the same three to a rerun, as a run's ``cache=`` does."""
    sampler = Sampler()
    cache_dir = tmp_path / "replies"
    if where == "run":
        resources = manager(MockClient(sampler))
        settings: dict[str, Any] = {"cache": cache_dir}
    else:
        resources = manager(MockClient(sampler), cache=str(cache_dir))
        settings = {"cache": tmp_path / "elsewhere"} if "elsewhere" in where else {}
    module = LLMInference("fast", temperature=temperature).bind(
        resources=resources, max_concurrent=1, **settings
    )
    first = await bounded(module(["same"] * 3))
    second = await bounded(module(["same"] * 3))
    stored = ResponseCache(cache_dir)
    try:
        assert len(stored) == samples
    finally:
        stored.close()
    assert sampler.count == samples
    assert len(set(first)) == samples
    assert sorted(second) == sorted(first)
