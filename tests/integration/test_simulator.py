"""The simulator over real loopback HTTP, in all three hosting modes."""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import threading
import time
from typing import Any, Literal

import aiohttp
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel

from plait.testing import Simulator, SimulatorStats
from plait.testing._cli import build_parser, config_to_argv, options_from_args
from plait.testing._config import SimulatorConfig

USER_HELLO = [{"role": "user", "content": "hello"}]


async def chat(
    session: aiohttp.ClientSession, sim: Simulator, **body: Any
) -> tuple[int, dict[str, str], bytes]:
    """POST a chat request; return status, headers and the raw body."""
    body.setdefault("model", "sim-model")
    body.setdefault("messages", USER_HELLO)
    async with session.post(f"{sim.base_url}/chat/completions", json=body) as response:
        return response.status, dict(response.headers), await response.read()


def content_of(raw: bytes) -> str:
    content = json.loads(raw)["choices"][0]["message"]["content"]
    assert isinstance(content, str)
    return content


async def wait_for(predicate: Any, limit: float = 2.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def port_refuses(base_url: str) -> bool:
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_default_reply_echoes_last_user_message_in_openai_shape() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
    ]
    async with Simulator() as sim, aiohttp.ClientSession() as session:
        status, headers, raw = await chat(session, sim, model="gpt-x", messages=messages)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    reply = json.loads(raw)
    assert reply["object"] == "chat.completion"
    assert reply["id"].startswith("chatcmpl-")
    assert isinstance(reply["created"], int)
    assert reply["model"] == "gpt-x"
    choice = reply["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "ECHO: second"}
    assert choice["finish_reason"] == "stop"


async def test_rules_search_all_messages_and_first_match_wins() -> None:
    rules = [(r"capital of \w+", "Paris"), (r"be \w+", "system matched"), ("capital", "late")]
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "the capital of France?"},
    ]
    async with Simulator(rules=rules) as sim, aiohttp.ClientSession() as session:
        _, _, first = await chat(session, sim, messages=messages)
        _, _, second = await chat(session, sim, messages=[messages[0]])
        _, _, unmatched = await chat(session, sim)
    assert content_of(first) == "Paris"
    assert content_of(second) == "system matched"
    assert content_of(unmatched) == "ECHO: hello"


class Answer(BaseModel):
    text: str
    score: int


async def test_reply_callable_gets_the_body_and_may_return_str_dict_or_model() -> None:
    seen: list[dict[str, Any]] = []

    def reply(body: dict[str, Any]) -> str | dict[str, Any] | BaseModel:
        seen.append(body)
        kind = body["messages"][-1]["content"]
        if kind == "dict":
            return {"a": 1}
        if kind == "model":
            return Answer(text="t", score=3)
        return f"plain for {body['model']}"

    async with (
        Simulator(reply=reply, rules=[(".", "rule")]) as sim,
        aiohttp.ClientSession() as session,
    ):
        _, _, plain = await chat(session, sim, model="m1", temperature=0.3)
        _, _, as_dict = await chat(session, sim, messages=[{"role": "user", "content": "dict"}])
        _, _, as_model = await chat(session, sim, messages=[{"role": "user", "content": "model"}])
    assert content_of(plain) == "plain for m1"
    assert json.loads(content_of(as_dict)) == {"a": 1}
    assert Answer.model_validate_json(content_of(as_model)) == Answer(text="t", score=3)
    assert seen[0]["temperature"] == 0.3


async def test_reply_callable_errors_become_500_with_the_reason() -> None:
    def reply(body: dict[str, Any]) -> str:
        raise RuntimeError("script broke")

    async with Simulator(reply=reply) as sim, aiohttp.ClientSession() as session:
        status, _, raw = await chat(session, sim)
        stats = sim.stats()
    assert status == 500
    assert "script broke" in json.loads(raw)["error"]["message"]
    assert stats.in_flight == 0
    assert stats.completed == 0


class Inner(BaseModel):
    label: Literal["good", "bad"]
    weight: float
    tags: list[str]


class Report(BaseModel):
    title: str
    count: int
    done: bool
    inner: Inner
    maybe: Inner | None
    items: list[Inner]


