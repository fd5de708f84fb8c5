"""Runs ``forward`` once on proxies and records every module call as a node.

Modules with child modules are traced *through* (their forward runs and the
calls inside it are recorded); modules without children, ``LLMInference`` and
functional ops are *leaves* and become one node each. A leaf's forward runs
later, at execution, on real values. A module with ``async def forward`` is a
leaf too (a dynamic node): it runs on real values with its children called
for real, which is how a pipeline branches or loops on replies.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

from plait.errors import TracingError
from plait.graph import GraphNode, InferenceGraph, NodeKind, NodeRef, ParamRef, Template
from plait.tracing.context import tracing
from plait.tracing.ops import Select
from plait.tracing.proxy import (
    REPR_PREFIX,
    TOKEN_CLOSE,
    TOKEN_OPEN,
    TOKEN_PATTERN,
    Proxy,
    param_token,
)

_ESCAPED_TOKENS = ("\\ue000", "\\uE000")
"""How ``json.dumps`` (ASCII mode) and similar escape the token delimiter."""


class Traceable(Protocol):
    """What the tracer needs from a module (kept structural to respect layering)."""

    _plait_node_kind: NodeKind

    def forward(self, *args: Any, **kwargs: Any) -> Any: ...

    def _plait_is_leaf(self) -> bool: ...

    def named_modules(self) -> Any: ...

    def named_parameters(self) -> Any: ...

    def parameters(self) -> Any: ...


class Tracer:
    """Records one module's calls into an :class:`InferenceGraph`."""

    def __init__(self) -> None:
        self.nodes: dict[str, GraphNode] = {}
        self._names: dict[int, str] = {}
        self._id_counts: dict[str, int] = {}
        self._params: dict[str, Any] = {}
        self._param_keys: dict[int, str] = {}

    def trace(self, module: Traceable, *args: Any, **kwargs: Any) -> InferenceGraph:
        """Trace ``module`` called with arguments of this shape.

        The arguments' values are never looked at: each becomes an input node.
        """
        self._names = {id(mod): name for name, mod in module.named_modules()}
        for name, param in module.named_parameters():
            self._param_keys[id(param)] = name
        input_ids: list[str] = []
        proxy_args = []
        for index in range(len(args)):
            proxy_args.append(self._input(f"input:{index}", input_ids))
        proxy_kwargs = {key: self._input(f"input:{key}", input_ids) for key in kwargs}
        with tracing(self):
            if module._plait_is_leaf():
                result = self.record(module, tuple(proxy_args), proxy_kwargs)
            else:
                result = self._run_forward(module, proxy_args, proxy_kwargs)
        output, output_refs, _ = self._to_spec(result)
        return InferenceGraph(
            self.nodes,
            input_ids,
            output_refs,
            {key: self._params[key] for key in self._params},
            output=output,
        )

    def call_module(self, module: Traceable, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """What calling a module inside a traced forward does."""
        if module._plait_is_leaf():
            return self.record(module, args, kwargs)
        return self._run_forward(module, list(args), kwargs)

    def record(
        self,
        module: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        name: str | None = None,
    ) -> Proxy:
        """Add a leaf call as a node and return the proxy that stands for its output."""
        spec_args, deps, params = self._to_spec(args)
        spec_kwargs, kw_deps, kw_params = self._to_spec(kwargs)
        dependencies = list(dict.fromkeys([*deps, *kw_deps]))
        own_params = list(module.parameters()) if hasattr(module, "parameters") else []
        path = name or self._names.get(id(module)) or type(module).__name__.lower()
        node_id = self._fresh_id(path)
        node = GraphNode(
            id=node_id,
            module=module,
            args=spec_args,
            kwargs=spec_kwargs,
            dependencies=dependencies,
            module_path=path,
            kind=getattr(module, "_plait_node_kind", NodeKind.OP),
            parameters=tuple(dict.fromkeys([*params, *kw_params, *own_params])),
        )
        self.nodes[node_id] = node
        for dep in dependencies:
            self.nodes[dep].dependents.append(node_id)
        return Proxy(self, node_id)

    def select(self, proxy: Proxy, key: Any, *, attribute: bool) -> Proxy:
        """Record ``proxy[key]`` or ``proxy.key`` as a selection node."""
        return self.record(Select(key, attribute=attribute), (proxy,), {}, name="select")

    def param_token(self, param: Any) -> str:
        """The token a Parameter renders as inside strings built while tracing."""
        key = self._param_keys.get(id(param))
        if key is None:
            key = self._free_param_key()
            self._param_keys[id(param)] = key
        self._params[key] = param
        return param_token(key)

    def _free_param_key(self) -> str:
        """A key for a Parameter the module does not own (a global, say) that
        cannot collide with the dotted name of one it does own."""
        taken = set(self._param_keys.values())
        index = len(taken)
        while f"param{index}" in taken:
            index += 1
        return f"param{index}"

    def _input(self, node_id: str, input_ids: list[str]) -> Proxy:
        self.nodes[node_id] = GraphNode(
            id=node_id, module=None, kind=NodeKind.INPUT, module_path=node_id
        )
        input_ids.append(node_id)
        return Proxy(self, node_id)

    def _fresh_id(self, path: str) -> str:
        count = self._id_counts.get(path, 0) + 1
        self._id_counts[path] = count
        return path if count == 1 else f"{path}#{count}"

    def _run_forward(self, module: Traceable, args: list[Any], kwargs: dict[str, Any]) -> Any:
        result = module.forward(*args, **kwargs)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TracingError(
                f"{type(module).__name__}.forward returned an awaitable from a plain def, so "
                "plait cannot tell whether to trace it or run it. Write it as `async def "
                "forward` to run it on real values (a dynamic module), or return the calls' "
                "results directly to have it traced."
            )
        return result

    def _to_spec(self, obj: Any) -> tuple[Any, list[str], list[Any]]:
        """Replace proxies, composed strings and Parameters by placeholders.

        Returns the placeholder structure, the node ids it refers to, and the
        Parameters it reads.
        """
        refs: list[str] = []
        params: list[Any] = []
        spec = self._convert(obj, refs, params)
        return spec, list(dict.fromkeys(refs)), list(dict.fromkeys(params))

    def _convert(self, obj: Any, refs: list[str], params: list[Any]) -> Any:
        if isinstance(obj, Proxy):
            ref = obj._plait_ref
            refs.append(ref)
            return NodeRef(ref)
        if isinstance(obj, str):
            if REPR_PREFIX in obj:
                raise TracingError(
                    "A string built while tracing contains the repr() of a traced output "
                    "(from {out!r}, %r or repr(out)), so the model would receive "
                    "'<traced output of ...>' instead of the text. Embed the output itself "
                    "with {out}, %s or +."
                )
            if any(escaped in obj for escaped in _ESCAPED_TOKENS):
                raise TracingError(
                    "A string built while tracing contains an escaped traced value "
                    "(json.dumps and similar escape its placeholder), so the model would "
                    "receive the placeholder instead of the text. Build JSON prompts with "
                    "F.render, or make forward `async def` to run it on real values."
                )
            if TOKEN_OPEN in obj or TOKEN_CLOSE in obj:
                return self._template(obj, refs, params)
            return obj
        if getattr(type(obj), "_plait_parameter", False):
            self.param_token(obj)
            params.append(obj)
            return ParamRef(obj)
        if isinstance(obj, list):
            return [self._convert(item, refs, params) for item in obj]
        if isinstance(obj, tuple):
            return tuple(self._convert(item, refs, params) for item in obj)
        if isinstance(obj, dict):
            return {key: self._convert(item, refs, params) for key, item in obj.items()}
        return obj

    def _template(self, text: str, refs: list[str], params: list[Any]) -> Template:
        parts: list[str | NodeRef | ParamRef] = []
        position = 0
        for match in TOKEN_PATTERN.finditer(text):
            if match.start() > position:
                parts.append(self._literal(text[position : match.start()]))
            kind, key = match.group(1), match.group(2)
            if kind == "n":
                refs.append(key)
                parts.append(NodeRef(key))
            else:
                param = self._params[key]
                params.append(param)
                parts.append(ParamRef(param))
            position = match.end()
        if position < len(text):
            parts.append(self._literal(text[position:]))
        return Template(tuple(parts))

    @staticmethod
    def _literal(text: str) -> str:
        """Literal text of a template; a leftover token fragment means a broken placeholder."""
        if TOKEN_OPEN in text or TOKEN_CLOSE in text:
            raise TracingError(
                "A string built while tracing contains a traced value that was changed by a "
                "string function (for example str.upper(out) or textwrap.shorten), so it "
                "can no longer be filled in with the real text. Embed traced values unchanged "
                "({out}, %s, +, join), or make forward `async def` to run it on real values "
                "and transform the text there."
            )
        return text


def trace(module: Traceable, *args: Any, **kwargs: Any) -> InferenceGraph:
    """Trace ``module`` with example arguments and return its graph; nothing runs."""
    if isinstance(module, type) or not hasattr(module, "_plait_is_leaf"):
        what = (
            f"the class {module.__name__} (call it to make an instance)"
            if isinstance(module, type)
            else type(module).__name__
        )
        raise TypeError(f"plait.trace() needs a Module instance, got {what}")
    return Tracer().trace(module, *args, **kwargs)
