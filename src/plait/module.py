"""Module and LLMInference: the user-facing building blocks.

``Module`` mirrors ``torch.nn.Module``: assigning a Module or Parameter to an
attribute registers it, so ``named_parameters()`` and ``state_dict()`` find
every prompt in a pipeline without the user listing them. Calling a module
does one of four things depending on context: inside a traced ``forward`` it
records a graph node; inside a dynamic (``async def``) forward running on the
engine it starts a sub-run and returns a future of the real output; when
bound to resources (or when it makes LLM calls) it traces and runs on the
execution engine and returns an awaitable; otherwise it is plain Python and
simply runs ``forward``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from plait.errors import ConfigError, ModuleCycleError
from plait.execution.call import Call, run_blocking
from plait.execution.dynamic import current_scope
from plait.execution.inputs import batch_items, call_items
from plait.execution.settings import ResolvedSettings, check_setting_names, resolve_settings
from plait.execution.token_stream import TokenStream
from plait.feedback import BackwardContext, BackwardResult, default_backward
from plait.graph import InferenceGraph, NodeKind
from plait.parameter import Parameter
from plait.resources.protocol import as_resource_manager
from plait.tracing.context import current_tracer
from plait.tracing.tracer import Tracer


class _StructureVersion:
    """Bumped whenever any module's children or parameters change, so cached
    graphs traced before the change are never reused after it."""

    value = 0


class Module:
    """Base class of every plait pipeline component; subclasses define ``forward``."""

    _plait_node_kind = NodeKind.OP
    _plait_parameter_container = False
    training: bool
    _modules: dict[str, Module]
    _parameters: dict[str, Parameter]
    _bound_resources: Any
    _bound_settings: dict[str, Any]
    _plait_cache: dict[tuple[str, int], bool]
    _plait_graphs: dict[tuple[Any, ...], InferenceGraph]

    def __init__(self) -> None:
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "training", False)
        object.__setattr__(self, "_bound_resources", None)
        object.__setattr__(self, "_bound_settings", {})
        object.__setattr__(self, "_plait_cache", {})
        object.__setattr__(self, "_plait_graphs", {})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # ``async def forward`` is what makes a module dynamic (DESIGN 10): it
        # is never traced through and runs at execution time on real values.
        super().__init_subclass__(**kwargs)
        if inspect.iscoroutinefunction(cls.__dict__.get("forward")):
            cls._plait_node_kind = NodeKind.DYNAMIC
        elif "forward" in cls.__dict__ and cls._plait_node_kind is NodeKind.DYNAMIC:
            cls._plait_node_kind = NodeKind.OP

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{type(self).__name__} must define forward()")

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            # Only reached when normal lookup fails, so it costs nothing otherwise.
            if "_modules" not in self.__dict__:
                raise AttributeError(
                    f"{type(self).__name__} was not initialised as a Module (looking up "
                    f"{name!r}); call super().__init__() first in __init__"
                )
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- registration ---------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        modules: dict[str, Module] | None = self.__dict__.get("_modules")
        if modules is None:
            raise AttributeError(
                f"cannot assign {name!r} on {type(self).__name__} before Module.__init__() ran; "
                "call super().__init__() first in __init__"
            )
        parameters: dict[str, Parameter] = self.__dict__["_parameters"]
        if isinstance(value, Module):
            refuse_cycle(self, name, value)
            parameters.pop(name, None)
            modules[name] = value
            _StructureVersion.value += 1
        elif isinstance(value, Parameter):
            modules.pop(name, None)
            parameters[name] = value
            _StructureVersion.value += 1
        elif name in modules or name in parameters:
            modules.pop(name, None)
            parameters.pop(name, None)
            _StructureVersion.value += 1
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if (
            self._modules.pop(name, None) is not None
            or self._parameters.pop(name, None) is not None
        ):
            _StructureVersion.value += 1
        object.__delattr__(self, name)

    def register_module(self, name: str, module: Module) -> None:
        """Register a child under ``name`` (for names that are not identifiers)."""
        if not isinstance(module, Module):
            raise TypeError(
                f"register_module({name!r}, ...) needs a Module, got {type(module).__name__}"
            )
        refuse_cycle(self, name, module)
        self._modules[name] = module
        _StructureVersion.value += 1

    def register_parameter(self, name: str, param: Parameter) -> None:
        if not isinstance(param, Parameter):
            raise TypeError(
                f"register_parameter({name!r}, ...) needs a Parameter, got {type(param).__name__}"
            )
        self._parameters[name] = param
        _StructureVersion.value += 1

    # -- iteration ------------------------------------------------------------

    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self._modules.items()

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every descendant once each, with dotted names."""
        seen: set[int] = set()
        stack: list[tuple[str, Module]] = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [
                (f"{name}.{child_name}" if name else child_name, child)
                for child_name, child in module._modules.items()
            ]
            stack.extend(reversed(children))

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_parameters(
        self, prefix: str = "", recurse: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """Every Parameter once, named by its dotted path from this module."""
        seen: set[int] = set()
        owners = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for owner_name, owner in owners:
            for name, param in owner._parameters.items():
                if id(param) not in seen:
                    seen.add(id(param))
                    yield (f"{owner_name}.{name}" if owner_name else name), param

    # -- state ----------------------------------------------------------------

    def state_dict(self) -> dict[str, str]:
        """Parameter values by dotted name: plain strings, so JSON holds them."""
        return {name: param.value for name, param in self.named_parameters()}

    def load_state_dict(self, state: Mapping[str, str], strict: bool = True) -> None:
        """Set parameter values by name.

        With ``strict`` (the default) a missing or unexpected key is an error
        and nothing is changed, so a state saved from another pipeline cannot
        half-apply.
        """
        params = dict(self.named_parameters())
        unknown = sorted(set(state) - set(params))
        missing = sorted(set(params) - set(state))
        if strict and (unknown or missing):
            problems = []
            if unknown:
                problems.append(f"unexpected keys {unknown}")
            if missing:
                problems.append(f"missing keys {missing}")
            raise ConfigError(
                f"load_state_dict for {type(self).__name__}: {'; '.join(problems)} "
                "(pass strict=False to load the keys that match)"
            )
        matched = {name: value for name, value in state.items() if name in params}
        for name, value in matched.items():
            if not isinstance(value, str):
                raise ConfigError(f"load_state_dict: value for {name!r} must be a str")
        for name, value in matched.items():
            params[name].value = value

    def save(self, path: str | Path) -> None:
        """Write ``state_dict()`` as JSON."""
        Path(path).write_text(json.dumps(self.state_dict(), indent=2, ensure_ascii=False) + "\n")

    def load(self, path: str | Path, strict: bool = True) -> Self:
        """Read a JSON file written by ``save`` into this module's parameters."""
        try:
            state = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"cannot load parameters from {path}: {error}") from error
        if not isinstance(state, dict):
            raise ConfigError(f"cannot load parameters from {path}: expected a JSON object")
        self.load_state_dict(state, strict=strict)
        return self

    def train(self, mode: bool = True) -> Self:
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> Self:
        return self.train(False)

    # -- execution ------------------------------------------------------------

    def bind(self, resources: Any = None, **settings: Any) -> Self:
        """Attach resources and default execution settings; returns ``self``.

        ``resources`` may be a ResourceConfig, a plain mapping for one, or a
        ResourceManager (to share limits and usage counters between modules).
        """
        check_setting_names(settings, where=f"{type(self).__name__}.bind()")
        if resources is not None:
            resources = as_resource_manager(resources)
        object.__setattr__(self, "_bound_resources", resources)
        object.__setattr__(self, "_bound_settings", dict(settings))
        return self

    def resolved_settings(self, **overrides: Any) -> ResolvedSettings:
        """The settings a call of this module made here would run with.

        Strongest first: ``overrides`` (the call-time keywords of ``batch``
        or ``plait.run``), then ``bind()``, then the enclosing
        ``ExecutionSettings`` blocks, innermost first, then the defaults.
        Blocks are scoped by context, so the answer depends on where this is
        asked, exactly as a call's settings are fixed where the call is made.
        """
        check_setting_names(overrides, where=f"{type(self).__name__}.resolved_settings()")
        if overrides.get("resources") is not None:
            overrides["resources"] = as_resource_manager(overrides["resources"])
        return resolve_settings(overrides, self._bound_settings, self._bound_resources)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tracer = current_tracer()
        if tracer is not None:
            return tracer.call_module(self, args, kwargs)
        scope = current_scope()
        if scope is not None:
            return scope.call(self, args, kwargs)
        if self._bound_resources is not None or self._bound_settings or self._uses_llm():
            return self._call(args, kwargs)
        return self.forward(*args, **kwargs)

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        items = call_items(args, kwargs, where=f"{type(self).__name__}(...)")
        if items is not None:
            return Call.for_batch(self, items, {})
        return Call.single(self, args, kwargs, {})

    def batch(self, inputs: Any, **settings: Any) -> Call:
        """Run every element of ``inputs`` concurrently; results keep input order.

        An element that is a tuple is unpacked as positional arguments, a dict
        as keyword arguments, anything else is the single argument. To pass a
        dict or tuple as one argument, wrap it: ``(my_dict,)``. ``inputs`` may
        also be an (async) iterable, which is consumed lazily.
        """
        check_setting_names(settings, where=f"{type(self).__name__}.batch()")
        return Call.for_batch(
            self, batch_items(inputs, where=f"{type(self).__name__}.batch()"), settings
        )

    def stream(self, *args: Any, **kwargs: Any) -> TokenStream:
        """Run one call and yield its output's text as it arrives: ``async for delta in ...``.

        The output node's reply is streamed from the endpoint; when the output
        is not an LLM call (or comes from the cache or a checkpoint) its text
        is yielded once. ``.output`` holds the result after the loop. Not
        ``streaming=True``, which yields whole results of a batch.
        """
        return TokenStream.start(self, args, kwargs)

    def run_sync(self, *args: Any, **kwargs: Any) -> Any:
        """The blocking form of ``await module(...)``; works inside Jupyter too."""
        return run_blocking(self._call(args, kwargs))

    def _plait_is_leaf(self) -> bool:
        # Parameter containers hold prompts, not calls, so they do not make a
        # module composite; a dynamic module is one node whatever it holds.
        if self._plait_node_kind is NodeKind.DYNAMIC:
            return True
        return all(child._plait_parameter_container for child in self._modules.values())

    def _plait_graph(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> InferenceGraph:
        """The graph for calls of this shape, traced once and reused.

        The shape is the number of positional arguments and the keyword names;
        values never matter, which is why one trace serves a whole batch.
        """
        shape = (len(args), tuple(kwargs))
        graphs: dict[tuple[Any, ...], InferenceGraph] = self._plait_graphs
        graph = graphs.get((*shape, _StructureVersion.value))
        if graph is None:
            graph = Tracer().trace(self, *args, **kwargs)
            # Keyed by the version after tracing: a forward that builds a
            # throwaway container bumps the version while it is traced.
            version = _StructureVersion.value
            for stale in [key for key in graphs if key[2] != version]:
                del graphs[stale]
            graphs[(*shape, version)] = graph
        return graph

    def _uses_llm(self) -> bool:
        cache = self._plait_cache
        key = ("uses_llm", _StructureVersion.value)
        found = cache.get(key)
        if found is None:
            found = any(module._plait_node_kind is NodeKind.LLM for module in self.modules())
            cache.clear()
            cache[key] = found
        return bool(found)

    # -- backward -------------------------------------------------------------

    def backward(
        self, feedback: str, ctx: BackwardContext
    ) -> BackwardResult | Awaitable[BackwardResult]:
        """Turn feedback on this module's output into feedback on its inputs and parameters.

        Called during ``await loss.backward()`` for a module that ran as one
        node (a module without children, or a dynamic one). The default
        blames every input and every learnable parameter with the same
        feedback, which suits modules that reshape text without judgement of
        their own; for a dynamic module that made calls it walks the tape of
        them instead (``ctx.walk_inside``). Override it (plain or ``async
        def``) to route feedback more precisely; ``ctx.ask(prompt)`` consults
        the backward pass's LLM.
        """
        return default_backward(feedback, ctx)

    # -- display --------------------------------------------------------------

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): {_indent(repr(child))}" for name, child in self._modules.items()]
        lines += [f"({name}): {param!r}" for name, param in self._parameters.items()]
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        body = "\n  ".join(([extra] if extra else []) + lines)
        return f"{type(self).__name__}(\n  {body}\n)"


def refuse_cycle(parent: Module, name: str, child: Module) -> None:
    """Refuse to register ``child`` under ``parent`` if ``parent`` is inside it.

    Checked when the child is attached, the one moment the mistake has a
    name: found later, a cycle is an endless repr or trace. Sharing one
    child between two parents is fine; only a loop back to ``parent`` is not.
    The walk covers the child's subtree once, which building a tree costs anyway.
    """
    for path, module in child.named_modules():
        if module is parent:
            owner = type(parent).__name__
            where = f"cannot register {type(child).__name__} as {owner}.{name}"
            if not path:
                raise ModuleCycleError(f"{where}: a module cannot be its own child")
            raise ModuleCycleError(
                f"{where}: {owner}.{name}.{path} would be that {owner} itself, so it would "
                "contain itself"
            )


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")