async def test_json_schema_request_gets_a_minimal_object_that_validates() -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "Report", "schema": Report.model_json_schema(), "strict": True},
    }
    async with Simulator() as sim, aiohttp.ClientSession() as session:
        _, _, raw = await chat(session, sim, response_format=response_format)
    report = Report.model_validate_json(content_of(raw))
    assert report.title == "x"
    assert report.count == 0
    assert report.done is False
    assert report.inner.label == "good"
    assert report.items == []


async def test_json_schema_synthesis_respects_simple_bounds() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 3},
            "n": {"type": "integer", "minimum": 2},
            "m": {"type": "integer", "exclusiveMinimum": 5},
            "f": {"type": "number", "maximum": -1},
            "when": {"type": "string", "format": "date"},
            "list": {"type": "array", "items": {"type": "boolean"}, "minItems": 2},
            "fixed": {"const": "c"},
        },
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    async with Simulator() as sim, aiohttp.ClientSession() as session:
        _, _, raw = await chat(session, sim, response_format=response_format)
    assert json.loads(content_of(raw)) == {
        "name": "xxx",
        "n": 2,
        "m": 6,
        "f": -1,
        "when": "1970-01-01",
        "list": [False, False],
        "fixed": "c",
    }


async def test_usage_counts_a_quarter_of_the_characters_rounded_up() -> None:
    messages = [
        {"role": "system", "content": "abcde"},
        {"role": "user", "content": "fghijklmn"},
    ]
    async with Simulator(rules=[("abc", "123456789")]) as sim:
        async with aiohttp.ClientSession() as session:
            _, _, raw = await chat(session, sim, messages=messages)
            _, _, empty = await chat(session, sim, messages=[{"role": "user", "content": ""}])
        stats = sim.stats()
    usage = json.loads(raw)["usage"]
    assert usage == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert json.loads(empty)["usage"]["prompt_tokens"] == 1
    assert stats.prompt_tokens == 4 + 1
    assert stats.completion_tokens == 3 + math.ceil(len("ECHO: ") / 4)


