"""Durable tool loops: kill -9 a checkpointed batch mid-way, rerun it, count the tool runs.

The simulator runs in its own process (``Simulator.spawn`` with scripted tool
calls) so the batch's process can be killed without taking the server down.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from _durable_tools import INPUTS, RULES, run_batch

from plait.storage.checkpoint_schema import FILENAME
from plait.testing import Simulator, SpawnedSimulator

SCRIPT = Path(__file__).with_name("_durable_tools.py")
GUARD = 60.0
STORED_RUN = re.compile(r"recorded (\d+-[ab])")


@pytest.fixture(scope="module")
def sim() -> Iterator[SpawnedSimulator]:
    with Simulator.spawn(latency=0.05, rules=RULES) as server:
        yield server


def checkpoint_state(directory: Path) -> tuple[set[int], set[str]]:
    """The inputs finished, and the tool runs stored for inputs still open."""
    path = directory / FILENAME
    if not path.exists():
        return set(), set()
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=GUARD)
    try:
        finished = {row[0] for row in conn.execute("SELECT position FROM inputs")}
        rows = conn.execute("SELECT value FROM nodes WHERE node_id LIKE '%@%'").fetchall()
    except sqlite3.OperationalError:
        return set(), set()
    finally:
        conn.close()
    stored = {match for (value,) in rows for match in STORED_RUN.findall(value)}
    return finished, stored


def runs(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_a_killed_batch_of_tool_loops_does_not_run_a_stored_tool_call_again(
    sim: SpawnedSimulator, tmp_path: Path
) -> None:
    checkpoint, first_runs = tmp_path / "ckpt", tmp_path / "runs-1.txt"
    sim.reset_stats()
    child = subprocess.Popen(
        [sys.executable, str(SCRIPT), sim.base_url, str(checkpoint), str(first_runs)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + GUARD
        # Kill with some inputs done and tool results of unfinished ones stored.
        while True:
            finished, stored = checkpoint_state(checkpoint)
            if len(finished) >= 3 and len(stored) >= 2:
                break
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline, "the child made no progress"
            time.sleep(0.005)
        child.kill()
    finally:
        child.wait(GUARD)
    finished, stored = checkpoint_state(checkpoint)
    assert len(finished) < len(INPUTS)
    assert stored, "the kill came too late to leave stored tool runs"
    before = runs(first_runs)
    assert stored <= set(before)
    requests_before = sim.stats().requests

    second_runs = tmp_path / "runs-2.txt"
    outputs = asyncio.run(run_batch(sim.base_url, str(checkpoint), second_runs))

    assert outputs == [f"ECHO: {text}" for text in INPUTS]
    again = runs(second_runs)
    # No stored tool run and no run of a finished input happens again ...
    assert not set(again) & stored
    assert not {key for key in again if int(key.split("-")[0]) in finished}
    # ... every run happens once in the rerun, and all of them happen across both runs.
    assert max(Counter(again).values()) == 1
    every = {f"{index}-{half}" for index in range(len(INPUTS)) for half in "ab"}
    assert set(before) | set(again) == every
    # The rerun re-ran at most what was in flight at the kill.
    assert len(again) <= len(every) - len(stored) - 2 * len(finished)
    # Stored turns were replayed too: fewer than two requests per open input.
    open_inputs = len(INPUTS) - len(finished)
    assert sim.stats().requests - requests_before < 2 * open_inputs
