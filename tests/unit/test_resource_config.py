"""ResourceConfig / EndpointConfig: construction, files, env expansion, errors, secrets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from plait.errors import ConfigError
from plait.resources import EndpointConfig, ResourceConfig

KEY = "sk-test-very-secret-0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "PLAIT_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


# -- construction --------------------------------------------------------------


def test_from_dict_of_dicts() -> None:
    config = ResourceConfig({"fast": {"model": "gpt-4o-mini", "max_concurrent": 20}})
    assert config.aliases == ("fast",)
    [endpoint] = config["fast"]
    assert endpoint.model == "gpt-4o-mini"
    assert endpoint.max_concurrent == 20
    assert endpoint.base_url == "https://api.openai.com/v1"
    assert endpoint.api_key is None
    assert endpoint.client == "lean"
    assert endpoint.timeout == 60.0
    assert endpoint.weight == 1.0
    assert endpoint.max_retries is None


def test_from_objects_keywords_and_pools() -> None:
    a = EndpointConfig(model="a", weight=2)
    b = EndpointConfig(model="b", base_url="http://127.0.0.1:9999/v1")
    config = ResourceConfig(single=a, pool=[a, b])
    assert config["single"] == [a]
    assert [e.model for e in config["pool"]] == ["a", "b"]
    assert "pool" in config
    assert "nope" not in config
    assert list(config) == ["single", "pool"]
    assert len(config) == 2


def test_mixed_dicts_and_objects_in_a_pool() -> None:
    config = ResourceConfig({"p": [{"model": "a"}, EndpointConfig(model="b")]})
    assert [e.model for e in config["p"]] == ["a", "b"]


def test_copy_of_a_config() -> None:
    config = ResourceConfig({"fast": {"model": "m"}})
    assert ResourceConfig(config)["fast"] == config["fast"]


def test_mapping_and_keywords_together_rejected() -> None:
    with pytest.raises(ConfigError, match="not both"):
        ResourceConfig({"a": {"model": "m"}}, b={"model": "n"})


def test_env_defaults_for_base_url_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://openai-env:1/v1")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    endpoint = EndpointConfig(model="m")
    assert endpoint.base_url == "http://openai-env:1/v1"
    assert endpoint.api_key is not None
    assert endpoint.api_key.get_secret_value() == KEY
    monkeypatch.setenv("PLAIT_BASE_URL", "http://plait-env:2/v1")
    assert EndpointConfig(model="m").base_url == "http://plait-env:2/v1"


# -- files ---------------------------------------------------------------------


YAML_TEXT = """
fast:
  model: gpt-4o-mini
  max_concurrent: 20
  rate_limit: 600
pool:
  - model: a
    weight: 3
  - model: b
"""


def check_loaded(config: ResourceConfig) -> None:
    assert config.aliases == ("fast", "pool")
    assert config["fast"][0].max_concurrent == 20
    assert config["fast"][0].rate_limit == 600
    assert [(e.model, e.weight) for e in config["pool"]] == [("a", 3.0), ("b", 1.0)]


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"resources{suffix}"
    path.write_text(YAML_TEXT)
    check_loaded(ResourceConfig.from_file(path))


def test_json_file(tmp_path: Path) -> None:
    data = {
        "fast": {"model": "gpt-4o-mini", "max_concurrent": 20, "rate_limit": 600},
        "pool": [{"model": "a", "weight": 3}, {"model": "b"}],
    }
    path = tmp_path / "resources.json"
    path.write_text(json.dumps(data))
    check_loaded(ResourceConfig.from_file(str(path)))


def test_toml_file_nested_under_endpoints(tmp_path: Path) -> None:
    path = tmp_path / "resources.toml"
    path.write_text(
        """
[endpoints.fast]
model = "gpt-4o-mini"
max_concurrent = 20
rate_limit = 600

[[endpoints.pool]]
model = "a"
weight = 3

