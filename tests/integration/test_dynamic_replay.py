"""Durable replay of dynamic forwards: kill -9 a checkpointed batch of loops, rerun it."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _durable_loop import CALLS_PER_INPUT, INPUTS, MAX_CONCURRENT, RULES, run_batch

from plait.execution.dynamic import MISSING
from plait.storage.checkpoint_schema import FILENAME
from plait.testing import Simulator, SpawnedSimulator

SCRIPT = Path(__file__).with_name("_durable_loop.py")
GUARD = 60.0


@pytest.fixture(scope="module")
def sim() -> Iterator[SpawnedSimulator]:
    with Simulator.spawn(latency=0.02, rules=RULES) as server:
        yield server


def stored_calls(directory: Path) -> int:
    """Calls stored for inputs still running (their rows go once the input finishes)."""
    path = directory / FILENAME
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=GUARD)
    try:
        query = "SELECT COUNT(*) FROM nodes WHERE node_id LIKE '%@%'"
        return int(conn.execute(query).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def finished_inputs(directory: Path) -> int:
    path = directory / FILENAME
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=GUARD)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM inputs").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def test_a_killed_batch_of_loops_replays_its_calls_and_spends_only_what_was_in_flight(
    sim: SpawnedSimulator, tmp_path: Path
) -> None:
    sim.reset_stats()
    reference = asyncio.run(run_batch(sim.base_url, None))
    needed = len(INPUTS) * CALLS_PER_INPUT
    assert sim.stats().requests == needed
    assert reference[0] == "item 0: draft v3"
    sim.reset_stats()

    checkpoint = tmp_path / "ckpt"
    child = subprocess.Popen(
        [sys.executable, str(SCRIPT), sim.base_url, str(checkpoint)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + GUARD
        # Kill with loops half done: some inputs finished, calls of others stored.
        while finished_inputs(checkpoint) < 10 or stored_calls(checkpoint) < 2:
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline, "the child made no progress"
            time.sleep(0.005)
        child.kill()
    finally:
        child.wait(GUARD)
    assert finished_inputs(checkpoint) < len(INPUTS)
    assert stored_calls(checkpoint) >= 2

    resumed = asyncio.run(run_batch(sim.base_url, str(checkpoint)))
    assert resumed == reference
    total = sim.stats().requests
    # Both runs together: what the batch needs, plus at most the requests on the
    # wire at the kill (checkpoint writes are group-committed).
    assert needed <= total <= needed + MAX_CONCURRENT
    assert stored_calls(checkpoint) == 0


class _Session:
    """Stands in for the checkpoint session: keeps the rows a forward stores."""

    def __init__(self) -> None:
        self.rows: dict[str, object] = {}

    def node_done(self, key: object, node_id: str, node: object, value: object) -> None:
        self.rows[node_id] = value


def test_replay_returns_matching_calls_and_goes_live_from_the_first_that_differs() -> None:
    from _durable_loop import Refine

    from plait.execution.replay import CallStore
    from plait.execution.state import ExecutionState, plan_for
    from plait.tracing.tracer import trace

    module = Refine()
    session = _Session()
    store = CallStore(session)  # type: ignore[arg-type]
    state = ExecutionState(plan_for(trace(module, "t")), ("t",), index=0)
    first = store.replay(state, "refine")
    first.store(0, module.write, ("Write: t",), {}, "draft v1")
    first.store(1, module.judge, ("Judge: t draft v1",), {}, "FAIL")
    first.store(2, module.write, ("Fix: t draft v1",), {}, "draft v2")
    assert sorted(session.rows) == ["refine@0", "refine@1", "refine@2"]

    store.adopt(0, session.rows)
    module.judge.system_prompt = "Be strict."  # the judge's calls now differ
    again = store.replay(state, "refine")
    assert again.lookup(0, module.write, ("Write: t",), {}) == "draft v1"
    assert again.lookup(1, module.judge, ("Judge: t draft v1",), {}) is MISSING
    # live from the first call that differs, even where a later one would match
    assert again.lookup(2, module.write, ("Fix: t draft v1",), {}) is MISSING
