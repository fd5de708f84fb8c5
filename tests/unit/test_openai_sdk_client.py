"""OpenAIClient over a respx-mocked httpx transport: the wire it writes and the errors it raises."""

from __future__ import annotations

import json
import traceback
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx
from pydantic import BaseModel

from plait.clients import ChatRequest, LLMClient, OpenAIClient
from plait.errors import PermanentError, RateLimitError, ResponseValidationError, TransientError

BASE_URL = "http://llm.test/v1"
KEY = "sk-test-very-secret"
MESSAGES = [{"role": "user", "content": "hi"}]


class Verdict(BaseModel):
    label: str
    confidence: float


def completion(content: str | None = "hello") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "served-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
    }


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE_URL, assert_all_called=False) as router:
        yield router


@pytest.fixture
async def client() -> AsyncIterator[OpenAIClient]:
    async with httpx.AsyncClient() as http:
        yield OpenAIClient(BASE_URL, KEY, timeout=5.0, http_client=http)


def sent_body(route: respx.Route) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(route.calls.last.request.content)
    return body


async def test_success_reads_the_reply(mock: respx.MockRouter, client: OpenAIClient) -> None:
    route = mock.post("/chat/completions").respond(200, json=completion())
    response = await client.complete(ChatRequest(messages=MESSAGES, model="m"))
    assert response.content == "hello"
    assert response.model == "served-model"
    assert response.finish_reason == "stop"
    assert (response.input_tokens, response.output_tokens) == (11, 4)
    assert response.parsed is None
    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert sent_body(route) == {"model": "m", "messages": MESSAGES}


async def test_null_content_and_missing_usage(mock: respx.MockRouter, client: OpenAIClient) -> None:
    reply = completion("")
    del reply["usage"]
    route = mock.post("/chat/completions").respond(200, json=reply)
    response = await client.complete(ChatRequest(messages=MESSAGES, model="m"))
    assert response.content == ""
    assert (response.input_tokens, response.output_tokens) == (0, 0)
    route.respond(200, json=completion(None))
    with pytest.raises(TransientError, match="content is null and it has no tool calls"):
        await client.complete(ChatRequest(messages=MESSAGES, model="m"))


async def test_request_fields_and_options_reach_the_wire(
    mock: respx.MockRouter, client: OpenAIClient
) -> None:
    route = mock.post("/chat/completions").respond(200, json=completion())
    request = ChatRequest(
        messages=MESSAGES,
        model="m",
        temperature=0.2,
        max_tokens=64,
        options={"top_p": 0.5, "seed": 7, "stop": ["END"]},
    )
    await client.complete(request)
    body = sent_body(route)
    assert body["temperature"] == 0.2
    assert body["max_tokens"] == 64
    assert (body["top_p"], body["seed"], body["stop"]) == (0.5, 7, ["END"])


async def test_no_key_sends_no_authorization(mock: respx.MockRouter) -> None:
    route = mock.post("/chat/completions").respond(200, json=completion())
    async with httpx.AsyncClient() as http:
        client = OpenAIClient(BASE_URL, headers={"X-Team": "search"}, http_client=http)
        await client.complete(ChatRequest(messages=MESSAGES, model="m"))
    request = route.calls.last.request
    assert "authorization" not in request.headers
    assert request.headers["x-team"] == "search"


async def test_429_carries_retry_after_ms(mock: respx.MockRouter, client: OpenAIClient) -> None:
    mock.post("/chat/completions").respond(
        429,
        headers={"retry-after-ms": "250", "retry-after": "3"},
        json={"error": {"message": "Rate limit reached", "type": "requests"}},
    )
    with pytest.raises(RateLimitError) as caught:
        await client.complete(ChatRequest(messages=MESSAGES, model="m"))
    assert caught.value.retry_after == pytest.approx(0.25)
    assert "Rate limit reached" in str(caught.value)


async def test_429_falls_back_to_retry_after(mock: respx.MockRouter, client: OpenAIClient) -> None:
    mock.post("/chat/completions").respond(429, headers={"retry-after": "3"}, json={})
    with pytest.raises(RateLimitError) as caught:
        await client.complete(ChatRequest(messages=MESSAGES, model="m"))
    assert caught.value.retry_after == 3.0