[[endpoints.pool]]
model = "b"
"""
    )
    check_loaded(ResourceConfig.from_file(path))


def test_endpoints_key_with_other_top_level_keys_rejected(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("endpoints:\n  fast:\n    model: m\nsettings: {}\n")
    with pytest.raises(ConfigError, match="settings"):
        ResourceConfig.from_file(path)


def test_alias_named_endpoints_still_works(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("endpoints:\n  model: m\n")
    assert ResourceConfig.from_file(path)["endpoints"][0].model == "m"


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("fast:\n  model: m\n  timeout: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        ResourceConfig.from_file(path)
    message = str(info.value)
    assert "bad.yaml" in message
    assert "line " in message
    assert "invalid YAML" in message


def test_bad_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "fast": {"model": "m",}\n}')
    with pytest.raises(ConfigError, match=r"bad\.json, line 2: invalid JSON"):
        ResourceConfig.from_file(path)


def test_bad_toml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[fast]\nmodel = "m"\nmodel = "n"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML.*line 3"):
        ResourceConfig.from_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        ResourceConfig.from_file(tmp_path / "nope.yaml")


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "r.ini"
    path.write_text("x")
    with pytest.raises(ConfigError, match="unsupported"):
        ResourceConfig.from_file(path)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("- model: m\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        ResourceConfig.from_file(path)


def test_invalid_value_in_file_names_file_alias_and_field(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("fast:\n  model: m\n  max_concurrent: 0\n")
    with pytest.raises(ConfigError) as info:
        ResourceConfig.from_file(path)
    message = str(info.value)
    assert "r.yaml" in message
    assert "alias 'fast', field 'max_concurrent'" in message


# -- env expansion ---------------------------------------------------------------


def test_env_references_expand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", KEY)
    monkeypatch.setenv("MY_HOST", "127.0.0.1:8000")
    monkeypatch.setenv("MY_MODEL", "llama")
    config = ResourceConfig(
        {
            "local": {
                "model": "${MY_MODEL}-3",
                "base_url": "http://${MY_HOST}/v1",
                "api_key": "${MY_KEY}",
                "headers": {"X-Token": "t-${MY_KEY}", "X-Plain": "plain"},
            }
        }
    )
    [endpoint] = config["local"]
    assert endpoint.model == "llama-3"
    assert endpoint.base_url == "http://127.0.0.1:8000/v1"
    assert endpoint.api_key is not None
    assert endpoint.api_key.get_secret_value() == KEY
    assert endpoint.headers == {"X-Token": f"t-{KEY}", "X-Plain": "plain"}


def test_env_default_used_when_unset_or_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNSET_VAR_FOR_TEST", raising=False)
    monkeypatch.setenv("EMPTY_VAR_FOR_TEST", "")
    endpoint = EndpointConfig(
        model="${UNSET_VAR_FOR_TEST:-fallback}",
        base_url="${EMPTY_VAR_FOR_TEST:-http://127.0.0.1:1}/v1",
        api_key="${UNSET_VAR_FOR_TEST:-}",
    )
    assert endpoint.model == "fallback"
    assert endpoint.base_url == "http://127.0.0.1:1/v1"
    assert endpoint.api_key is None  # an empty key means "no key"


def test_missing_env_variable_names_alias_field_and_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PLAIT_TEST_MISSING_KEY", raising=False)
    with pytest.raises(ConfigError) as info:
        ResourceConfig({"fast": {"model": "m", "api_key": "${PLAIT_TEST_MISSING_KEY}"}})
    message = str(info.value)
    assert "alias 'fast'" in message
    assert "field 'api_key'" in message
    assert "PLAIT_TEST_MISSING_KEY" in message


# -- validation errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", ""),
        ("max_concurrent", 0),
        ("rate_limit", 0),
        ("rate_limit", -5),
        ("token_rate_limit", 0),
        ("timeout", 0),
        ("timeout", "soon"),
        ("max_retries", -1),
        ("weight", 0),
        ("headers", {"X-Number": 3}),
        ("client", "requests"),
        ("base_url", "ftp://example.com"),
        ("input_price", -1),
    ],
)
def test_invalid_value_names_alias_and_field(field: str, value: object) -> None:
    entry = {"model": "m", field: value}
    with pytest.raises(ConfigError) as info:
        ResourceConfig({"fast": entry})
    message = str(info.value)
    assert "alias 'fast'" in message
    assert f"field '{field}" in message
    assert "endpoint 0" not in message  # not written as a pool


def test_missing_model_is_reported() -> None:
    with pytest.raises(ConfigError, match="alias 'fast', field 'model': Field required"):
        ResourceConfig({"fast": {"max_concurrent": 3}})


def test_pool_errors_name_the_index_and_one_line_per_problem() -> None:
    with pytest.raises(ConfigError) as info:
        ResourceConfig({"pool": [{"model": "a"}, {"model": "b", "weight": 0, "timeout": -1}]})
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid resource configuration:"
    assert sorted(lines[1:]) == [
        "  alias 'pool', endpoint 1, field 'timeout': Input should be greater than 0",
        "  alias 'pool', endpoint 1, field 'weight': Input should be greater than 0",
    ]


def test_problems_across_aliases_are_all_reported() -> None:
    with pytest.raises(ConfigError) as info:
        ResourceConfig({"a": {"model": "m", "timeout": 0}, "b": {"model": ""}})
    message = str(info.value)
    assert "alias 'a', field 'timeout'" in message
    assert "alias 'b', field 'model'" in message


def test_typo_in_field_name_is_rejected_with_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        ResourceConfig({"fast": {"model": "m", "max_concurent": 4}})
    message = str(info.value)
    assert "alias 'fast', field 'max_concurent': unknown field" in message
    assert "did you mean 'max_concurrent'" in message


def test_empty_pool_rejected() -> None:
    with pytest.raises(ConfigError, match="alias 'p': a pool needs at least one endpoint"):
        ResourceConfig({"p": []})


def test_endpoint_that_is_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="alias 'fast'"):
        ResourceConfig({"fast": "gpt-4o-mini"})  # type: ignore[dict-item]


def test_direct_endpoint_config_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="field 'max_concurrent'"):
        EndpointConfig(model="m", max_concurrent=0)


# -- secrets ---------------------------------------------------------------------


def test_key_absent_from_repr_str_and_dumps() -> None:
    endpoint = EndpointConfig(model="m", api_key=KEY, headers={"api-key": KEY})
    config = ResourceConfig({"fast": endpoint, "pool": [{"model": "n", "api_key": KEY}]})
    texts = [
        repr(endpoint),
        str(endpoint),
        repr(config),
        str(config),
        str(config.model_dump()["pool"][0]["api_key"]),
        json.dumps(config.model_dump(mode="json")["pool"]),
        endpoint.model_dump_json(exclude={"headers"}),
    ]
    for text in texts:
        assert KEY not in text
    assert "api-key" in repr(endpoint)  # header names stay visible, values do not
    assert endpoint.api_key is not None
    assert endpoint.api_key.get_secret_value() == KEY


def test_key_given_as_secret_str_is_kept() -> None:
    endpoint = EndpointConfig(model="m", api_key=SecretStr(KEY))
    assert endpoint.api_key is not None
    assert endpoint.api_key.get_secret_value() == KEY


def test_key_absent_from_validation_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    cases: list[Any] = [
        {"fast": {"api_key": KEY}},  # missing model: pydantic would echo the input
        {"fast": {"model": "m", "api_key": KEY, "weight": "heavy"}},
        {"fast": {"model": "m", "api_key": KEY, "unknown": KEY}},
        {"fast": [{"model": "m", "api_key": KEY}, {"api_key": KEY, "model": 5}]},
        {"fast": KEY},
        {"fast": {"model": "m", "api_key": 12345, "headers": {"k": KEY, "n": 1}}},
    ]
    for case in cases:
        with pytest.raises(ConfigError) as info:
            ResourceConfig(case)
        assert KEY not in str(info.value)
        assert KEY not in repr(info.value)
        assert info.value.__cause__ is None
    with pytest.raises(ConfigError) as direct:
        EndpointConfig(api_key=KEY)  # type: ignore[call-arg]
    assert KEY not in str(direct.value)


def test_configs_are_immutable() -> None:
    endpoint = EndpointConfig(model="m")
    with pytest.raises(ValueError, match="frozen"):
        endpoint.model = "other"  # type: ignore[misc]