async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    body = json.dumps({"model": "m", "messages": USER_HELLO}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    async with Simulator() as sim:
        port = int(sim.base_url.rsplit(":", 1)[1].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        replies = []
        # Three sequential requests, then two pipelined in a single write.
        for payload in (request, request, request, request + request):
            writer.write(payload)
            for _ in range(payload.count(b"POST ")):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 OK")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                replies.append(await reader.readexactly(length))
        writer.close()
        await writer.wait_closed()
    assert [content_of(r) for r in replies] == ["ECHO: hello"] * 5


async def test_clients_reuse_their_pooled_connection() -> None:
    created = 0

    async def on_create(*_: Any) -> None:
        nonlocal created
        created += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    connector = aiohttp.TCPConnector(limit=1)
    async with (
        Simulator() as sim,
        aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session,
    ):
        statuses = [(await chat(session, sim))[0] for _ in range(5)]
    assert statuses == [200] * 5
    assert created == 1


async def test_latency_delays_each_reply() -> None:
    async with Simulator(latency=0.1) as sim, aiohttp.ClientSession() as session:
        start = time.monotonic()
        status, _, _ = await chat(session, sim)
        elapsed = time.monotonic() - start
    assert status == 200
    assert elapsed >= 0.1


async def test_log_normal_latency_is_heavy_tailed_and_recorded_per_prompt() -> None:
    """``latency`` is the median of the draws; the first draw per prompt is kept."""
    async with (
        Simulator(latency=0.02, latency_sigma=1.0, record_latencies=True, seed=4) as sim,
        aiohttp.ClientSession() as session,
    ):
        for index in range(60):
            messages = [{"role": "user", "content": f"p{index}"}]
            await asyncio.gather(*(chat(session, sim, messages=messages) for _ in range(2)))
        drawn = sim.stats().latencies
    assert sorted(drawn) == sorted(f"p{index}" for index in range(60))
    ordered = sorted(drawn.values())
    assert 0.01 < ordered[30] < 0.04
    assert ordered[-1] > 4 * ordered[30]  # a tail uniform jitter cannot make


async def test_rate_limit_answers_429_with_both_retry_headers_once_burst_is_spent() -> None:
    async with Simulator(rate_limit=60, rate_window=60, rate_burst=2) as sim:
        async with aiohttp.ClientSession() as session:
            results = [await chat(session, sim) for _ in range(3)]
        stats = sim.stats()
    assert [status for status, _, _ in results] == [200, 200, 429]
    _, headers, raw = results[2]
    wait_ms = int(headers["retry-after-ms"])
    assert 0 < wait_ms <= 1000
    assert headers["Retry-After"] == "1"
    assert json.loads(raw)["error"]["type"] == "rate_limit_exceeded"
    assert (stats.requests, stats.completed, stats.rate_limited) == (3, 2, 1)


async def test_rate_limit_bucket_refills_over_time() -> None:
    async with (
        Simulator(rate_limit=20, rate_window=1, rate_burst=1) as sim,
        aiohttp.ClientSession() as session,
    ):
        assert (await chat(session, sim))[0] == 200
        status, headers, _ = await chat(session, sim)
        assert status == 429
        await asyncio.sleep(int(headers["retry-after-ms"]) / 1000)
        assert (await chat(session, sim))[0] == 200


async def test_sliding_window_admits_the_limit_in_any_window_then_429s_until_one_leaves() -> None:
    """Unlike the bucket, a paced burst of exactly the limit leaves no slack for one more."""
    async with (
        Simulator(rate_limit=5, rate_window=0.5, rate_sliding=True) as sim,
        aiohttp.ClientSession() as session,
    ):
        statuses = [(await chat(session, sim))[0] for _ in range(5)]
        status, headers, _ = await chat(session, sim)
        await asyncio.sleep(int(headers["retry-after-ms"]) / 1000)
        after = (await chat(session, sim))[0]
    assert statuses == [200] * 5
    assert status == 429
    assert after == 200


def force(kind: str) -> Any:
    return lambda seq, body: kind


async def test_fault_reset_drops_the_connection_without_a_reply() -> None:
    async with Simulator(fault=force("reset")) as sim, aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await chat(session, sim)
        stats = sim.stats()
    assert stats.faults == {"reset": 1}
    assert stats.completed == 0


async def test_fault_malformed_is_a_200_whose_body_is_not_json() -> None:
    async with Simulator(fault=force("malformed")) as sim, aiohttp.ClientSession() as session:
        status, _, raw = await chat(session, sim)
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)


async def test_fault_stall_outlasts_the_client_timeout_and_frees_the_slot() -> None:
    timeout = aiohttp.ClientTimeout(total=0.2)
    async with (
        Simulator(fault=force("stall"), stall_seconds=30) as sim,
        aiohttp.ClientSession(timeout=timeout) as session,
    ):
        with pytest.raises(asyncio.TimeoutError):
            await chat(session, sim)
        await wait_for(lambda: sim.stats().in_flight == 0)
        assert sim.stats().faults == {"stall": 1}


async def test_fault_stall_answers_after_stall_seconds() -> None:
    async with (
        Simulator(fault=force("stall"), stall_seconds=0.1) as sim,
        aiohttp.ClientSession() as session,
    ):
        start = time.monotonic()
        status, _, raw = await chat(session, sim)
    assert status == 200
    assert time.monotonic() - start >= 0.1
    assert content_of(raw) == "ECHO: hello"


async def test_fault_503_and_429_use_openai_error_bodies() -> None:
    async with Simulator(fault=lambda seq, body: ("503", "429")[seq]) as sim:
        async with aiohttp.ClientSession() as session:
            unavailable = await chat(session, sim)
            limited = await chat(session, sim)
        stats = sim.stats()
    assert unavailable[0] == 503
    assert json.loads(unavailable[2])["error"]["type"] == "server_error"
    assert limited[0] == 429
    assert limited[1]["retry-after-ms"] == "50"
    assert json.loads(limited[2])["error"]["code"] == "rate_limit_exceeded"
    assert stats.faults == {"503": 1, "429": 1}
    assert stats.rate_limited == 1


async def test_fault_callable_sees_sequence_numbers_and_none_means_no_fault() -> None:
    calls: list[int] = []

    def fault(seq: int, body: dict[str, Any]) -> str | None:
        calls.append(seq)
        return "503" if body["messages"][0]["content"] == "fail" else None

    fail = [{"role": "user", "content": "fail"}]
    async with Simulator(fault=fault) as sim, aiohttp.ClientSession() as session:
        statuses = [(await chat(session, sim, messages=m))[0] for m in (USER_HELLO, fail)]
    assert statuses == [200, 503]
    assert calls == [0, 1]


async def test_fault_rate_is_reproducible_with_a_seed_and_rewinds_on_reset() -> None:
    async def statuses(sim: Simulator, n: int) -> list[int]:
        async with aiohttp.ClientSession() as session:
            return [(await chat(session, sim))[0] for _ in range(n)]

    options: dict[str, Any] = {"fault_rate": 0.5, "faults": ["503", "429"], "seed": 7}
    async with Simulator(**options) as first:
        run_a = await statuses(first, 30)
        first.reset_stats()
        run_b = await statuses(first, 30)
        stats = first.stats()
    async with Simulator(**options) as second:
        run_c = await statuses(second, 30)
    assert set(run_a) == {200, 503, 429}
    assert run_a == run_b == run_c
    assert stats.requests == 30
    assert sum(stats.faults.values()) == run_b.count(503) + run_b.count(429)


async def test_peak_concurrency_counts_simultaneous_requests() -> None:
    async with Simulator(latency=0.2) as sim, aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(chat(session, sim) for _ in range(8)))
        stats = sim.stats()
    assert [status for status, _, _ in results] == [200] * 8
    assert stats.peak_concurrency == 8
    assert stats.in_flight == 0


