"""Durable replay beyond flat text loops: pydantic outputs and dynamic modules three deep.

Each test kills a checkpointed batch (a child process) with SIGKILL mid-run,
reads what the checkpoint file holds, and runs the same program again.
Calls are sequential inside each loop and replies scripted, so the file
alone says how many calls the rerun may skip: the rerun must send exactly
the rest, counted by the server.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _durable_dynamic import LOOP_CALLS, MAX_CONCURRENT, RULES, inputs_of, run_batch

from plait.storage.checkpoint_schema import FILENAME
from plait.testing import Simulator, SpawnedSimulator

SCRIPT = Path(__file__).with_name("_durable_dynamic.py")
GUARD = 60.0
NESTED_CALLS = 2 * LOOP_CALLS + 1
"""Per input of the nested pipeline: two loops, then the summary."""
RESENT_AT_MOST = 2 * MAX_CONCURRENT
"""What a kill may cost on a rerun: the calls on the wire, plus replies that
arrived while the last commit was under way (the checkpoint's group-commit
contract). The second part is not zero: on a loaded machine a commit spans
a few 30 ms replies (a kill at a moment with 4 in flight re-sent 6 and 7)."""


@pytest.fixture(scope="module")
def sim() -> Iterator[SpawnedSimulator]:
    with Simulator.spawn(latency=0.03, rules=RULES) as server:
        yield server


class Stored:
    """What the checkpoint file held at one moment: finished inputs and stored call rows."""

    def __init__(self, directory: Path) -> None:
        self.finished: set[int] = set()
        self.calls: dict[int, dict[str, str]] = {}
        path = directory / FILENAME
        if not path.exists():
            return
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=GUARD)
        try:
            self.finished = {row[0] for row in conn.execute("SELECT position FROM inputs")}
            query = "SELECT position, node_id, value FROM nodes WHERE node_id LIKE '%@%'"
            for position, node_id, value in conn.execute(query):
                self.calls.setdefault(position, {})[node_id] = value
        except sqlite3.OperationalError:
            pass  # the child has not created the tables yet
        finally:
            conn.close()


def kill_when(
    sim: SpawnedSimulator, pipeline: str, directory: Path, ready: Callable[[Stored], bool]
) -> Stored:
    """Run the pipeline in a child process, SIGKILL it once ``ready``; what was stored."""
    child = subprocess.Popen(
        [sys.executable, str(SCRIPT), pipeline, sim.base_url, str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + GUARD
        while not ready(Stored(directory)):
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline, "the child never reached the kill point"
            time.sleep(0.003)
        child.kill()
    finally:
        child.wait(GUARD)
    assert child.returncode == -9
    stored = Stored(directory)
    assert len(stored.finished) < len(inputs_of(pipeline))
    return stored


def rerun(sim: SpawnedSimulator, pipeline: str, directory: Path) -> list[Any]:
    """The same program run again on the same checkpoint, to the end."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), pipeline, sim.base_url, str(directory)],
        capture_output=True,
        text=True,
        timeout=GUARD,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    outputs: list[Any] = json.loads(done.stdout)
    return outputs


def test_calls_returning_pydantic_models_replay_after_kill_9(
    sim: SpawnedSimulator, tmp_path: Path
) -> None:
    sim.reset_stats()
    reference = asyncio.run(run_batch("structured", sim.base_url, None))
    needed = len(reference) * LOOP_CALLS
    assert sim.stats().requests == needed
    assert reference[0] == "item 0: draft v3"
    sim.reset_stats()

    def verdicts(stored: Stored) -> int:
        rows = [value for calls in stored.calls.values() for value in calls.values()]
        return sum("Verdict" in value for value in rows)

    # Killed with judge replies (Verdict rows) stored for unfinished inputs.
    directory = tmp_path / "ckpt"
    stored = kill_when(
        sim, "structured", directory, lambda now: len(now.finished) >= 5 and verdicts(now) >= 2
    )
    assert verdicts(stored) >= 2
    first_run = sim.stats().requests
    sim.reset_stats()

    resumed = rerun(sim, "structured", directory)
    assert resumed == reference
    saved = LOOP_CALLS * len(stored.finished) + sum(map(len, stored.calls.values()))
    # Every stored call, Verdicts included, comes back without a request.
    assert sim.stats().requests == needed - saved
    assert first_run + sim.stats().requests <= needed + RESENT_AT_MOST


