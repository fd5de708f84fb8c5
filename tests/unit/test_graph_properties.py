"""Property tests: random DAGs of LLM calls, traced and run on an in-process fake.

Hand-written graphs only cover the shapes their authors thought of. Here
hypothesis builds a composite module whose ``forward`` makes N calls, each
prompted by an f-string over a random subset of the earlier replies and,
optionally, the input. A reference interpreter computes what every prompt
and output must be, so the properties can be checked exactly: every node runs
once per input, never before the nodes it depends on have finished, never
with more than ``max_concurrent`` calls open at once, and the traced graph's
ordering and reachability agree with the DAG that was generated.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from plait import BatchResult, LLMInference, Module, ModuleList, trace
from plait.clients.base import ChatRequest
from plait.errors import PermanentError
from plait.graph import InferenceGraph, NodeKind
from plait.testing import FakeResources, Reply, prompt_of

GUARD = 10.0
"""Upper bound on one example's run, so a scheduling bug fails instead of hanging."""

PROPERTY_SETTINGS = settings(max_examples=50, deadline=None)


@dataclass(frozen=True)
class DagSpec:
    """Node ``i`` embeds the replies of ``deps[i]`` (earlier nodes) and, if
    ``uses_input[i]``, the input in its prompt."""

    deps: tuple[tuple[int, ...], ...]
    uses_input: tuple[bool, ...]

    def __len__(self) -> int:
        return len(self.deps)


@st.composite
def dag_specs(draw: st.DrawFn, max_nodes: int = 10) -> DagSpec:
    size = draw(st.integers(min_value=1, max_value=max_nodes))
    deps: list[tuple[int, ...]] = []
    for index in range(size):
        chosen = draw(st.sets(st.integers(0, index - 1), max_size=index)) if index else set()
        deps.append(tuple(sorted(chosen)))
    uses_input = tuple(draw(st.lists(st.booleans(), min_size=size, max_size=size)))
    return DagSpec(tuple(deps), uses_input)


def reply_for(prompt: str) -> str:
    """The fake model's reply: short, but a different text for every prompt, so a
    prompt sent with the wrong upstream text is visible in every output after it."""
    return f"r{zlib.crc32(prompt.encode()):08x}"


def build_prompt(index: int, spec: DagSpec, replies: list[Any], given: Any) -> str:
    """Node ``index``'s prompt; used both inside the traced forward (on proxies)
    and by the reference interpreter (on real text), so both build it alike."""
    prompt = f"n{index}:"
    if spec.uses_input[index]:
        prompt = f"{prompt} in={given}"
    for dep in spec.deps[index]:
        prompt = f"{prompt} <{replies[dep]}>"
    return prompt


def expected_prompts(spec: DagSpec, given: str) -> list[str]:
    prompts: list[str] = []
    replies: list[str] = []
    for index in range(len(spec)):
        prompt = build_prompt(index, spec, replies, given)
        prompts.append(prompt)
        replies.append(reply_for(prompt))
    return prompts


def node_id(index: int) -> str:
    return f"calls.{index}"


class RandomDag(Module):
    """One LLM call per spec node, wired by prompt composition alone."""

    def __init__(self, spec: DagSpec) -> None:
        super().__init__()
        self.spec = spec
        self.calls = ModuleList([LLMInference("fast") for _ in range(len(spec))])

    def forward(self, given: Any) -> Any:
        replies: list[Any] = []
        for index in range(len(self.spec)):
            replies.append(self.calls[index](build_prompt(index, self.spec, replies, given)))
        return tuple(replies)


def stepping_resources(salt: int, max_steps: int, failing: Iterable[str] = ()) -> FakeResources:
    """Resources whose calls yield to the loop a scripted number of times.

    Yielding instead of sleeping makes the interleaving of concurrent calls a
    function of the example alone (no wall clock), so hypothesis can shrink a
    failure to a reproducible case. A call's ``start_seq`` and ``end_seq`` are
    positions in one shared event counter, which is all the ordering
    properties need.
    """
    refused = frozenset(failing)

    async def reply(request: ChatRequest) -> Reply:
        prompt = prompt_of(request)
        for _ in range(zlib.crc32(f"{salt}:{prompt}".encode()) % (max_steps + 1)):
            await asyncio.sleep(0)
        if prompt in refused:
            raise PermanentError(f"scripted failure for {prompt!r}", status_code=400)
        return reply_for(prompt)

    return FakeResources(reply, aliases=["fast"])


def node_of(prompt: str) -> int:
    return int(prompt[1 : prompt.index(":")])


