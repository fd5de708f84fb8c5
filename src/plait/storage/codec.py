"""Node values and inputs to JSON and back, for checkpoints; stable hashes of JSON.

Checkpoint files are data, never code, so nothing is pickled. Plain JSON
types are stored as themselves; the few Python types that JSON cannot tell
apart or hold (tuples, pydantic models, plait Values, bytes, exceptions,
non-finite floats, dicts with non-string keys) are stored as small tagged
objects. Decoding a model needs its class, and only the classes the caller
hands over (the graph's declared response models) are ever used: a class
path in a file is a name to look up in that short list, never something to
import or to find among loaded modules. So a tampered checkpoint can neither
run code nor build an arbitrary object (a config that expands ``${ENV}``,
say), and a stored value that is broken in any way is one
:class:`StoredValueError`, never a raw JSON or value error.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel

from plait.errors import (
    ExecutionError,
    StorageError,
    StoredValueError,
    UnencodableError,
    UnknownClassError,
)
from plait.values import Value, ValueKind

TAG = "$plait"


def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def to_json(value: Any) -> Any:
    """``value`` as plain JSON data, with tags for what JSON cannot express.

    Unlike :func:`plait.values.jsonable`, which renders anything for a reader,
    this is strict and reversible: a stored value must come back as the same
    type, and one that cannot is refused rather than stored as its ``str``.

    Raises:
        UnencodableError: some part of ``value`` has another type; its
            ``path`` says where (worked out only when this happens).
    """
    cls = value.__class__
    if cls is str or cls is int or cls is bool or value is None:
        return value
    if cls is float:
        if math.isfinite(value):
            return value
        return {TAG: "float", "repr": repr(value)}
    if cls is list or cls is tuple:
        try:
            items = [to_json(item) for item in value]
        except UnencodableError as error:
            raise _located(error, ((f"[{i}]", item) for i, item in enumerate(value))) from None
        return items if cls is list else {TAG: "tuple", "items": items}
    if cls is dict:
        try:
            if all(key.__class__ is str for key in value) and TAG not in value:
                return {key: to_json(item) for key, item in value.items()}
            return {
                TAG: "dict",
                "items": [[to_json(key), to_json(item)] for key, item in value.items()],
            }
        except UnencodableError as error:
            parts = [(f"[{key!r}]", item) for key, item in value.items()]
            parts += [("<key>", key) for key in value]
            raise _located(error, parts) from None
    if isinstance(value, BaseModel):
        return {TAG: "model", "class": class_path(cls), "data": value.model_dump(mode="json")}
    if isinstance(value, Value):
        try:
            return {
                TAG: "value",
                "kind": value.kind.value,
                "payload": to_json(value.payload),
                "ref": value.ref,
                "meta": to_json(value.meta),
            }
        except UnencodableError as error:
            raise _located(error, [(".payload", value.payload), (".meta", value.meta)]) from None
    if isinstance(value, bytes | bytearray):
        return {TAG: "bytes", "base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, BaseException):
        return {TAG: "error", "class": class_path(cls), "message": str(value)}
    # Subclasses of the scalars (str and int enums, numpy-free float types)
    # are stored as the plain value they stand for.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return to_json(float(value))
    raise UnencodableError(cls.__qualname__, "")


def _located(error: UnencodableError, parts: Iterable[tuple[str, Any]]) -> UnencodableError:
    """``error`` with the path of the first part that cannot be encoded in front."""
    for label, item in parts:
        try:
            to_json(item)
        except UnencodableError as inner:
            return UnencodableError(inner.type_name, label + inner.path)
    return error


def encode(value: Any) -> str:
    """``value`` as compact JSON text.

    Raises:
        UnencodableError: a part of ``value`` has a type JSON cannot hold, or
            is a string that is not Unicode text (a lone surrogate), which
            SQLite and every UTF-8 file refuse.
    """
    text = json.dumps(to_json(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    require_unicode(text, value)
    return text


def require_unicode(text: str, value: Any, where: str | None = None) -> None:
    """Refuse ``text`` (made from ``value``) if it cannot be written as UTF-8.

    Raises:
        UnencodableError: naming ``where``, or where in ``value`` the lone
            surrogate is.
    """
    if text.isascii():
        return
    try:
        text.encode()
    except UnicodeEncodeError as error:
        raise surrogate_error(value, error, where) from None


def surrogate_error(
    value: Any, error: UnicodeEncodeError, where: str | None = None
) -> UnencodableError:
    """The error for ``value``, whose text failed to encode with ``error``.

    ``where`` names the place for the message; by default it is the path in
    ``value`` of the first string that is not Unicode text.
    """
    char = ascii(error.object[error.start : error.start + 1])
    return UnencodableError(
        "str",
        where if where is not None else _surrogate_path(value) or "",
        f"holds a lone surrogate ({char}), which is not Unicode text and cannot be stored",
    )


def _surrogate_path(value: Any, path: str = "") -> str | None:
    """Where in ``value`` the first string that is not Unicode text is, if anywhere."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return path
        return None
    parts: list[tuple[str, Any]]
    if isinstance(value, list | tuple):
        parts = [(f"[{index}]", item) for index, item in enumerate(value)]
    elif isinstance(value, dict):
        parts = [(f"[{key!r}]", item) for key, item in value.items()]
        parts += [("<key>", key) for key in value]
    elif isinstance(value, Value):
        parts = [(".payload", value.payload), (".meta", value.meta)]
    elif isinstance(value, BaseModel):
        parts = [(f".{name}", getattr(value, name)) for name in type(value).model_fields]
    else:
        return None
    for label, item in parts:
        found = _surrogate_path(item, path + label)
        if found is not None:
            return found
    return None