def nested_saved(calls: dict[str, str]) -> int:
    """Calls a rerun of one unfinished input of the nested pipeline may skip.

    A stored call covers everything it ran (the middle level's row is both
    loops, a loop's row all its calls); only where it is missing do the rows
    of the level below count.
    """
    saved = NESTED_CALLS - 1 if "outer@0" in calls else 0
    if not saved:
        for loop in range(2):
            if f"outer.middle#0@{loop}" in calls:
                saved += LOOP_CALLS
            else:
                prefix = f"outer.middle#0.inner#{loop}@"
                saved += sum(row.startswith(prefix) for row in calls)
    return saved + ("outer@1" in calls)


def test_nested_dynamic_calls_replay_one_by_one_three_levels_deep(
    sim: SpawnedSimulator, tmp_path: Path
) -> None:
    sim.reset_stats()
    reference = asyncio.run(run_batch("nested", sim.base_url, None))
    needed = len(reference) * NESTED_CALLS
    assert sim.stats().requests == needed
    assert reference[0] == "draft v3 / draft v3 | summary"
    sim.reset_stats()

    def unsaved_answers(stored: Stored) -> int:
        """Answered calls of unfinished inputs that the levels above do not cover."""
        covered = NESTED_CALLS * len(stored.finished)
        for calls in stored.calls.values():
            covered += (NESTED_CALLS - 1) * ("outer@0" in calls) + ("outer@1" in calls)
        return sim.stats().completed - covered

    # Killed with more innermost calls answered than a kill may cost: if
    # those were lost, the rerun would have to pay for them again.
    directory = tmp_path / "ckpt"
    stored = kill_when(
        sim,
        "nested",
        directory,
        lambda now: len(now.finished) >= 2 and unsaved_answers(now) > RESENT_AT_MOST,
    )
    first_run = sim.stats().requests
    sim.reset_stats()

    resumed = rerun(sim, "nested", directory)
    assert resumed == reference
    saved = NESTED_CALLS * len(stored.finished) + sum(map(nested_saved, stored.calls.values()))
    assert sim.stats().requests == needed - saved
    assert first_run + sim.stats().requests <= needed + RESENT_AT_MOST
    assert any(".inner#" in row for calls in stored.calls.values() for row in calls)
    assert not any(Stored(directory).calls.values())


class _Session:
    """Stands in for the checkpoint session: keeps the rows forwards store."""

    def __init__(self) -> None:
        self.rows: dict[str, object] = {}

    def node_done(self, key: object, node_id: str, node: object, value: object) -> None:
        self.rows[node_id] = value


def test_a_nested_forward_replays_unless_its_parent_differed_before_it() -> None:
    from _durable_dynamic import Outer

    from plait.execution.dynamic import MISSING
    from plait.execution.replay import CallStore
    from plait.execution.state import ExecutionState, plan_for
    from plait.tracing.tracer import trace

    module = Outer()
    inner = module.middle.inner
    session = _Session()
    store = CallStore(session)  # type: ignore[arg-type]
    state = ExecutionState(plan_for(trace(module, "t")), ("t",), index=0)
    node = state.plan.nodes["outer"]
    outer = store.replay(state, "outer")
    deep = outer.nested(0, "outer.middle#0", node)
    assert deep is not None
    deepest = deep.nested(0, "outer.middle#0.inner#0", node)
    assert deepest is not None
    deepest.store(0, inner.write, ("Write: t a",), {}, "draft v1")
    assert sorted(session.rows) == ["outer.middle#0.inner#0@0"]

    store.adopt(0, session.rows)
    again = store.replay(state, "outer")
    level2 = again.nested(0, "outer.middle#0", node)
    assert level2 is not None
    level3 = level2.nested(0, "outer.middle#0.inner#0", node)
    assert level3 is not None
    assert level3.lookup(0, inner.write, ("Write: t a",), {}) == "draft v1"

    # Once call 1 of a forward differs, what it and later calls run is live all the way down,
    # while what call 0 ran may still replay.
    store.adopt(0, {"outer@1": ["not this call", "x"], "outer.middle#0.inner#0@0": ["f", "y"]})
    third = store.replay(state, "outer")
    assert third.lookup(1, module.sum, ("Sum: t",), {}) is MISSING
    assert third.nested(1, "outer.middle#1", node) is None
    assert third.nested(2, "outer.middle#2", node) is None
    assert third.nested(0, "outer.middle#0", node) is not None
