"""The bad-input catalogue: what a user gets wrong, and what plait says back.

DESIGN section 9 lists the mistakes that must get a clear error naming the
problem; the rest are what a new user tries in their first hour. Every case
asserts on the message (or on the correct behaviour where the input is in fact
fine), and every await is bounded, so a case that hangs fails instead.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel

import plait
from plait import (
    ExecutionSettings,
    LLMInference,
    Module,
    ModuleDict,
    ModuleList,
    Parameter,
    Sequential,
)
from plait.errors import (
    BatchError,
    CheckpointError,
    ConfigError,
    ResourcesNotBoundError,
    ResponseValidationError,
    TracingError,
    UnknownAliasError,
)
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import FakeResources, MockClient
from support.modules import Chain
from support.resources import echo_resources

GUARD = 5.0
"""Every await here is bounded by this: a bad input must never hang a run."""

T = TypeVar("T")


async def bounded(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, GUARD)


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


def echo(**settings: Any) -> tuple[LLMInference, FakeResources]:
    resources = echo_resources()
    return LLMInference("fast").bind(resources=resources, **settings), resources


# -- resources the tests can see into ---------------------------------------------


def canned(content: str) -> MockClient:
    """A client that answers every request with ``content``; a MockClient decodes
    text with the same parser the HTTP clients use, so structured replies are
    validated for real."""
    return MockClient(lambda request: content)


def manager_with(client: MockClient) -> ResourceManager:
    """A real ResourceManager for alias ``fast`` whose client is ``client``; no network."""
    config = {"fast": {"model": "m", "base_url": "http://127.0.0.1:9/v1", "api_key": ""}}
    return ResourceManager(config, client_factory=client.factory)


# -- unknown alias -----------------------------------------------------------------


async def test_an_unknown_alias_fails_before_any_request_and_suggests_the_close_one() -> None:
    client = canned("unused")
    manager = manager_with(client)
    module = LLMInference("fsat").bind(resources=manager)

    with pytest.raises(UnknownAliasError) as raised:
        await bounded(module("x"))

    message = str(raised.value)
    assert "'fsat'" in message
    assert "configured aliases: 'fast'" in message
    assert "did you mean 'fsat' -> 'fast'" in message
    assert client.endpoints == []
    assert manager.usage()["fast"].requests == 0


class TwoAliases(Module):
    def __init__(self) -> None:
        super().__init__()
        self.good = LLMInference("fast")
        self.bad = LLMInference("slow")

    def forward(self, text: str) -> Any:
        return self.bad(f"then {self.good(text)}")


async def test_an_unknown_alias_deep_in_a_pipeline_fails_before_the_known_one_is_called() -> None:
    client = canned("unused")
    manager = manager_with(client)

    with pytest.raises(UnknownAliasError, match="'slow'"):
        await bounded(TwoAliases().bind(resources=manager)(["a", "b"]))

    assert client.endpoints == []


# -- invalid configuration ---------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"fast": {"model": "m", "max_concurrent": 0}}, ["alias 'fast'", "'max_concurrent'"]),
        ({"fast": {"model": ""}}, ["alias 'fast'", "'model'"]),
        ({"fast": {"model": "m", "rate_limit": -5}}, ["alias 'fast'", "'rate_limit'"]),
        ({"fast": {"model": "m", "timeout": 0}}, ["alias 'fast'", "'timeout'"]),
        (
            {"fast": {"model": "m", "base_url": "localhost:8000/v1"}},
            ["'base_url'", "must start with http:// or https://"],
        ),
        (
            {"fast": {"model": "m", "max_concurent": 3}},
            ["'max_concurent'", "unknown field", "did you mean 'max_concurrent'"],
        ),
        (
            {"fast": [{"model": "a"}, {"model": "b", "weight": 0}]},
            ["alias 'fast', endpoint 1, field 'weight'"],
        ),
        ({"fast": []}, ["alias 'fast'", "at least one endpoint"]),
        ({"fast": "gpt-4o"}, ["alias 'fast'", "dictionary"]),
        (
            {"fast": {"model": "m", "base_url": "${PLAIT_BAD_INPUT_UNSET}"}},
            ["'base_url'", "PLAIT_BAD_INPUT_UNSET is not set"],
        ),
    ],
)
def test_invalid_config_names_the_alias_and_field(
    config: dict[str, Any], expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PLAIT_BAD_INPUT_UNSET", raising=False)
    with pytest.raises(ConfigError) as raised:
        ResourceConfig(config)
    for fragment in expected:
        assert fragment in str(raised.value)


def test_invalid_config_is_refused_at_bind_time_not_at_the_first_call() -> None:
    with pytest.raises(ConfigError, match="alias 'fast', field 'max_concurrent'"):
        LLMInference("fast").bind(resources={"fast": {"model": "m", "max_concurrent": -1}})


def test_a_config_error_never_shows_the_api_key() -> None:
    secret = "sk-bad-input-do-not-show"
    with pytest.raises(ConfigError) as raised:
        ResourceConfig({"fast": {"model": "m", "api_key": secret, "timeout": -1}})
    assert "'timeout'" in str(raised.value)
    assert secret not in str(raised.value)
    assert secret not in repr(raised.value)


# -- bad configuration files -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("bad.yaml", "fast:\n  model: m\n  max_concurrent: [1, 2\n", ["line 4", "invalid YAML"]),
        ("tabs.yml", "fast:\n\tmodel: m\n", ["line 2", "invalid YAML"]),
        ("list.yaml", "- model: m\n", ["top level must be a mapping"]),
        ("empty.yaml", "", ["top level must be a mapping"]),
        (
            "value.yaml",
            "endpoints:\n  fast:\n    model: m\n    timeout: -2\n",
            ["alias 'fast', field 'timeout'"],
        ),
        ("bad.json", '{"fast": {"model": "m",}}', ["line 1", "invalid JSON"]),
        ("bad.toml", "[fast\nmodel = 'm'\n", ["invalid TOML"]),
        ("config.ini", "[fast]\nmodel = m\n", ["unsupported config file type"]),
    ],
)
def test_a_bad_config_file_is_named_with_what_is_wrong(
    tmp_path: Path, name: str, text: str, expected: list[str]
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        ResourceConfig.from_file(path)
    message = str(raised.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


def test_a_missing_config_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        ResourceConfig.from_file(tmp_path / "nowhere.yaml")


# -- data-dependent control flow while tracing --------------------------------------


def truth_test(out: Any) -> Any:
    return "yes" if out else "no"


def length(out: Any) -> Any:
    return len(out)


def equality(out: Any) -> Any:
    return out == "done"


def iteration(out: Any) -> Any:
    return [part for part in out]


def membership(out: Any) -> Any:
    return "error" in out


def string_method(out: Any) -> Any:
    return out.strip()


def to_int(out: Any) -> Any:
    return int(out)


def slicing(out: Any) -> Any:
    return out[:10]


def ordering(out: Any) -> Any:
    return sorted([out, "b"])


class Inspects(Module):
    """Calls an LLM, then does ``use`` to its traced output inside forward."""

    def __init__(self, use: Callable[[Any], Any]) -> None:
        super().__init__()
        self.use = use
        self.llm = LLMInference("fast")
        self.after = LLMInference("fast")

    def forward(self, text: str) -> Any:
        return self.after(f"{self.use(self.llm(text))}")


@pytest.mark.parametrize(
    ("use", "what"),
    [
        (truth_test, "A truth test"),
        (length, "len()"),
        (equality, "Comparing with =="),
        (iteration, "Iterating"),
        (membership, "An 'in' test"),
        (string_method, "Calling .strip()"),
        (to_int, "int()"),
        (slicing, "Slicing"),
        (ordering, "Comparing with"),
    ],
)
async def test_data_dependent_control_flow_is_a_tracing_error_that_says_what_to_do(
    use: Callable[[Any], Any], what: str
) -> None:
    resources = echo_resources()
    with pytest.raises(TracingError) as raised:
        await bounded(Inspects(use).bind(resources=resources)("x"))
    message = str(raised.value)
    assert what in message
    assert "'llm'" in message
    assert "make forward `async def` to run it on real values" in message
    assert resources.calls == []


def test_plait_trace_raises_the_same_tracing_error_without_running_anything() -> None:
    with pytest.raises(TracingError, match="A truth test"):
        plait.trace(Inspects(truth_test), "x")


# -- structured replies that do not validate ----------------------------------------


class Ticket(BaseModel):
    title: str
    priority: int


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("Sure! Here is your ticket.", "reply is not valid JSON for Ticket"),
        ('{"title": "x"}', "reply does not validate against Ticket: priority: Field required"),
        (
            '{"title": "x", "priority": "high"}',
            "reply does not validate against Ticket: priority:",
        ),
    ],
)
async def test_a_structured_reply_that_does_not_validate_fails_at_once_naming_the_model(
    content: str, expected: str
) -> None:
    client = canned(content)
    module = LLMInference("fast", response_format=Ticket).bind(
        resources=manager_with(client), max_task_retries=5
    )

    with pytest.raises(ResponseValidationError) as raised:
        await bounded(module("file a ticket"))

    assert expected in str(raised.value)
    assert len(client.requests) == 1, "a reply that does not validate is not retried"


async def test_a_structured_reply_failure_in_a_batch_names_the_input() -> None:
    module = LLMInference("fast", response_format=Ticket).bind(
        resources=manager_with(canned("not json"))
    )
    with pytest.raises(BatchError) as raised:
        await bounded(module(["a", "b"]))
    assert raised.value.failed_indices == [0, 1]
    assert "ResponseValidationError" in str(raised.value)
    assert "Ticket" in str(raised.value)


async def test_a_structured_reply_that_validates_is_the_model_instance() -> None:
    client = canned('{"title": "fix login", "priority": 2}')
    module = LLMInference("fast", response_format=Ticket).bind(resources=manager_with(client))
    assert await bounded(module("x")) == Ticket(title="fix login", priority=2)


# -- a value checkpointing cannot store ----------------------------------------------


class Opaque(Module):
    """A leaf that returns something JSON cannot hold."""

    def forward(self, text: str) -> object:
        return object()


class KeepsOpaque(Module):
    def __init__(self) -> None:
        super().__init__()
        self.opaque = Opaque()
        self.llm = LLMInference("fast")

    def forward(self, text: str) -> Any:
        return self.llm(text), self.opaque(text)


async def test_a_value_that_cannot_be_checkpointed_names_the_node(tmp_path: Path) -> None:
    module = KeepsOpaque().bind(resources=echo_resources(), checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError) as raised:
        await bounded(module("x"))
    assert "node 'opaque'" in str(raised.value)
    assert "cannot be checkpointed" in str(raised.value)


# -- a non-Module where a Module belongs --------------------------------------------


@pytest.mark.parametrize(
    ("place", "given", "expected"),
    [
        (Sequential, 42, "Sequential holds Modules, got int"),
        (Sequential, [LLMInference("a")], "Sequential holds Modules, got list"),
        (lambda v: ModuleList([LLMInference("a"), v]), "b", "ModuleList holds Modules, got str"),
        (lambda v: ModuleList().append(v), 3, "ModuleList holds Modules, got int"),
        (lambda v: ModuleDict({"a": v}), 1, "ModuleDict holds Modules, got int"),
        (lambda v: ModuleDict({v: LLMInference("a")}), 1, "ModuleDict keys must be str, got int"),
        (lambda v: Module().register_module("x", v), 42, "needs a Module, got int"),
        (ModuleList, LLMInference("a"), "is not iterable"),
    ],
)
def test_a_non_module_in_a_container_is_a_type_error_naming_what_was_given(
    place: Callable[[Any], Any], given: Any, expected: str
) -> None:
    with pytest.raises(TypeError, match=expected):
        place(given)


def test_a_module_class_instead_of_an_instance_is_refused() -> None:
    with pytest.raises(TypeError, match="got type"):
        Sequential(LLMInference)  # type: ignore[arg-type]


def test_plait_run_with_a_non_module_names_the_problem() -> None:
    with pytest.raises(TypeError, match=r"(?i)module instance.*\bint\b"):
        plait.run(42, "x", resources=echo_resources())  # type: ignore[arg-type]


@pytest.mark.parametrize("target", [42, LLMInference], ids=["int", "class"])
def test_plait_trace_with_a_non_module_names_the_problem(target: Any) -> None:
    with pytest.raises(TypeError, match=r"(?i)module instance"):
        plait.trace(target, "x")


# -- bind() -------------------------------------------------------------------------


@pytest.mark.parametrize("resources", [42, "fast", ["fast"]])
def test_bind_rejects_resources_of_the_wrong_type(resources: Any) -> None:
    expected = f"resources must be a ResourceConfig.*got {type(resources).__name__}"
    with pytest.raises(ConfigError, match=expected):
        LLMInference("fast").bind(resources=resources)


def test_bind_rejects_a_bad_setting_value_naming_it() -> None:
    expected = r"LLMInference.bind\(\): max_concurrent must be a positive int, got 'x'"
    with pytest.raises(ConfigError, match=expected):
        LLMInference("fast").bind(max_concurrent="x")


def test_bind_rejects_an_unknown_setting_and_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as raised:
        LLMInference("fast").bind(max_concurrency=3)
    assert "unknown setting(s) ['max_concurrency']" in str(raised.value)
    assert "'max_concurrent'" in str(raised.value)


def test_bind_refuses_resources_passed_as_a_setting() -> None:
    with pytest.raises(ConfigError):
        LLMInference("fast").bind(**{"resources": echo_resources(), "streaming": "no"})


async def test_an_unbound_llm_call_says_how_to_bind_resources() -> None:
    with pytest.raises(ResourcesNotBoundError, match=r"no resources are bound.*bind\(resources="):
        await bounded(LLMInference("fast")("x"))


# -- async forward ------------------------------------------------------------------


class AsyncComposite(Module):
    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference("fast")

    async def forward(self, text: str) -> Any:
        return self.llm(text)


async def test_an_async_forward_on_a_composite_module_runs_as_a_dynamic_module() -> None:
    # Once refused with a TracingError; DESIGN 10 makes it a dynamic module. Its
    # forward returns the child's call without awaiting it, which plait awaits.
    resources = echo_resources()
    assert await bounded(AsyncComposite().bind(resources=resources)("x")) == "[fast] x"
    assert len(resources.calls) == 1


class Shout(Module):
    """A leaf whose forward is a coroutine: it runs at execution, on real text."""

    async def forward(self, text: str) -> str:
        await asyncio.sleep(0)
        return text.upper()


class ShoutThenAsk(Module):
    def __init__(self) -> None:
        super().__init__()
        self.shout = Shout()
        self.llm = LLMInference("fast")

    def forward(self, text: str) -> Any:
        return self.llm(f"say {self.shout(text)}")


async def test_an_async_forward_on_a_leaf_module_is_awaited() -> None:
    resources = echo_resources()
    assert await bounded(ShoutThenAsk().bind(resources=resources)(["hi", "yo"])) == [
        "[fast] say HI",
        "[fast] say YO",
    ]
    assert await bounded(Shout().bind(resources=resources)("direct")) == "DIRECT"


# -- shapes of input ----------------------------------------------------------------


async def test_an_empty_batch_returns_an_empty_list_in_every_form() -> None:
    llm, resources = echo()
    assert await bounded(llm([])) == []
    assert await bounded(llm.batch([])) == []
    assert await bounded(collect(aiter(llm.batch([], streaming=True)))) == []
    assert await bounded(plait.run(llm, [], resources=resources)) == []
    assert resources.calls == []


class SeesInput(Module):
    def forward(self, value: Any) -> Any:
        return value is None


class NoneAware(Module):
    def __init__(self) -> None:
        super().__init__()
        self.check = SeesInput()
        self.llm = LLMInference("fast")

    def forward(self, value: Any) -> Any:
        return self.check(value), self.llm(f"Q: {value}")


async def test_none_inputs_flow_as_python_would_render_them() -> None:
    llm, _ = echo()
    assert await bounded(llm(None)) == "[fast] None"
    outputs = await bounded(NoneAware().bind(resources=echo_resources())([None, "a", None]))
    assert outputs == [(True, "[fast] Q: None"), (False, "[fast] Q: a"), (True, "[fast] Q: None")]


async def test_a_one_megabyte_prompt_goes_through_unchanged() -> None:
    huge = "".join(chr(ord("a") + i % 26) for i in range(1 << 20))
    resources = echo_resources()
    chain = Chain().bind(resources=resources)
    output = await bounded(chain(huge))
    assert output == f"[fast] then:[fast] {huge}"
    assert resources.prompts() == [huge, f"then:[fast] {huge}"]


async def test_a_list_of_texts_as_a_prompt_gets_a_clear_error() -> None:
    class TwoTexts(Module):
        def __init__(self) -> None:
            super().__init__()
            self.llm = LLMInference("fast")

        def forward(self, text: str) -> Any:
            return self.llm([text, "and more"])

    with pytest.raises((TypeError, ValueError), match=r"(?i)chat message"):
        await bounded(TwoTexts().bind(resources=echo_resources())("hi"))


async def test_calling_with_the_wrong_arguments_names_forward_and_sends_nothing() -> None:
    llm, resources = echo()
    with pytest.raises(TypeError, match=r"LLMInference.forward\(\)"):
        await bounded(llm("a", "b"))
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'text'"):
        await bounded(llm(text="a"))
    assert resources.calls == []


def test_a_module_without_forward_says_so() -> None:
    with pytest.raises(TypeError, match="Module must define forward"):
        Module()("x")


def test_batch_of_something_that_is_not_a_collection_is_refused() -> None:
    llm, _ = echo()
    for bad in (None, 42, "abc", {"a": 1}):
        with pytest.raises(TypeError, match="batch\\(\\) needs a list or \\(async\\) iterable"):
            llm.batch(bad)


# -- one module, many runs ----------------------------------------------------------


async def test_one_module_in_concurrent_runs_gives_each_run_its_own_results() -> None:
    fake = FakeResources(latency=0.005)
    chain = Chain().bind(resources=fake, max_concurrent=8)
    left = [f"L{i}" for i in range(20)]
    right = [f"R{i}" for i in range(20)]

    got_left, got_right = await bounded(asyncio.gather(chain(left), chain(right)))

    assert got_left == [f"fast(then:fast({x}))" for x in left]
    assert got_right == [f"fast(then:fast({x}))" for x in right]
    starts = {call.prompt: call.start_seq for call in fake.calls}
    ends = {call.prompt: call.end_seq for call in fake.calls}
    assert min(starts[x] for x in right) < max(ends[x] or 0 for x in left), "runs overlapped"


async def test_a_call_can_become_a_task() -> None:
    llm, _ = echo()
    task = asyncio.create_task(llm("x"))
    assert await bounded(task) == "[fast] x"


def test_asyncio_run_accepts_a_call() -> None:
    llm, _ = echo()
    assert asyncio.run(llm("x")) == "[fast] x"


# -- forgetting super().__init__() --------------------------------------------------


def test_assigning_before_super_init_says_to_call_it() -> None:
    class Early(Module):
        def __init__(self) -> None:
            self.llm = LLMInference("fast")
            super().__init__()

    with pytest.raises(AttributeError, match=r"call super\(\).__init__\(\) first"):
        Early()


async def test_using_a_module_that_never_called_super_init_says_to_call_it() -> None:
    class Forgot(Module):
        def __init__(self) -> None:
            """Sets nothing up and never calls Module.__init__, so nothing fails yet."""

        def forward(self, text: str) -> str:
            return text

    module = Forgot()
    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        module("x")
    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        await bounded(module.bind(resources=echo_resources())("x"))
    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        list(module.parameters())


# -- Parameter and state ------------------------------------------------------------


@pytest.mark.parametrize("description", [None, "", "   "])
def test_a_learnable_parameter_needs_a_description(description: str | None) -> None:
    with pytest.raises(ConfigError, match=r"needs a description.*requires_grad=False"):
        Parameter("Be concise.", description)


@pytest.mark.parametrize("value", [None, 42, ["a"]])
def test_a_parameter_value_must_be_text(value: Any) -> None:
    with pytest.raises(ConfigError, match=f"must be a str, got {type(value).__name__}"):
        Parameter(value, "what it is for")


def test_a_frozen_parameter_needs_no_description() -> None:
    assert Parameter("fixed", requires_grad=False).value == "fixed"


class Prompted(Module):
    def __init__(self) -> None:
        super().__init__()
        self.tone = Parameter("calm", "the tone of every reply")
        self.inner = LLMInference("fast", system_prompt=Parameter("be brief", "system text"))


def test_load_state_dict_with_wrong_keys_names_them_and_changes_nothing() -> None:
    module = Prompted()
    before = module.state_dict()
    with pytest.raises(ConfigError) as raised:
        module.load_state_dict({"tone": "loud", "inner.system": "x"})
    message = str(raised.value)
    assert "unexpected keys ['inner.system']" in message
    assert "missing keys ['inner.system_prompt']" in message
    assert "strict=False" in message
    assert module.state_dict() == before


def test_load_state_dict_rejects_non_text_values_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="'tone' must be a str"):
        Prompted().load_state_dict({"tone": 3, "inner.system_prompt": "x"})  # type: ignore[dict-item]


# -- settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("max_concurrent", 0, "a positive int"),
        ("max_concurrent", True, "a positive int"),
        ("max_inflight", 1.5, "a positive int"),
        ("task_timeout", -1, "a number > 0 or None"),
        ("task_timeout", "30", "a number > 0 or None"),
        ("task_timeout", math.nan, "a number > 0 or None"),
        ("task_retry_delay", -0.1, "a number >= 0"),
        ("task_retry_delay", math.nan, "a number >= 0"),
        ("max_task_retries", -1, "an int >= 0"),
        ("streaming", "yes", "True or False"),
        ("on_progress", 5, "callable or None"),
    ],
)
def test_execution_settings_reject_bad_values_naming_the_field(
    name: str, value: Any, expected: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        ExecutionSettings(**{name: value})
    assert f"ExecutionSettings: {name} must be {expected}" in str(raised.value)


def test_execution_settings_reject_unknown_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['max_concurrency'\]"):
        ExecutionSettings(max_concurrency=4)


def test_call_time_settings_are_checked_too() -> None:
    llm, resources = echo()
    with pytest.raises(ConfigError, match=r"LLMInference.batch\(\): max_concurrent"):
        llm.batch(["a"], max_concurrent=0)
    with pytest.raises(ConfigError, match=r"plait.run\(\): task_timeout"):
        plait.run(llm, "a", resources=resources, task_timeout="soon")


def test_llm_inference_rejects_a_temperature_that_is_not_a_number() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        LLMInference("fast", temperature="hot")  # type: ignore[arg-type]