async def test_503_is_transient_and_not_retried_by_the_sdk(
    mock: respx.MockRouter, client: OpenAIClient
) -> None:
    route = mock.post("/chat/completions").respond(503, json={"error": {"message": "overloaded"}})
    with pytest.raises(TransientError, match="HTTP 503: overloaded") as caught:
        await client.complete(ChatRequest(messages=MESSAGES, model="m"))
    assert not isinstance(caught.value, RateLimitError)
    assert route.call_count == 1, "the SDK must not retry; plait's scheduler does"


async def test_400_is_permanent(mock: respx.MockRouter, client: OpenAIClient) -> None:
    mock.post("/chat/completions").respond(
        400, json={"error": {"message": "max_tokens is too large"}}
    )
    with pytest.raises(PermanentError, match="HTTP 400: max_tokens is too large") as caught:
        await client.complete(ChatRequest(messages=MESSAGES, model="m"))
    assert caught.value.status_code == 400


async def test_connection_failure_is_transient(
    mock: respx.MockRouter, client: OpenAIClient
) -> None:
    mock.post("/chat/completions").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(TransientError, match="refused"):
        await client.complete(ChatRequest(messages=MESSAGES, model="m"))


async def test_timeout_is_transient(mock: respx.MockRouter, client: OpenAIClient) -> None:
    mock.post("/chat/completions").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(TransientError):
        await client.complete(ChatRequest(messages=MESSAGES, model="m"))


async def test_reply_without_choices_is_transient(
    mock: respx.MockRouter, client: OpenAIClient
) -> None:
    mock.post("/chat/completions").respond(200, json={"id": "x", "model": "m", "choices": []})
    with pytest.raises(TransientError, match="malformed reply"):
        await client.complete(ChatRequest(messages=MESSAGES, model="m"))


async def test_non_json_reply_is_transient(mock: respx.MockRouter, client: OpenAIClient) -> None:
    mock.post("/chat/completions").respond(
        200, content=b'{"choices": [{', headers={"content-type": "application/json"}
    )
    with pytest.raises(TransientError, match="malformed reply"):
        await client.complete(ChatRequest(messages=MESSAGES, model="m"))


async def test_structured_output_is_sent_and_parsed(
    mock: respx.MockRouter, client: OpenAIClient
) -> None:
    route = mock.post("/chat/completions").respond(
        200, json=completion('{"label": "spam", "confidence": 0.9}')
    )
    response = await client.complete(
        ChatRequest(messages=MESSAGES, model="m", response_format=Verdict)
    )
    assert response.parsed == Verdict(label="spam", confidence=0.9)
    response_format = sent_body(route)["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "Verdict"


async def test_structured_output_that_does_not_validate(
    mock: respx.MockRouter, client: OpenAIClient
) -> None:
    mock.post("/chat/completions").respond(200, json=completion('{"label": "spam"}'))
    with pytest.raises(ResponseValidationError, match="Verdict: confidence: Field required"):
        await client.complete(ChatRequest(messages=MESSAGES, model="m", response_format=Verdict))


async def test_key_stays_out_of_repr_and_errors(
    mock: respx.MockRouter, client: OpenAIClient
) -> None:
    assert KEY not in repr(client)
    assert "***" in repr(client)
    mock.post("/chat/completions").respond(
        401, json={"error": {"message": f"Incorrect API key provided: {KEY}"}}
    )
    with pytest.raises(PermanentError) as caught:
        await client.complete(ChatRequest(messages=MESSAGES, model="m"))
    assert KEY not in str(caught.value)
    assert KEY not in repr(caught.value)
    assert KEY not in "".join(traceback.format_exception(caught.value))
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


async def test_satisfies_the_client_protocol(client: OpenAIClient) -> None:
    assert isinstance(client, LLMClient)


async def test_aclose_leaves_an_injected_http_client_open() -> None:
    async with httpx.AsyncClient() as http:
        client = OpenAIClient(BASE_URL, KEY, http_client=http)
        await client.aclose()
        assert not http.is_closed
