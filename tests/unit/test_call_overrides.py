"""Per-call request options: ``self.llm(prompt, temperature=0, ...)``."""

from __future__ import annotations

from typing import Any

import pytest

from plait import LLMInference, Module
from plait.errors import ConfigError
from plait.storage.cache import request_key
from plait.storage.fingerprint import describe
from plait.testing import FakeResources
from plait.tracing import Tracer


class Pipeline(Module):
    def __init__(self, **overrides: Any) -> None:
        super().__init__()
        self.llm = LLMInference("fast", temperature=0.7, top_p=0.9)
        self.overrides = overrides

    def forward(self, text: str) -> Any:
        return self.llm(text, **self.overrides)


async def test_overrides_at_trace_time_shape_the_request() -> None:
    fake = FakeResources()
    module = Pipeline(temperature=0, max_tokens=50, stop=["\n"], seed=3).bind(resources=fake)
    await module("hi")
    (call,) = fake.calls
    assert call.request.temperature == 0
    assert call.request.max_tokens == 50
    assert call.request.options == {"top_p": 0.9, "stop": ["\n"], "seed": 3}


async def test_overrides_on_a_direct_call() -> None:
    fake = FakeResources()
    llm = LLMInference("fast").bind(resources=fake)
    await llm("hi", temperature=0.2, top_p=0.5)
    await llm("hi")
    first, second = fake.calls
    assert (first.request.temperature, first.request.options) == (0.2, {"top_p": 0.5})
    assert (second.request.temperature, second.request.options) == (1.0, {})


def test_forward_takes_overrides() -> None:
    llm = LLMInference("fast", max_tokens=10)
    request = llm.forward("hi", max_tokens=20, tool_choice="none", temperature=None)
    assert request.max_tokens == 20
    assert request.temperature is None
    assert request.tool_choice == "none"


def test_overrides_change_the_cache_key_and_the_fingerprint() -> None:
    llm = LLMInference("fast")
    assert request_key(llm.forward("hi")) != request_key(llm.forward("hi", seed=1))
    cold = describe(Tracer().trace(Pipeline(temperature=0), "x"))
    warm = describe(Tracer().trace(Pipeline(temperature=1), "x"))
    assert cold != warm


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"temprature": 0},
            r"unexpected keyword argument 'temprature' for LLMInference\('fast'\).*"
            r"did you mean 'temperature'",
        ),
        ({"n": 2}, r"'n'.*one reply per call"),
        ({"stop": object()}, r"'stop'.*JSON"),
        ({"temperature": "hot"}, r"'temperature'.*number"),
        ({"max_tokens": 0}, r"'max_tokens'.*positive int"),
        ({"model": "gpt-4o"}, r"'model'.*alias"),
        ({"messages": []}, r"'messages'"),
    ],
)
def test_bad_overrides_fail_while_tracing(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Tracer().trace(Pipeline(**overrides), "x")


def test_n_of_one_is_accepted() -> None:
    assert LLMInference("fast").forward("hi", n=1).options == {}


def test_constructor_refuses_n_above_one() -> None:
    with pytest.raises(ConfigError, match=r"'n'.*one reply per call"):
        LLMInference("fast", n=3)
