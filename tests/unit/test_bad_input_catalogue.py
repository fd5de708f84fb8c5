"""Issue 14 point 18: the rest of the bad-input catalogue.

Each case was tried against main as a new user (or an attacker writing a
config) would, and got a raw exception, or worse, was accepted. Every one
must now be a clear error naming what is wrong and where, raised before any
request, and never quoting a secret.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from plait import LLMInference, Module, ModuleDict, ModuleList, Sequential
from plait.errors import ConfigError, ModuleCycleError
from plait.resources import EndpointConfig, ResourceConfig

SECRET = "sk-catalogue-never-shown-0123456789"


def endpoint(**fields: Any) -> EndpointConfig:
    return EndpointConfig(model="m", base_url="http://127.0.0.1:8000/v1", **fields)


def config_error(build: Callable[[], Any]) -> str:
    """The message of the ConfigError ``build`` raises, checked for the secret."""
    with pytest.raises(ConfigError) as raised:
        build()
    message = str(raised.value)
    assert SECRET not in message
    assert SECRET not in repr(raised.value)
    return message


# -- a module that contains itself ---------------------------------------------------


class Holder(Module):
    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference("fast")

    def forward(self, text: str) -> Any:
        return self.llm(text)


def test_a_module_assigned_to_itself_is_refused_at_once() -> None:
    holder = Holder()
    with pytest.raises(ModuleCycleError, match=r"Holder\.me: a module cannot be its own child"):
        holder.me = holder
    assert "me" not in dict(holder.named_children())
    assert "Holder(" in repr(holder)  # was a RecursionError on main


@pytest.mark.parametrize(
    ("close_the_loop", "path"),
    [
        (lambda outer, inner: setattr(inner, "back", outer), "Holder.back.inner"),
        (lambda outer, inner: inner.register_module("back", outer), "Holder.back.inner"),
        (lambda outer, inner: setattr(inner.llm, "up", outer), "LLMInference.up.inner.llm"),
    ],
)
def test_a_cycle_through_children_is_refused_naming_the_path(
    close_the_loop: Callable[[Module, Module], None], path: str
) -> None:
    outer, inner = Holder(), Holder()
    outer.inner = inner
    with pytest.raises(ModuleCycleError) as raised:
        close_the_loop(outer, inner)
    assert f"{path} would be that" in str(raised.value)
    assert len(list(outer.modules())) == 4  # outer, inner and their two LLMs; nothing added


@pytest.mark.parametrize(
    "add",
    [
        lambda box, it: box.append(it),
        lambda box, it: box.insert(0, it),
        lambda box, it: box.__setitem__(0, it),
    ],
)
def test_a_container_cannot_hold_its_own_owner(add: Callable[[ModuleList, Module], None]) -> None:
    owner, steps = Holder(), ModuleList([LLMInference("a")])
    owner.steps = steps
    with pytest.raises(ModuleCycleError, match="would contain itself"):
        add(steps, owner)
    assert len(steps) == 1


def test_dict_and_sequential_containers_refuse_a_cycle_too() -> None:
    owner, table = Holder(), ModuleDict({"a": LLMInference("a")})
    owner.table = table
    with pytest.raises(ModuleCycleError):
        table["b"] = owner
    chain = Sequential(LLMInference("a"))
    owner.chain = chain
    with pytest.raises(ModuleCycleError):
        chain.register_module("1", owner)


def test_one_child_shared_by_two_parents_is_not_a_cycle() -> None:
    shared = LLMInference("fast")
    outer, one, two = Holder(), Holder(), Holder()
    outer.one = one
    outer.two = two
    one.llm = shared
    two.llm = shared
    assert sum(module is shared for module in outer.modules()) == 1


# -- base_url ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://", "names no host"),
        ("https:///v1", "names no host"),
        ("http://exa mple.com", "contains a space at character 11"),
        ("http://example.com/v1\n", "contains a line feed (LF)"),
        ("http://example.com:99999/v1", "port that is not a number from 1 to 65535"),
        ("http://example.com:0/v1", "port that is not a number from 1 to 65535"),
        ("http://example.com:http/v1", "port that is not a number from 1 to 65535"),
        ("https://example.com/v1?api-version=1", "has a query (?...) or fragment (#...)"),
        ("https://example.com/v1#top", "has a query (?...) or fragment (#...)"),
        ("ftp://example.com", "must start with http:// or https://"),
        ("example.com/v1", "must start with http:// or https://"),
    ],
)
def test_a_base_url_the_http_stack_cannot_use_is_refused(url: str, expected: str) -> None:
    message = config_error(lambda: ResourceConfig({"fast": {"model": "m", "base_url": url}}))
    assert "alias 'fast', field 'base_url'" in message
    assert expected in message


@pytest.mark.parametrize(
    "url",
    ["http://localhost:8000/v1", "https://api.example.com/v1", "http://[::1]:65535/v1", "http://h"],
)
def test_a_usable_base_url_is_kept_as_written(url: str) -> None:
    assert EndpointConfig(model="m", base_url=url).base_url == url


# -- header injection and the api key ------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"api-key": SECRET + "\r\nX-Evil: 1"}, "header 'api-key': its value holds a carriage"),
        ({"api-key": SECRET + "\nX-Evil: 1"}, "header 'api-key': its value holds a line feed"),
        ({"X-Token": "a\x00" + SECRET}, "U+0000 at character 2"),
        ({"X-A\r\nAuthorization: Bearer " + SECRET: "v"}, "header 1 has an invalid name"),
        ({"X A": "v"}, "(starting 'X', then a space at character 2)"),
        ({"X-Ok": "v", "": "v"}, "header 2 has an empty name"),
    ],
)
def test_a_line_break_in_a_header_is_refused_without_showing_it(
    headers: dict[str, str], expected: str
) -> None:
    message = config_error(lambda: ResourceConfig({"fast": {"model": "m", "headers": headers}}))
    assert "alias 'fast', field 'headers'" in message
    assert expected in message


def test_a_header_value_with_a_tab_is_still_a_header() -> None:
    assert endpoint(headers={"X-Note": "a\tb"}).headers == {"X-Note": "a\tb"}


@pytest.mark.parametrize(
    "key", [SECRET + "\n", SECRET + "\r\nX-Evil: 1", "sk-" + SECRET + " x", "\x7f" + SECRET]
)
def test_a_line_break_in_the_api_key_is_refused_without_showing_it(key: str) -> None:
    message = config_error(lambda: ResourceConfig({"fast": {"model": "m", "api_key": key}}))
    assert "alias 'fast', field 'api_key'" in message
    assert "the key is not shown" in message


def test_a_key_from_the_environment_with_its_newline_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PLAIT_CATALOGUE_KEY", SECRET + "\n")
    message = config_error(lambda: endpoint(api_key="${PLAIT_CATALOGUE_KEY}"))
    assert "field 'api_key'" in message
    assert "strip it" in message


# -- bools where a number is meant ---------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_concurrent", True),
        ("rate_limit", True),
        ("token_rate_limit", True),
        ("timeout", True),
        ("max_response_bytes", True),
        ("max_retries", False),
        ("weight", True),
        ("input_price", False),
        ("output_price", True),
    ],
)
def test_a_bool_where_a_number_is_meant_is_refused(field: str, value: bool) -> None:
    message = config_error(lambda: ResourceConfig({"fast": {"model": "m", field: value}}))
    assert f"alias 'fast', field '{field}': must be a number, not the bool {value}" in message


def test_a_bool_in_a_config_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "resources.yaml"
    path.write_text("fast:\n  model: m\n  max_concurrent: yes\n")
    message = config_error(lambda: ResourceConfig.from_file(path))
    assert str(path) in message
    assert "field 'max_concurrent': must be a number, not the bool True" in message


@pytest.mark.parametrize("option", ["seed", "top_p", "presence_penalty", "top_k", "top_logprobs"])
def test_a_bool_request_option_where_a_number_is_meant_is_refused(option: str) -> None:
    options: dict[str, Any] = {option: True}
    with pytest.raises(ConfigError, match=f"'{option}' must be a number, not the bool True"):
        LLMInference("fast", **options)
    llm = LLMInference("fast")
    with pytest.raises(ConfigError, match=f"'{option}' must be a number"):
        llm.forward("x", **options)


# -- config files --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("field.yaml", "fast:\n  model: a\n  model: b\n", "line 3: invalid YAML: the key 'model'"),
        (
            "alias.yaml",
            "fast:\n  model: a\nslow:\n  model: c\nfast:\n  model: b\n",
            "the key 'fast' appears twice (lines 1 and 5)",
        ),
        (
            "nested.yaml",
            "endpoints:\n  fast:\n    model: a\n    headers: {X-A: 1, X-A: 2}\n",
            "the key 'X-A' appears twice (lines 4 and 4)",
        ),
        ("field.json", '{"fast": {"model": "a", "model": "b"}}', "the key 'model' appears twice"),
        (
            "anchor.yaml",
            "a: &x {model: one}\nb: &x {model: two}\nfast: *x\n",
            "line 2: invalid YAML: found duplicate anchor 'x'; first occurrence (line 1), second",
        ),
    ],
)
def test_a_key_written_twice_in_a_config_file_is_refused(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    message = config_error(lambda: ResourceConfig.from_file(path))
    assert str(path) in message
    assert expected in message


def test_yaml_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "resources.yaml"
    path.write_text(
        "defaults: &defaults\n  model: base\n  max_concurrent: 3\n"
        "fast:\n  <<: *defaults\n  model: fast-model\n"
        "slow: *defaults\n"
    )
    config = ResourceConfig.from_file(path)
    assert (config["fast"][0].model, config["fast"][0].max_concurrent) == ("fast-model", 3)
    assert config["slow"][0].model == "base"


def test_a_config_file_that_is_not_utf8_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "resources.yaml"
    path.write_bytes(b"fast:\n  model: caf\xe9\n")
    message = config_error(lambda: ResourceConfig.from_file(path))
    assert f"{path}, line 2: the file is not UTF-8 text (byte 0xe9" in message


def test_a_utf8_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "resources.json"
    path.write_bytes(b'\xef\xbb\xbf{"fast": {"model": "m"}}')
    assert ResourceConfig.from_file(path)["fast"][0].model == "m"


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("base_url", "http://${HOST"),
        ("base_url", "http://${HOST:-localhost/v1"),
        ("model", "${1MODEL}"),
        ("api_key", "${" + SECRET),
        ("headers", {"X-A": "${"}),
    ],
)
def test_an_unterminated_env_reference_names_the_field(field: str, text: Any) -> None:
    message = config_error(lambda: ResourceConfig({"fast": {"model": "m", field: text}}))
    assert f"alias 'fast', field '{field}'" in message
    assert "is not closed or not a valid name; write ${NAME} or ${NAME:-default}" in message


def test_an_unterminated_env_reference_in_a_header_names_the_header() -> None:
    message = config_error(lambda: endpoint(headers={"X-Ok": "1", "X-Key": "${" + SECRET}))
    assert "field 'headers': header 'X-Key': the environment reference starting at" in message


def test_an_unterminated_env_reference_in_a_file_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "resources.yaml"
    path.write_text("fast:\n  model: m\n  base_url: http://${HOST/v1\n")
    message = config_error(lambda: ResourceConfig.from_file(path))
    assert str(path) in message
    assert "alias 'fast', field 'base_url': the environment reference starting at" in message


def test_the_error_points_at_the_reference_that_is_not_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PLAIT_CATALOGUE_HOST", "example.com")
    assert endpoint(headers={"X": "${PLAIT_CATALOGUE_HOST}/${PLAIT_CATALOGUE_HOST}"}).headers == {
        "X": "example.com/example.com"
    }
    with pytest.raises(ConfigError, match="starting at character 25"):
        endpoint(headers={"X": "${PLAIT_CATALOGUE_HOST}/${PLAIT_CATALOGUE_HOST"})


@pytest.mark.parametrize("value", [{1, 2}, object(), {"when": Path("/")}, float("nan")])
def test_a_request_option_that_is_not_json_is_refused(value: Any) -> None:
    with pytest.raises(ConfigError, match="request option 'metadata' must be JSON data"):
        LLMInference("fast", metadata=value)
    with pytest.raises(ConfigError, match="request option 'my_server_option' must be JSON"):
        LLMInference("fast", my_server_option=value)
    llm = LLMInference("fast", my_server_option=1)
    with pytest.raises(ConfigError, match="request option 'my_server_option' must be JSON"):
        llm.forward("x", my_server_option=value)


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("OPENAI_API_KEY", SECRET + "\n", "api_key"),
        ("PLAIT_BASE_URL", "http://", "base_url"),
        ("OPENAI_BASE_URL", "http://exa mple.com/v1", "base_url"),
    ],
)
def test_defaults_from_the_environment_are_checked_like_written_values(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.delenv("PLAIT_BASE_URL", raising=False)
    monkeypatch.setenv(variable, value)
    message = config_error(lambda: EndpointConfig(model="m"))
    assert f"field '{field}'" in message
