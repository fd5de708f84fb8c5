"""Endpoint configuration: which models an alias reaches, and under what limits.

Modules name aliases, never models, so swapping a model or adding endpoints to
a pool is a configuration change only. Everything here is validated once, at
construction, and every problem is reported as a :class:`~plait.errors.ConfigError`
whose lines name the alias, the pool index (for pools), the field and what is
wrong, because a bad value found mid-run would waste the calls already made.

API keys are :class:`pydantic.SecretStr`: they never appear in ``repr``,
``str``, ``model_dump()`` or error messages. Code that really needs the key
(a client) reads it with ``endpoint.api_key.get_secret_value()``.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from plait.clients.base import DEFAULT_MAX_RESPONSE_BYTES
from plait.errors import ConfigError, EndpointConfigError
from plait.resources.config_checks import (
    check_api_key,
    check_base_url,
    check_headers,
    expand_env,
    expand_header_values,
    refuse_bool,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"

_DIALECTS = ("auto", "json_schema", "json_object", "prompt")


def _default_base_url() -> str:
    return os.environ.get("PLAIT_BASE_URL") or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL


def _default_api_key() -> SecretStr | None:
    key = os.environ.get("OPENAI_API_KEY")
    return SecretStr(key) if key else None


_NUMBER_FIELDS = (
    "max_concurrent",
    "rate_limit",
    "token_rate_limit",
    "timeout",
    "max_response_bytes",
    "max_retries",
    "weight",
    "input_price",
    "output_price",
)


class EndpointConfig(BaseModel):
    """One OpenAI-compatible endpoint serving one model.

    ``rate_limit`` is requests per minute and ``token_rate_limit`` tokens per
    minute, matching how providers publish their limits. ``max_retries``, when
    set, replaces the scheduler's task retry budget for calls to this endpoint's
    alias. ``weight`` is the endpoint's share of traffic inside a pool.
    ``input_price`` / ``output_price`` are per million tokens; they feed the
    ``cost`` in usage reports and the ``max_cost`` budget (a config file's
    ``prices`` table, or :meth:`ResourceConfig.with_prices`, sets them per
    model). ``cache`` decides whether replies are cached: None follows the
    run's ``cache=`` setting, False never caches this endpoint, True caches in
    the default location and a path caches there. ``structured_output`` is
    the dialect a ``response_format`` is sent in (see
    ``plait.clients.dialects``); ``auto`` starts with ``json_schema`` and falls
    back once when the endpoint refuses the form.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    model: str = Field(min_length=1)
    # Defaults come from the environment, so they are checked like written values.
    base_url: str = Field(default_factory=_default_base_url, validate_default=True)
    api_key: SecretStr | None = Field(default_factory=_default_api_key, validate_default=True)
    max_concurrent: int = Field(default=16, ge=1)
    rate_limit: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    token_rate_limit: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    timeout: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    max_response_bytes: int = Field(default=DEFAULT_MAX_RESPONSE_BYTES, ge=1)
    max_retries: int | None = Field(default=None, ge=0)
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    headers: dict[str, str] = Field(default_factory=dict)
    client: Literal["lean", "openai"] = "lean"
    input_price: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    output_price: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    cache: bool | str | None = None
    structured_output: Literal["auto", "json_schema", "json_object", "prompt"] = "auto"

    if not TYPE_CHECKING:
        # Hidden from type checkers so the pydantic plugin keeps the typed
        # keyword signature; at run time it turns pydantic's error into ours.
        def __init__(self, **data: Any) -> None:
            try:
                super().__init__(**data)
            except ValidationError as exc:
                raise EndpointConfigError(_problems(exc, None)) from None

    @field_validator("model", "base_url", mode="before")
    @classmethod
    def _expand_text(cls, value: Any) -> Any:
        return expand_env(value) if isinstance(value, str) else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _expand_key(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            value = expand_env(value)
            # An empty key (e.g. "${KEY:-}") means "no key", as for local servers.
            return value or None
        return value

    @field_validator("headers", mode="before")
    @classmethod
    def _expand_headers(cls, value: Any) -> Any:
        return expand_header_values(value) if isinstance(value, Mapping) else value

    @field_validator("structured_output", mode="before")
    @classmethod
    def _check_dialect(cls, value: Any) -> Any:
        # Named with the servers each dialect is for, since the server is what
        # a user knows; pydantic's own message would only list the words.
        if isinstance(value, str) and value not in _DIALECTS:
            close = difflib.get_close_matches(value.lower().replace("-", "_"), _DIALECTS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"unknown structured output dialect {value!r}; {hint}use 'auto' (json_schema, "
                "falling back when refused), 'json_schema' (OpenAI, vLLM, Ollama, llama.cpp "
                "server), 'json_object' (llama-cpp-python) or 'prompt' (a server without "
                "constrained decoding)"
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return check_base_url(value)

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        return check_headers(value)

    @field_validator("api_key")
    @classmethod
    def _check_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_api_key(value.get_secret_value())
        return value

    @field_validator(*_NUMBER_FIELDS, mode="before")
    @classmethod
    def _no_bools(cls, value: Any) -> Any:
        # Pydantic's lax mode takes True as 1; refused before it gets the chance.
        return refuse_bool(value)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Header values often carry credentials (Azure's api-key, bearer
        # tokens), so only their names are shown.
        for name, value in super().__repr_args__():
            if name == "headers" and value:
                yield name, dict.fromkeys(value, "**********")
            else:
                yield name, value


EndpointInput = EndpointConfig | Mapping[str, Any]


class ResourceConfig(RootModel[dict[str, list[EndpointConfig]]]):
    """Maps each alias to its endpoint, or to a pool (a list) of endpoints.

    Build it from a mapping (``ResourceConfig({"fast": {"model": "gpt-4o-mini"}})``),
    from keywords (``ResourceConfig(fast=EndpointConfig(model=...))``) or from
    a file (:meth:`from_file`). Single endpoints are stored as one-element
    pools, so ``config[alias]`` is always a list.
    """

    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)

    if not TYPE_CHECKING:

        def __init__(self, root: Any = None, /, **aliases: Any) -> None:
            if root is None:
                root = aliases
            elif isinstance(root, ResourceConfig):
                root = root.root
            elif aliases:
                raise ConfigError(
                    "ResourceConfig takes either one mapping or keyword aliases, not both"
                )
            try:
                super().__init__(root)
            except ValidationError as exc:
                pooled = root if isinstance(root, Mapping) else {}
                raise ConfigError(
                    _report("invalid resource configuration:", _problems(exc, pooled))
                ) from None

    else:

        def __init__(
            self,
            root: ResourceConfig
            | Mapping[str, EndpointInput | Sequence[EndpointInput]]
            | None = None,
            /,
            **aliases: EndpointInput | Sequence[EndpointInput],
        ) -> None: ...

    @model_validator(mode="before")
    @classmethod
    def _as_pools(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        return {
            alias: list(value) if isinstance(value, list | tuple) else [value]
            for alias, value in data.items()
        }

    @field_validator("root")
    @classmethod
    def _non_empty_pools(
        cls, pools: dict[str, list[EndpointConfig]]
    ) -> dict[str, list[EndpointConfig]]:
        for alias, pool in pools.items():
            if not alias:
                raise ValueError("alias names must be non-empty")
            if not pool:
                raise ValueError(f"alias {alias!r}: a pool needs at least one endpoint")
        return pools

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ResourceConfig:
        """Load aliases from a ``.yaml``/``.yml``, ``.json`` or ``.toml`` file.

        The top level is the alias mapping, or a mapping with a single
        ``endpoints`` key holding it (so the file can say what it is).
        """
        file = Path(path)
        # Only config files need PyYAML: a tenth of `import plait` otherwise.
        from plait.resources.config_file import read_config_file

        data = read_config_file(file)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{file}: the top level must be a mapping of alias to endpoint")
        endpoints = data.get("endpoints")
        prices = None
        if isinstance(endpoints, Mapping) and "model" not in endpoints:
            others = sorted(str(key) for key in data if key not in ("endpoints", "prices"))
            if others:
                raise ConfigError(
                    f"{file}: unexpected top-level keys next to 'endpoints': {', '.join(others)}"
                )
            prices = data.get("prices")
            data = endpoints
        try:
            config = cls(data)
            return config if prices is None else config.with_prices(prices)
        except ConfigError as exc:
            raise ConfigError(f"{file}: {exc}") from None

    def with_prices(self, prices: Mapping[str, Any]) -> ResourceConfig:
        """A copy in which endpoints of each listed model get that model's prices.

        ``prices`` maps a model name to ``{"input": ..., "output": ...}`` (per
        million tokens) or to an ``(input, output)`` pair. Prices an endpoint
        sets itself are kept.
        """
        if not isinstance(prices, Mapping):
            raise ConfigError("prices must map model names to {input: ..., output: ...}")
        table = {str(model): _price_pair(str(model), entry) for model, entry in prices.items()}
        pools: dict[str, list[EndpointConfig]] = {}
        for alias, pool in self.root.items():
            updated = []
            for endpoint in pool:
                found = table.get(endpoint.model)
                changes: dict[str, float] = {}
                if found is not None and endpoint.input_price is None:
                    changes["input_price"] = found[0]
                if found is not None and endpoint.output_price is None:
                    changes["output_price"] = found[1]
                updated.append(endpoint.model_copy(update=changes) if changes else endpoint)
            pools[alias] = updated
        return ResourceConfig(pools)

    @property
    def aliases(self) -> tuple[str, ...]:
        """The configured alias names, in configuration order."""
        return tuple(self.root)

    def __getitem__(self, alias: str) -> list[EndpointConfig]:
        return self.root[alias]

    def __contains__(self, alias: object) -> bool:
        return alias in self.root

    # BaseModel.__iter__ yields (field, value) pairs; a mapping of aliases
    # iterates its keys, like a dict.
    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return iter(self.root)

    def __len__(self) -> int:
        return len(self.root)


def _price_pair(model: str, entry: Any) -> tuple[float, float]:
    if isinstance(entry, Mapping) and set(entry) <= {"input", "output"}:
        pair = (entry.get("input"), entry.get("output"))
    elif isinstance(entry, list | tuple) and len(entry) == 2:
        pair = (entry[0], entry[1])
    else:
        raise ConfigError(
            f"prices for model {model!r} must be {{input: ..., output: ...}} or an "
            "(input, output) pair, in price per million tokens"
        )
    checked = []
    for name, value in zip(("input", "output"), pair, strict=True):
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ConfigError(
                f"prices for model {model!r}: {name} must be a number >= 0, got {value!r}"
            )
        checked.append(float(value))
    return checked[0], checked[1]


_FIELDS = tuple(EndpointConfig.model_fields)


def _problems(exc: ValidationError, raw: Mapping[str, Any] | None) -> list[str]:
    """One line per validation problem, naming alias, pool index and field.

    ``raw`` is the input of a ResourceConfig (None for a lone EndpointConfig);
    it tells whether an alias was written as a list, so the pool index is only
    shown where the user wrote one. Inputs are never echoed, since they may
    hold keys.
    """
    lines: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = list(error["loc"])
        where = []
        if raw is not None and loc:
            alias = loc.pop(0)
            where.append(f"alias {alias!r}")
            if loc and isinstance(loc[0], int):
                index = loc.pop(0)
                if isinstance(raw.get(str(alias)), list | tuple):
                    where.append(f"endpoint {index}")
        nested = error.get("ctx", {}).get("error")
        if isinstance(nested, EndpointConfigError):
            lines.extend(", ".join([*where, line]) for line in nested.lines)
            continue
        message = str(error["msg"]).removeprefix("Value error, ")
        if loc:
            where.append("field " + repr(".".join(str(part) for part in loc)))
            if error["type"] == "extra_forbidden":
                message = "unknown field"
                close = difflib.get_close_matches(str(loc[-1]), _FIELDS, n=1)
                if close:
                    message += f"; did you mean {close[0]!r}?"
        lines.append(", ".join(where) + ": " + message if where else message)
    return lines


def _report(title: str, lines: list[str]) -> str:
    return title + "\n" + "\n".join("  " + line for line in lines)
