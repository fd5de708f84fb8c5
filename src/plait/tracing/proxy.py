"""The stand-in a traced module call returns.

A :class:`Proxy` is a ``str`` whose text is a private token naming the node
that will produce the real value. Being a real string is what makes ordinary
prompt composition traceable: f-strings, ``+``, ``"sep".join(...)``,
``str.format`` and ``%`` all copy the token into the new string, and the tracer
later finds the tokens in any argument and records the dependency. At run time
each token is replaced by the upstream node's real text.

Anything that would need the value itself (truth tests, ``len``, comparisons,
iteration, string methods) raises :class:`TracingError`, because the graph
must be the same for every input.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn, Protocol, SupportsIndex

from plait.errors import TracingError
from plait.graph import GraphNode
from plait.tracing.ops import Select

TOKEN_OPEN = "\ue000"
TOKEN_CLOSE = "\ue001"
TOKEN_PATTERN = re.compile(f"{TOKEN_OPEN}([np]):([^{TOKEN_CLOSE}]+){TOKEN_CLOSE}")


REPR_PREFIX = "<traced output of "
"""Start of a proxy's repr; the tracer rejects strings containing it, because a
repr embedded in a prompt (``{out!r}``, ``%r``) would reach the model as is."""


def node_token(node_id: str) -> str:
    return f"{TOKEN_OPEN}n:{node_id}{TOKEN_CLOSE}"


def param_token(key: str) -> str:
    return f"{TOKEN_OPEN}p:{key}{TOKEN_CLOSE}"


_ADVICE = (
    "The graph plait records must not depend on data, so the value does not exist "
    "while forward() is traced. To branch or loop on it, make forward `async def` to "
    "run it on real values (a dynamic module: `await self.child(...)` then returns the "
    "child's real output), or use a plait.functional op (F.select, F.concat, F.format, "
    "F.parse_structured)."
)


class Selecting(Protocol):
    """What a proxy asks of the tracer that made it (the tracer sits above this file)."""

    nodes: dict[str, GraphNode]

    def select(self, proxy: Proxy, key: Any, *, attribute: bool) -> Proxy: ...


class Proxy(str):
    """A traced value; see the module docstring for what it can and cannot do."""

    _plait_ref: str
    _plait_tracer: Selecting

    def __new__(cls, tracer: Selecting, ref: str) -> Proxy:
        proxy = super().__new__(cls, node_token(ref))
        proxy.__dict__["_plait_ref"] = ref
        proxy.__dict__["_plait_tracer"] = tracer
        return proxy

    def _refuse(self, what: str) -> NoReturn:
        raise TracingError(f"{what} on the traced output of '{self._plait_ref}'. {_ADVICE}")

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_"):
            return str.__getattribute__(self, name)
        tracer = str.__getattribute__(self, "_plait_tracer")
        return tracer.select(self, name, attribute=True)

    def __getitem__(self, key: SupportsIndex | slice | str) -> Any:
        if isinstance(key, slice):
            self._refuse("Slicing")
        if isinstance(key, str) and str.__contains__(key, TOKEN_OPEN):
            self._refuse("Indexing with another traced value")
        return self._plait_tracer.select(self, key, attribute=False)

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        # ``out.strip`` already recorded a selection of "strip"; name the real source.
        node = self._plait_tracer.nodes.get(self._plait_ref)
        if node is not None and isinstance(node.module, Select) and node.dependencies:
            what = f"Calling .{node.module.key}() on the traced output of '{node.dependencies[0]}'"
        else:
            what = f"Calling the traced output of '{self._plait_ref}'"
        raise TracingError(f"{what} needs its text. {_ADVICE}")

    def __format__(self, spec: str) -> str:
        if spec:
            self._refuse(f"Formatting with the spec {spec!r}")
        return str.__str__(self)

    def __str__(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"{REPR_PREFIX}{self._plait_ref!r}>"

    def __bool__(self) -> bool:
        self._refuse("A truth test (if/while/and/or)")

    def __len__(self) -> int:
        self._refuse("len()")

    def __iter__(self) -> NoReturn:
        self._refuse("Iterating")

    def __contains__(self, item: object) -> bool:
        self._refuse("An 'in' test")

    def __eq__(self, other: object) -> bool:
        self._refuse("Comparing with ==")

    def __ne__(self, other: object) -> bool:
        self._refuse("Comparing with !=")

    def __lt__(self, other: str) -> bool:
        self._refuse("Comparing with <")

    def __le__(self, other: str) -> bool:
        self._refuse("Comparing with <=")

    def __gt__(self, other: str) -> bool:
        self._refuse("Comparing with >")

    def __ge__(self, other: str) -> bool:
        self._refuse("Comparing with >=")

    def __int__(self) -> int:
        self._refuse("int()")

    def __float__(self) -> float:
        self._refuse("float()")

    def __mod__(self, other: Any) -> str:
        self._refuse("Using it as a %-format template")

    __hash__ = str.__hash__