async def test_stats_count_requests_models_and_times_and_reset_zeroes_them() -> None:
    async with Simulator() as sim, aiohttp.ClientSession() as session:
        before = time.monotonic()
        for model in ("a", "b", "a"):
            await chat(session, sim, model=model)
        await chat(session, sim, fault_marker=True, messages="not a list")
        stats = sim.stats()
        async with session.get(sim.base_url.removesuffix("/v1") + "/_sim/stats") as response:
            over_http = SimulatorStats.from_dict(await response.json())
        sim.reset_stats()
        after_reset = sim.stats()
    assert stats.requests == 4
    assert stats.completed == 3
    assert stats.models == {"a": 2, "b": 1}
    assert stats.first_request_at is not None
    assert stats.last_request_at is not None
    assert before <= stats.first_request_at <= stats.last_request_at
    assert over_http == stats
    assert after_reset == SimulatorStats()


async def test_reset_endpoint_and_models_endpoint() -> None:
    async with Simulator() as sim, aiohttp.ClientSession() as session:
        await chat(session, sim, model="seen-model")
        root = sim.base_url.removesuffix("/v1")
        async with session.post(root + "/_sim/reset") as response:
            assert response.status == 200
        async with session.get(sim.base_url + "/models") as response:
            models = [m["id"] for m in (await response.json())["data"]]
        assert sim.stats().requests == 0
    assert "plait-simulator" in models


async def test_bad_requests_get_openai_error_bodies() -> None:
    async with Simulator() as sim, aiohttp.ClientSession() as session:
        url = f"{sim.base_url}/chat/completions"
        async with session.post(url, data=b"{not json") as response:
            bad_json = response.status, await response.json()
        async with session.post(url, json={"model": "m", "messages": [], "stream": True}) as r:
            streaming = r.status, r.content_type, (await r.read()).endswith(b"data: [DONE]\n\n")
        async with session.get(url) as response:
            wrong_method = response.status
        async with session.get(sim.base_url + "/nowhere") as response:
            missing = response.status, await response.json()
    assert bad_json[0] == 400
    assert bad_json[1]["error"]["type"] == "invalid_request_error"
    assert streaming == (200, "text/event-stream", True)
    assert wrong_method == 405
    assert missing[0] == 404
    assert "/v1/nowhere" in missing[1]["error"]["message"]