def content_hash(
    data: Any,
    *,
    algorithm: Literal["blake2b", "sha256"] = "blake2b",
    default: Callable[[Any], Any] | None = None,
) -> str:
    """A stable hash of JSON data: same data, same hash, in any process.

    The text hashed is canonical JSON (sorted keys, no spaces), so dict order
    never matters. Every caller stores its hashes (checkpoint input digests
    and fingerprints, response-cache keys), so neither the text nor the
    algorithm may change under them: checkpoints use 128-bit BLAKE2b, the
    cache SHA-256, and ``default`` lets the cache keep hashing what JSON
    cannot hold by its ``repr``.
    """
    text = json.dumps(
        data, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=default
    )
    if algorithm == "sha256":
        return hashlib.sha256(text.encode()).hexdigest()
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def digest(data: Any) -> str:
    """The hash of a live value, tags included, so ``("a",)`` and ``["a"]`` differ.

    Raises:
        UnencodableError: ``data`` holds something JSON cannot store, or text
            that is not Unicode.
    """
    tagged = to_json(data)
    try:
        return content_hash(tagged)
    except UnicodeEncodeError as error:
        raise surrogate_error(data, error) from None


def decode(text: str, models: Mapping[str, type[BaseModel]] | None = None) -> Any:
    """Rebuild a value written by :func:`encode`.

    Raises:
        UnknownClassError: a stored model's class is not in ``models``.
        StoredValueError: the text is not a value :func:`encode` could have
            written (not JSON, a tag with missing or wrong fields, a model
            whose data does not validate).
    """
    try:
        return from_json(json.loads(text), models or {})
    except StorageError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        raise StoredValueError(f"a stored value does not decode: {_brief(error)}") from None


def _brief(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text[:200]}"


def from_json(data: Any, models: Mapping[str, type[BaseModel]]) -> Any:
    cls = data.__class__
    if cls is list:
        return [from_json(item, models) for item in data]
    if cls is not dict:
        return data
    tag = data.get(TAG)
    if tag is None:
        return {key: from_json(item, models) for key, item in data.items()}
    if tag == "tuple":
        return tuple(from_json(item, models) for item in data["items"])
    if tag == "dict":
        return {from_json(k, models): from_json(v, models) for k, v in data["items"]}
    if tag == "float":
        return float(data["repr"])
    if tag == "model":
        model = models.get(data["class"])
        if model is None:
            raise UnknownClassError(
                f"the stored model class {str(data['class'])[:200]!r} is not one this graph "
                "declares"
            )
        return model.model_validate(data["data"])
    if tag == "value":
        return Value(
            ValueKind(data["kind"]),
            from_json(data["payload"], models),
            data.get("ref"),
            from_json(data.get("meta") or {}, models),
        )
    if tag == "bytes":
        return base64.b64decode(data["base64"], validate=True)
    if tag == "error":
        return _rebuild_error(data["class"], data["message"])
    raise StoredValueError(f"unknown tag {tag!r} in stored value")


def plain(data: Any) -> Any:
    """Stored JSON data with the tags taken out, for reading without the classes.

    Tuples become lists, models and Values their data, bytes a base64 string,
    errors their message; the result is plain JSON data. It looks like
    :func:`plait.values.jsonable` but reads the stored, tagged form: the live
    objects (and their classes) are not there to render.
    """
    cls = data.__class__
    if cls is list:
        return [plain(item) for item in data]
    if cls is not dict:
        return data
    tag = data.get(TAG)
    if tag is None:
        return {key: plain(item) for key, item in data.items()}
    if tag == "tuple":
        return [plain(item) for item in data["items"]]
    if tag == "dict":
        return {str(plain(key)): plain(value) for key, value in data["items"]}
    if tag == "model":
        return plain(data["data"])
    if tag == "value":
        return plain(data["payload"])
    if tag == "bytes":
        return data["base64"]
    if tag == "error":
        return f"{data['class'].rpartition(':')[2]}: {data['message']}"
    return data.get("repr")


def _rebuild_error(path: str, message: str) -> BaseException:
    """Builtin exceptions come back as themselves; others as an ExecutionError that names them."""
    module_name, _, qualname = path.partition(":")
    if module_name == "builtins":
        cls = getattr(builtins, qualname, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                return cls(message)
            except TypeError:
                pass
    return ExecutionError(f"{qualname}: {message}")