# -- execution -------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    spec=dag_specs(),
    max_concurrent=st.integers(1, 8),
    batch_size=st.integers(1, 4),
    salt=st.integers(0, 2**16),
    max_steps=st.integers(0, 4),
)
def test_every_node_runs_once_after_its_dependencies_within_the_cap(
    spec: DagSpec, max_concurrent: int, batch_size: int, salt: int, max_steps: int
) -> None:
    inputs = [f"x{j}" for j in range(batch_size)]
    fake = stepping_resources(salt, max_steps)
    module = RandomDag(spec).bind(resources=fake, max_concurrent=max_concurrent)

    outputs = asyncio.run(asyncio.wait_for(module(inputs), GUARD))

    prompts = {given: expected_prompts(spec, given) for given in inputs}
    assert outputs == [tuple(reply_for(p) for p in prompts[given]) for given in inputs]
    every_prompt = [prompt for given in inputs for prompt in prompts[given]]
    assert Counter(call.prompt for call in fake.calls) == Counter(every_prompt)
    assert fake.peak <= max_concurrent

    # Nodes that see neither the input nor anything that did send the same
    # prompt for every input, so a call is matched to the inputs it could serve.
    ends: dict[str, list[int]] = {}
    for call in fake.calls:
        assert call.end_seq is not None
        ends.setdefault(call.prompt, []).append(call.end_seq)
    for call in fake.calls:
        index = node_of(call.prompt)
        candidates = [given for given in inputs if prompts[given][index] == call.prompt]
        assert any(
            all(
                any(end < call.start_seq for end in ends[prompts[given][dep]])
                for dep in spec.deps[index]
            )
            for given in candidates
        ), f"{call.prompt!r} started before one of its dependencies finished"


@PROPERTY_SETTINGS
@given(spec=dag_specs(), data=st.data(), max_concurrent=st.integers(1, 8))
def test_a_failed_node_stops_exactly_its_descendants(
    spec: DagSpec, data: st.DataObject, max_concurrent: int
) -> None:
    failing = data.draw(st.integers(0, len(spec) - 1), label="failing node")
    prompts = expected_prompts(spec, "x")
    fake = stepping_resources(salt=failing, max_steps=2, failing=[prompts[failing]])
    module = RandomDag(spec).bind(resources=fake, max_concurrent=max_concurrent, streaming=True)

    [result] = asyncio.run(asyncio.wait_for(module(["x"]), GUARD))

    assert isinstance(result, BatchResult)
    assert isinstance(result.error, PermanentError)
    assert prompts[failing] in str(result.error)
    stopped = reference_descendants(spec)[failing]
    ran = Counter(call.prompt for call in fake.calls)
    assert ran == Counter(p for index, p in enumerate(prompts) if index not in stopped)


# -- graph invariants ------------------------------------------------------------


def reference_descendants(spec: DagSpec) -> list[set[int]]:
    """Transitive dependents of every spec node, computed from the spec alone."""
    found: list[set[int]] = [set() for _ in range(len(spec))]
    for index in reversed(range(len(spec))):
        for later in range(index + 1, len(spec)):
            if index in spec.deps[later]:
                found[index] |= {later} | found[later]
    return found


@PROPERTY_SETTINGS
@given(spec=dag_specs(max_nodes=12))
def test_the_traced_graph_is_the_generated_dag(spec: DagSpec) -> None:
    graph = trace(RandomDag(spec), "x")

    llm_ids = {nid for nid, node in graph.nodes.items() if node.kind is NodeKind.LLM}
    assert llm_ids == {node_id(index) for index in range(len(spec))}
    assert set(graph.nodes) == llm_ids | {"input:0"}
    for index in range(len(spec)):
        wanted = {node_id(dep) for dep in spec.deps[index]}
        if spec.uses_input[index]:
            wanted.add("input:0")
        assert set(graph.nodes[node_id(index)].dependencies) == wanted

    descendants = reference_descendants(spec)
    for index in range(len(spec)):
        assert graph.descendants(node_id(index)) == {node_id(d) for d in descendants[index]}
    check_graph_invariants(graph)


def check_graph_invariants(graph: InferenceGraph) -> None:
    """Properties every InferenceGraph must have, whatever built it."""
    ids = set(graph.nodes)
    for nid, node in graph.nodes.items():
        assert len(set(node.dependencies)) == len(node.dependencies)
        for dep in node.dependencies:
            assert nid in graph.nodes[dep].dependents
        for dependent in node.dependents:
            assert nid in graph.nodes[dependent].dependencies

    order = graph.topological_order()
    assert sorted(order) == sorted(ids)
    position = {nid: index for index, nid in enumerate(order)}
    for dep, nid in graph.edges():
        assert position[dep] < position[nid]

    ancestors = {nid: graph.ancestors(nid) for nid in ids}
    descendants = {nid: graph.descendants(nid) for nid in ids}
    for a in ids:
        assert a not in descendants[a]
        assert a not in ancestors[a]
        for b in ids:
            assert (b in descendants[a]) == (a in ancestors[b])
        for b in descendants[a]:
            assert position[a] < position[b]
            assert descendants[b] <= descendants[a]