async def test_openai_sdk_reads_replies_and_maps_429() -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
    async with Simulator(rate_limit=1, rate_window=60) as sim:
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        try:
            completion = await client.chat.completions.create(model="gpt-x", messages=messages)
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(model="gpt-x", messages=messages)
        finally:
            await client.close()
    assert completion.choices[0].message.content == "ECHO: hello"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 2 + 3


async def test_async_mode_releases_the_port_and_open_connections() -> None:
    sim = Simulator(latency=30)
    async with sim, aiohttp.ClientSession() as session:
        pending = asyncio.ensure_future(chat(session, sim))
        await wait_for(lambda: sim.stats().in_flight == 1)
        base_url = sim.base_url
    with pytest.raises(aiohttp.ClientError):
        await pending
    assert port_refuses(base_url)
    with pytest.raises(RuntimeError, match="not running"):
        _ = sim.base_url


def test_thread_mode_serves_sync_clients_and_joins_its_thread() -> None:
    with Simulator(latency=0.01, rules=[("hello", "hi")]) as sim:
        with httpx.Client(base_url=sim.base_url) as client:
            replies = [
                client.post("/chat/completions", json={"model": "m", "messages": USER_HELLO})
                for _ in range(3)
            ]
        stats = sim.stats()
        sim.reset_stats()
        assert sim.stats().requests == 0
        base_url = sim.base_url
    assert [content_of(r.content) for r in replies] == ["hi"] * 3
    assert stats.completed == 3
    assert not [t for t in threading.enumerate() if t.name.startswith("plait-simulator")]
    assert port_refuses(base_url)


def test_thread_mode_startup_failure_raises_in_the_caller() -> None:
    with Simulator() as first:
        port = int(first.base_url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(OSError, match="in use"), Simulator(port=port):
            pass


def test_spawn_mode_runs_in_another_process_and_stops_it() -> None:
    rules = [("-dash", "dash rule"), ("=", "eq")]
    with Simulator.spawn(latency=0.01, rules=rules, seed=3) as sim:
        pid = sim.pid
        with httpx.Client(base_url=sim.base_url) as client:
            reply = client.post(
                "/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "x -dash"}]},
            )
        stats = sim.stats()
        sim.reset_stats()
        after_reset = sim.stats()
        base_url = sim.base_url
    assert content_of(reply.content) == "dash rule"
    assert (stats.requests, stats.completed, stats.models) == (1, 1, {"m": 1})
    assert after_reset.requests == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the child exited and was reaped
    assert port_refuses(base_url)


def test_spawn_rejects_callables() -> None:
    with pytest.raises(TypeError, match="callables"):
        Simulator.spawn(reply=lambda body: "x")
    with pytest.raises(TypeError, match="fault"):
        Simulator.spawn(fault=lambda seq, body: None)


def test_invalid_settings_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        Simulator(faults=["503", "explode"])
    with pytest.raises(ValueError, match="latency"):
        Simulator(latency=-1)
    with pytest.raises(ValueError, match="regex"):
        Simulator(rules=[("(", "x")])
    with pytest.raises(ValueError, match="latency_sigma and latency_jitter are alternatives"):
        Simulator(latency=0.5, latency_jitter=0.1, latency_sigma=1.0)


def test_cli_flags_round_trip_every_setting() -> None:
    config = SimulatorConfig(
        port=1234,
        latency=0.25,
        latency_jitter=0.01,
        record_latencies=True,
        rate_limit=600,
        rate_window=30,
        rate_burst=5,
        rate_sliding=True,
        fault_rate=0.2,
        faults=("reset", "stall"),
        stall_seconds=2.5,
        retry_after=1.5,
        seed=11,
        rules=[("-x", "y"), ("a=b", "--c")],
        stream_pace=0.125,
        stream_chunk_chars=9,
        structured_dialect="llama_cpp",
    )
    options = options_from_args(build_parser().parse_args(config_to_argv(config)))
    assert SimulatorConfig(**options) == config
    spread = SimulatorConfig(latency=0.5, latency_sigma=0.99)
    options = options_from_args(build_parser().parse_args(config_to_argv(spread)))
    assert SimulatorConfig(**options) == spread
