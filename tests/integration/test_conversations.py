"""A list of chat messages is one conversation (DESIGN 11), over real HTTP.

The simulator records every request body it is sent, so each test checks
what reached the server: one request holding every message for one
conversation, one request per conversation for a batch of them, and nothing
at all for a list whose meaning is ambiguous.
"""

from __future__ import annotations

from typing import Any

import pytest

from plait import LLMInference, Module, run
from plait.errors import ConfigError
from plait.resources import ResourceManager
from plait.testing import Simulator
from plait.tools import AssistantMessage, ToolCall

MODEL = "sim-model"
Bodies = list[dict[str, Any]]

HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
]


def recording(bodies: Bodies) -> Any:
    def reply(body: dict[str, Any]) -> str:
        bodies.append(body)
        return f"reply to {body['messages'][-1]['content']}"

    return reply


def resources(base_url: str) -> ResourceManager:
    return ResourceManager({"fast": {"model": MODEL, "base_url": base_url, "api_key": None}})


def sent(bodies: Bodies) -> list[list[dict[str, Any]]]:
    return [
        [{"role": m["role"], "content": m["content"]} for m in body["messages"]] for body in bodies
    ]


class Chat(Module):
    """A composite (traced) module that hands its conversation to an LLM."""

    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference("fast")
        self.polish = LLMInference("fast")

    def forward(self, messages: Any) -> Any:
        return self.polish(self.llm(messages))


class Agent(Module):
    """A dynamic module: it extends the conversation with the first reply."""

    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference("fast")

    async def forward(self, messages: list[dict[str, Any]]) -> str:
        first = await self.llm(messages)
        follow_up = [*messages, {"role": "assistant", "content": first}]
        follow_up.append({"role": "user", "content": "And why?"})
        return str(await self.llm(follow_up))


async def test_a_list_of_messages_is_one_request_with_every_message() -> None:
    bodies: Bodies = []
    async with Simulator(reply=recording(bodies)) as sim:
        manager = resources(sim.base_url)
        llm = LLMInference("fast").bind(resources=manager)
        answer = await llm(HISTORY)
        through_run = await run(LLMInference("fast"), HISTORY, resources=manager)
        await manager.aclose()
    assert answer == through_run == "reply to Another one?"
    assert sent(bodies) == [HISTORY, HISTORY]


def test_run_sync_sends_a_conversation_as_one_request() -> None:
    bodies: Bodies = []
    with Simulator(reply=recording(bodies)) as sim:
        llm = LLMInference("fast").bind(resources=resources(sim.base_url))
        assert llm.run_sync(HISTORY) == "reply to Another one?"
    assert sent(bodies) == [HISTORY]


async def test_a_list_of_conversations_is_a_batch() -> None:
    bodies: Bodies = []
    other = [{"role": "user", "content": "Hi"}]
    async with Simulator(reply=recording(bodies)) as sim:
        manager = resources(sim.base_url)
        llm = LLMInference("fast").bind(resources=manager)
        answers = await llm([HISTORY, other])
        explicit = await llm.batch([HISTORY, other])
        await manager.aclose()
    assert answers == explicit == ["reply to Another one?", "reply to Hi"]
    assert sorted(map(len, sent(bodies))) == [1, 1, 4, 4]


async def test_a_composite_module_gets_the_conversation_as_one_input() -> None:
    bodies: Bodies = []
    async with Simulator(reply=recording(bodies)) as sim:
        manager = resources(sim.base_url)
        answer = await Chat().bind(resources=manager)(HISTORY)
        await manager.aclose()
    assert answer == "reply to reply to Another one?"
    assert sent(bodies) == [HISTORY, [{"role": "user", "content": "reply to Another one?"}]]


async def test_a_dynamic_module_gets_the_conversation_and_passes_it_on() -> None:
    bodies: Bodies = []
    async with Simulator(reply=recording(bodies)) as sim:
        manager = resources(sim.base_url)
        answer = await Agent().bind(resources=manager)(HISTORY)
        await manager.aclose()
    assert answer == "reply to And why?"
    follow_up = [
        *HISTORY,
        {"role": "assistant", "content": "reply to Another one?"},
        {"role": "user", "content": "And why?"},
    ]
    assert sent(bodies) == [HISTORY, follow_up]


