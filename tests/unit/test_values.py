"""Value and its helpers: classification, wrapping, ref collection, text rendering."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from plait import Value, ValueKind
from plait.values import collect_refs, iter_values, kind_of, to_text, unwrap, wrap


class Point(BaseModel):
    x: int
    y: int


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        ("text", ValueKind.TEXT),
        ("", ValueKind.TEXT),
        (3, ValueKind.INT),
        (True, ValueKind.INT),
        (2.5, ValueKind.FLOAT),
        (ValueError("bad"), ValueKind.ERROR),
        (b"\x00", ValueKind.BINARY),
        (bytearray(b"x"), ValueKind.BINARY),
        ({"a": 1}, ValueKind.STRUCTURED),
        ([1, 2], ValueKind.STRUCTURED),
        ((1, 2), ValueKind.STRUCTURED),
        (Point(x=1, y=2), ValueKind.STRUCTURED),
        (None, ValueKind.OTHER),
        (object(), ValueKind.OTHER),
    ],
)
def test_kind_of(payload: Any, kind: ValueKind) -> None:
    assert kind_of(payload) is kind


def test_value_kind_covers_the_contract() -> None:
    names = {kind.value for kind in ValueKind}
    assert {"text", "structured", "response", "int", "float", "error", "binary", "other"} <= names


def test_wrap_classifies_and_keeps_ref_and_meta() -> None:
    value = wrap("hello", ref="node1", source="user")
    assert value == Value(ValueKind.TEXT, "hello", "node1", {"source": "user"})
    existing = Value(ValueKind.INT, 1, "n")
    assert wrap(existing, ref="other") is existing


def test_value_defaults_and_helpers() -> None:
    value = Value(ValueKind.TEXT, "hi")
    assert value.ref is None
    assert value.meta == {}
    assert Value(ValueKind.TEXT, "x").meta is not value.meta
    assert str(value) == "hi"
    assert not value.is_error
    assert Value(ValueKind.ERROR, ValueError("x")).is_error


def test_unwrap_reaches_through_nested_containers() -> None:
    nested = {
        "a": wrap("x", ref="n1"),
        "b": [wrap(1, ref="n2"), (wrap(2.0), "plain")],
        "c": {"deep": [wrap({"k": "v"})]},
    }
    assert unwrap(nested) == {"a": "x", "b": [1, (2.0, "plain")], "c": {"deep": [{"k": "v"}]}}
    assert isinstance(unwrap(nested)["b"][1], tuple)
    assert unwrap(wrap("solo")) == "solo"
    assert unwrap("plain") == "plain"


def test_collect_refs_in_first_seen_order_without_repeats() -> None:
    nested = [
        wrap("a", ref="n1"),
        {"x": wrap("b", ref="n2"), "y": (wrap("c", ref="n1"), wrap("d"))},
        [[wrap("e", ref="n3")]],
        "not a value",
    ]
    assert collect_refs(nested) == ["n1", "n2", "n3"]
    assert collect_refs("plain") == []
    assert [value.payload for value in iter_values(nested)] == ["a", "b", "c", "d", "e"]


def test_to_text_of_each_kind() -> None:
    assert to_text("as is") == "as is"
    assert to_text(3) == "3"
    assert to_text(Value(ValueKind.TEXT, "inner")) == "inner"
    assert json.loads(to_text(Point(x=1, y=2))) == {"x": 1, "y": 2}
    assert to_text({"k": "ü", "n": [1, 2]}) == '{"k": "ü", "n": [1, 2]}'
    assert to_text(["a", 1]) == '["a", 1]'


def test_to_text_renders_values_and_models_nested_in_containers() -> None:
    payload = {"point": Point(x=1, y=2), "value": wrap("v")}
    assert json.loads(to_text(payload)) == {"point": {"x": 1, "y": 2}, "value": "v"}
    assert json.loads(to_text({"odd": object()}))["odd"].startswith("<object object")


def test_value_str_renders_structured_payloads_as_json() -> None:
    assert json.loads(str(wrap({"a": [1]}))) == {"a": [1]}
