"""Every request option as a per-call override, traced and in dynamic code, on the wire.

The simulator echoes the request body back as the reply (``reply=json.dumps``),
so each test reads what the server received, through both clients.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest

from plait import LLMInference, Module
from plait.clients.options import KNOWN_OPTIONS
from plait.errors import ConfigError
from plait.testing import Simulator

Client = Literal["lean", "openai"]
CLIENTS: list[Client] = ["lean", "openai"]

VALUES: dict[str, Any] = {
    "temperature": 0.25,
    "max_tokens": 7,
    "max_completion_tokens": 9,
    "stop": ["Z"],
    "seed": 3,
    "top_p": 0.5,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.2,
    "logit_bias": {"50256": -100},
    "logprobs": True,
    "top_logprobs": 2,
    "user": "u1",
    "parallel_tool_calls": False,
    "reasoning_effort": "low",
    "service_tier": "auto",
    "metadata": {"k": "v"},
    "top_k": 5,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
}
"""A value for every option plait knows except ``n`` and ``tool_choice`` (tested apart)."""


def test_every_known_option_has_a_value_here() -> None:
    assert set(VALUES) == KNOWN_OPTIONS - {"n", "tool_choice"}


def resources(sim: Simulator, client: Client) -> dict[str, Any]:
    return {"llm": {"model": "m", "base_url": sim.base_url, "client": client}}


class Dynamic(Module):
    def __init__(self, **overrides: Any) -> None:
        super().__init__()
        self.llm = LLMInference("llm", temperature=0.9)
        self.overrides = overrides

    async def forward(self, text: str) -> dict[str, Any]:
        first = json.loads(await self.llm(text, **self.overrides))
        plain = json.loads(await self.llm(text))
        return {"first": first, "plain": plain}


class Traced(Module):
    def __init__(self, **overrides: Any) -> None:
        super().__init__()
        self.llm = LLMInference("llm", temperature=0.9)
        self.overrides = overrides

    def forward(self, text: str) -> Any:
        return self.llm(text, **self.overrides)


@pytest.mark.parametrize("client", CLIENTS)
async def test_every_option_reaches_the_wire_from_dynamic_code(client: Client) -> None:
    async with Simulator(reply=json.dumps) as sim:
        seen = await Dynamic(**VALUES).bind(resources=resources(sim, client))("hi")

    assert {name: seen["first"].get(name) for name in VALUES} == VALUES
    # The next call of the same module goes back to the module's own settings.
    assert seen["plain"]["temperature"] == 0.9
    assert not set(VALUES) - {"temperature"} & set(seen["plain"])


@pytest.mark.parametrize("client", CLIENTS)
async def test_every_option_reaches_the_wire_from_a_traced_pipeline(client: Client) -> None:
    async with Simulator(reply=json.dumps) as sim:
        seen = json.loads(await Traced(**VALUES).bind(resources=resources(sim, client))("hi"))

    assert {name: seen.get(name) for name in VALUES} == VALUES


async def test_overrides_differ_per_input_of_a_batch_and_per_call_of_a_loop() -> None:
    class Sweep(Module):
        def __init__(self) -> None:
            super().__init__()
            self.llm = LLMInference("llm")

        async def forward(self, text: str) -> list[float]:
            temperatures = []
            for step in range(3):
                body = json.loads(await self.llm(text, temperature=step / 10, seed=step))
                temperatures.append((body["temperature"], body["seed"]))
            return temperatures

    async with Simulator(reply=json.dumps) as sim:
        llm = LLMInference("llm").bind(resources=resources(sim, "lean"))
        batch = await llm.batch(
            [{"prompt": "a", "temperature": 0}, {"prompt": "b", "stop": ["x"]}, ("c",)]
        )
        swept = await Sweep().bind(resources=resources(sim, "lean"))("go")

    first, second, third = (json.loads(text) for text in batch)
    assert (first["temperature"], "stop" in first) == (0, False)
    assert (second["temperature"], second["stop"]) == (1.0, ["x"])
    assert (third["temperature"], "stop" in third) == (1.0, False)
    assert swept == [(0.0, 0), (0.1, 1), (0.2, 2)]


async def test_tool_choice_is_a_per_call_option() -> None:
    def lookup(key: str) -> str:
        """Look a key up."""
        return key

    async with Simulator(reply=json.dumps) as sim:
        llm = LLMInference("llm", tools=[lookup], tool_choice="auto", run_tools=False)
        llm.bind(resources=resources(sim, "lean"))
        forced = json.loads((await llm("hi", tool_choice="none")).content)
        default = json.loads((await llm("hi")).content)

    assert (forced["tool_choice"], default["tool_choice"]) == ("none", "auto")


async def test_n_above_one_in_dynamic_code_fails_that_input_before_any_request() -> None:
    async with Simulator(reply=json.dumps) as sim:
        module = Dynamic(n=2).bind(resources=resources(sim, "lean"))
        with pytest.raises(ConfigError, match=r"'n'=2 is not supported.*several calls"):
            await module("hi")
        with pytest.raises(ConfigError, match=r"'n'=2 is not supported"):
            await Traced(n=2).bind(resources=resources(sim, "lean"))("hi")
        with pytest.raises(ConfigError, match=r"'response_format'.*on the LLMInference"):
            await Dynamic(response_format={"type": "json_object"}).bind(
                resources=resources(sim, "lean")
            )("hi")
        assert sim.stats().requests == 0
