"""What makes two runs "the same module", for checkpoints.

A stored result may be reused only if the module that would recompute it is
the one that produced it. The traced graph says everything plait can see
about that: each node's module class and settings (alias, temperature,
response schema, request options, system prompt), the literal text of every
prompt template, the current value of every Parameter and how the nodes are
wired. :func:`describe` turns a graph into plain JSON data, the fingerprint
is its :func:`~plait.storage.codec.content_hash`, and :func:`differences`
explains in words what changed between two descriptions, so a mismatch error
can say "the prompt of node 'summary' changed" rather than "hash differs".

Classes are named without their Python module, so a pipeline run as a
script (``__main__``) and the same pipeline imported are the same version.
What the graph cannot see is the Python code inside a custom module's
``forward``: editing it is not detected (see design_docs/persistence.md).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from plait.graph import InferenceGraph, NodeKind, NodeRef, ParamRef, Template

_SKIPPED_ATTRIBUTES = frozenset({"training"})
_MAX_DIFFERENCES = 8


def describe(graph: InferenceGraph) -> dict[str, Any]:
    """The graph as JSON data: everything that decides what its nodes compute."""
    nodes = []
    for node_id in graph.topological_order():
        node = graph.nodes[node_id]
        entry: dict[str, Any] = {
            "id": node_id,
            "kind": node.kind.value,
            "path": node.module_path,
            "deps": list(node.dependencies),
        }
        if node.kind is not NodeKind.INPUT:
            entry["module"] = _module_config(node.module)
            entry["args"] = _spec(node.args)
            entry["kwargs"] = _spec(node.kwargs)
        nodes.append(entry)
    return {
        "nodes": nodes,
        "output": _spec(graph.output),
        "parameters": {name: param.value for name, param in graph.parameters.items()},
    }


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable lines naming what differs between two descriptions."""
    lines: list[str] = []
    old_nodes = {node["id"]: node for node in old.get("nodes", [])}
    new_nodes = {node["id"]: node for node in new.get("nodes", [])}
    added = [nid for nid in new_nodes if nid not in old_nodes]
    removed = [nid for nid in old_nodes if nid not in new_nodes]
    if added:
        lines.append(f"new node(s): {', '.join(map(repr, added))}")
    if removed:
        lines.append(f"node(s) no longer present: {', '.join(map(repr, removed))}")
    for node_id, before in old_nodes.items():
        after = new_nodes.get(node_id)
        if after is not None:
            lines.extend(_node_differences(node_id, before, after))
    old_params = old.get("parameters", {})
    for name, value in new.get("parameters", {}).items():
        if name in old_params and old_params[name] != value:
            lines.append(f"parameter {name!r} has a different value")
    if old.get("output") != new.get("output") and not lines:
        lines.append("the module returns a different output structure")
    if not lines:
        lines.append("the module's structure differs")
    if len(lines) > _MAX_DIFFERENCES:
        lines = [*lines[:_MAX_DIFFERENCES], f"... and {len(lines) - _MAX_DIFFERENCES} more"]
    return lines


def _node_differences(node_id: str, before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    lines = []
    name = f"node {node_id!r}" + (f" ({after['path']})" if after.get("path") else "")
    old_module, new_module = before.get("module", {}), after.get("module", {})
    if old_module.get("class") != new_module.get("class"):
        lines.append(f"{name} is a different module class")
    else:
        changed = sorted(
            key
            for key in set(old_module) | set(new_module)
            if key != "class" and old_module.get(key) != new_module.get(key)
        )
        if changed:
            lines.append(f"{name} has different {', '.join(changed)}")
    if before.get("args") != after.get("args") or before.get("kwargs") != after.get("kwargs"):
        lines.append(f"{name} is called with a different prompt or arguments")
    if before.get("deps") != after.get("deps"):
        lines.append(f"{name} depends on different nodes")
    return lines


def _module_config(module: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"class": type(module).__qualname__}
    attributes = getattr(module, "__dict__", {})
    for key, value in attributes.items():
        if key.startswith("_") or key in _SKIPPED_ATTRIBUTES or _is_module(value):
            continue
        config[key] = _spec(value)
    return config


def _is_module(value: Any) -> bool:
    return hasattr(value, "_modules") and hasattr(value, "forward")


def _spec(value: Any) -> Any:
    """Placeholders and settings as JSON data; unknown objects by their class only.

    Not :func:`plait.values.jsonable`: an object's ``str`` often holds its
    address, which would change the fingerprint in every process, and a
    placeholder must say which node or parameter it stands for.
    """
    cls = value.__class__
    if value is None or cls in (str, int, float, bool):
        return value
    if cls is NodeRef:
        return {"ref": value.id}
    if cls is ParamRef:
        return {"param": value.param.value}
    if cls is Template:
        return {"template": [_spec(part) for part in value.parts]}
    if getattr(value, "_plait_parameter", False):
        return {"param": value.value}
    if cls is list:
        return [_spec(item) for item in value]
    if cls is tuple:
        return {"tuple": [_spec(item) for item in value]}
    if cls is dict:
        return {str(key): _spec(item) for key, item in value.items()}
    if isinstance(value, type):
        if issubclass(value, BaseModel):
            return {"model": value.__qualname__, "schema": value.model_json_schema()}
        return {"class": value.__qualname__}
    if isinstance(value, str | int | float):
        return value
    return {"object": cls.__qualname__}
