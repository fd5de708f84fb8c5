"""Durability over real HTTP: kill -9 and resume, stale results, the cache, budgets.

The simulator runs in its own process (``Simulator.spawn``), so it outlives a
killed client and its request counter covers every run of a test.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _durable_batch import (
    CALLS_PER_INPUT,
    INPUTS,
    MAX_CONCURRENT,
    TwoStep,
    finished_inputs,
    run_batch,
)

from plait import LLMInference
from plait.errors import BudgetExceededError, CheckpointError
from plait.execution import CheckpointManager
from plait.resources import ResourceManager
from plait.storage.checkpoint_schema import FILENAME
from plait.testing import Simulator, SpawnedSimulator

SCRIPT = Path(__file__).with_name("_durable_batch.py")
GUARD = 60.0


@pytest.fixture(scope="module")
def sim() -> Iterator[SpawnedSimulator]:
    with Simulator.spawn(latency=0.02) as server:
        yield server


@pytest.mark.parametrize("kill_after", [5, 150, 280])
def test_a_killed_batch_resumes_without_paying_twice(
    sim: SpawnedSimulator, tmp_path: Path, kill_after: int
) -> None:
    """SIGKILL mid-batch, rerun: same results as an uninterrupted run, and the
    server sees no more calls than the batch needs plus what the kill cut off.

    What a kill can cost: the requests on the wire (at most ``MAX_CONCURRENT``)
    and one group commit's worth of completions the writer had not yet
    committed (``test_crash_recovery`` measures that bound more closely).
    """
    sim.reset_stats()
    reference = asyncio.run(run_batch(sim.base_url, None))
    assert sim.stats().requests == len(INPUTS) * CALLS_PER_INPUT
    sim.reset_stats()

    checkpoint = tmp_path / "ckpt"
    child = subprocess.Popen(
        [sys.executable, str(SCRIPT), sim.base_url, str(checkpoint)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + GUARD
        while finished_inputs(checkpoint) < kill_after:
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline, "the child made no progress"
            time.sleep(0.005)
        child.kill()
    finally:
        child.wait(GUARD)
    at_kill = finished_inputs(checkpoint)
    assert kill_after <= at_kill < len(INPUTS)
    conn = sqlite3.connect(checkpoint / FILENAME)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    assert CheckpointManager(checkpoint).run().status == "interrupted"

    resumed = asyncio.run(run_batch(sim.base_url, str(checkpoint)))
    assert resumed == reference
    total = sim.stats().requests
    needed = len(INPUTS) * CALLS_PER_INPUT
    assert needed <= total <= needed + MAX_CONCURRENT + 4
    info = CheckpointManager(checkpoint).run()
    assert (info.finished, info.status) == (len(INPUTS), "finished")


def test_a_changed_prompt_is_detected_before_any_request(
    sim: SpawnedSimulator, tmp_path: Path
) -> None:
    checkpoint = str(tmp_path / "ckpt")
    asyncio.run(run_batch(sim.base_url, checkpoint))
    sim.reset_stats()
    with pytest.raises(CheckpointError, match=r"node 'draft'.*system_prompt"):
        asyncio.run(run_batch(sim.base_url, checkpoint, system_prompt="Be thorough."))
    assert sim.stats().requests == 0


async def test_a_second_run_with_the_cache_makes_zero_requests(
    sim: SpawnedSimulator, tmp_path: Path
) -> None:
    resources = ResourceManager({"sim": {"model": "m", "base_url": sim.base_url, "api_key": "k"}})
    try:
        module = TwoStep().bind(resources=resources, cache=tmp_path / "cache")
        inputs = [f"cached {index}" for index in range(25)]
        sim.reset_stats()
        first = await asyncio.wait_for(module(inputs), GUARD)
        assert sim.stats().requests == 50
        sim.reset_stats()
        second = await asyncio.wait_for(module(inputs), GUARD)
        assert second == first
        assert sim.stats().requests == 0
        assert resources.usage()["sim"].cache_hits == 50
    finally:
        await resources.aclose()


async def test_a_budget_stops_a_run_and_a_resumed_run_finishes_it(
    sim: SpawnedSimulator, tmp_path: Path
) -> None:
    resources = ResourceManager(
        {"sim": {"model": "m", "base_url": sim.base_url, "api_key": "k", "max_concurrent": 4}}
    )
    inputs = [f"budget {index}" for index in range(40)]
    settings: dict[str, Any] = {"checkpoint_dir": tmp_path, "max_concurrent": 4}
    try:
        module = LLMInference("sim", temperature=0.0).bind(resources=resources)
        sim.reset_stats()
        with pytest.raises(BudgetExceededError) as stopped:
            await asyncio.wait_for(module.batch(inputs, max_tokens_total=150, **settings), GUARD)
        first_requests = sim.stats().requests
        assert 0 < first_requests < len(inputs)
        assert "inputs finished" in str(stopped.value)
        run = CheckpointManager(tmp_path).run()
        assert run.status == "stopped"
        assert run.finished == first_requests  # every reply paid for was kept

        outputs = await asyncio.wait_for(
            module.batch(inputs, max_tokens_total=100_000, **settings), GUARD
        )
        assert outputs == [f"ECHO: {text}" for text in inputs]
        assert sim.stats().requests == len(inputs)
    finally:
        await resources.aclose()


def test_exported_results_match_the_run(sim: SpawnedSimulator, tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    outputs = asyncio.run(run_batch(sim.base_url, str(checkpoint)))
    exported = tmp_path / "results.jsonl"
    assert CheckpointManager(checkpoint).export(exported) == len(INPUTS)
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [row["output"] for row in rows] == outputs
    assert [row["input"] for row in rows] == INPUTS