async def test_an_assistant_turn_object_counts_as_a_message() -> None:
    bodies: Bodies = []
    turn = AssistantMessage(content="Blue.")
    async with Simulator(reply=recording(bodies)) as sim:
        manager = resources(sim.base_url)
        llm = LLMInference("fast").bind(resources=manager)
        await llm([HISTORY[1], turn, HISTORY[3]])
        await manager.aclose()
    assert sent(bodies) == [HISTORY[1:]]


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ([HISTORY[1], "and this text"], r"mixes chat messages \(items 0\).*item 1 is a str"),
        ([HISTORY[1], {"content": "no role"}], r"item 1 is a dict without 'role'"),
        ([{"role": "user"}], r"message 0 \(role 'user'\) has no 'content'"),
        ([{"role": "usr", "content": "hi"}], r"message 0 has role 'usr'; chat roles are"),
        ([HISTORY, [HISTORY[1], 7]], r"input 1: a list mixes chat messages.*item 1 is an int"),
        ([HISTORY[1], ToolCall(id="c", name="f")], r"item 1 is a ToolCall"),
    ],
)
async def test_an_ambiguous_list_is_refused_before_any_request(given: Any, says: str) -> None:
    bodies: Bodies = []
    async with Simulator(reply=recording(bodies)) as sim:
        manager = resources(sim.base_url)
        llm = LLMInference("fast").bind(resources=manager)
        with pytest.raises(ConfigError, match=says) as raised:
            await llm(given)
        await manager.aclose()
        assert sim.stats().requests == 0
    assert "LLMInference(...)" in str(raised.value)


async def test_a_lone_message_as_a_batch_element_is_refused() -> None:
    async with Simulator() as sim:
        manager = resources(sim.base_url)
        llm = LLMInference("fast").bind(resources=manager)
        with pytest.raises(ConfigError, match="input 0 of the batch is a single chat message"):
            await llm.batch([HISTORY[1], HISTORY[3]])
        with pytest.raises(ConfigError, match="input 1 of the batch is a single chat message"):
            await llm(iter(["fine", HISTORY[1]]))
        await manager.aclose()
        # The generator's first input may have gone out before the second was read.
        assert sim.stats().requests <= 1


async def test_dicts_that_are_not_messages_stay_a_batch() -> None:
    class Describe(Module):
        def __init__(self) -> None:
            super().__init__()
            self.llm = LLMInference("fast")

        def forward(self, record: Any) -> Any:
            return self.llm(f"{record['name']} is {record['age']}")

    async with Simulator() as sim:
        manager = resources(sim.base_url)
        outputs = await Describe().bind(resources=manager)(
            [{"name": "Ada", "age": 36}, {"name": "Alan", "age": 41}]
        )
        await manager.aclose()
    assert outputs == ["ECHO: Ada is 36", "ECHO: Alan is 41"]


async def test_inside_a_dynamic_forward_an_ambiguous_list_or_an_iterator_is_refused() -> None:
    class Careless(Module):
        def __init__(self, argument: Any) -> None:
            super().__init__()
            self.llm = LLMInference("fast")
            self.argument = argument

        async def forward(self, text: str) -> Any:
            return await self.llm(self.argument)

    async with Simulator() as sim:
        manager = resources(sim.base_url)
        mixed = Careless([HISTORY[1], "and this"]).bind(resources=manager)
        with pytest.raises(
            ConfigError, match=r"LLMInference\(\.\.\.\) in careless.*item 1 is a str"
        ):
            await mixed("x")
        lazy = Careless(m["content"] for m in HISTORY).bind(resources=manager)
        with pytest.raises(ConfigError, match=r"got a generator.*F\.map"):
            await lazy("x")
        await manager.aclose()
        assert sim.stats().requests == 0
