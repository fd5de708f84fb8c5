"""kill -9 with default settings: what a crash may cost, and what a returned call guarantees.

The simulator runs in its own process, so it outlives a killed client and its
counters cover every run of a test. The child is ``_durable_batch.py``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _durable_batch import CALLS_PER_INPUT, INPUTS, run_batch

from plait.execution import CheckpointManager
from plait.testing import Simulator, SpawnedSimulator

SCRIPT = Path(__file__).with_name("_durable_batch.py")
GUARD = 60.0
CONCURRENCY = 16


@pytest.fixture(scope="module")
def sim() -> Iterator[SpawnedSimulator]:
    # Jitter spreads completions out, so a kill lands at a random moment
    # between them rather than just after a wave of replies.
    with Simulator.spawn(latency=0.1, latency_jitter=0.05) as server:
        yield server


def _child(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("kill_at", [0.02, 0.5, 0.9])
def test_a_kill_re_spends_no_more_than_was_in_flight(
    sim: SpawnedSimulator, tmp_path: Path, kill_at: float
) -> None:
    """With the default settings, a SIGKILL at any point costs the requests on
    the wire and at most one commit's worth more: re-spent / in flight <= 1.2."""
    sim.reset_stats()
    checkpoint = tmp_path / "ckpt"
    child = _child(sim.base_url, str(checkpoint), "--concurrency", str(CONCURRENCY))
    # The kill is timed by the server's count of requests, not by what the
    # child has committed, so it lands at any moment of the commit cycle.
    target = max(1, int(kill_at * len(INPUTS) * CALLS_PER_INPUT))
    try:
        deadline = time.monotonic() + GUARD
        while sim.stats().requests < target:
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline, "the child made no progress"
            time.sleep(0.002)
        child.kill()
    finally:
        child.wait(GUARD)
    # The batch keeps the client's cap of requests open all the time: that is
    # what was in flight when the kill came.
    in_flight = CONCURRENCY

    resumed = asyncio.run(run_batch(sim.base_url, str(checkpoint), concurrency=CONCURRENCY))
    assert len(resumed) == len(INPUTS)
    re_spent = sim.stats().requests - len(INPUTS) * CALLS_PER_INPUT
    assert 0 <= re_spent <= 1.2 * in_flight, (re_spent, in_flight)
    assert CheckpointManager(checkpoint).run().status == "finished"


def test_a_call_that_returned_has_its_cache_rows_on_disk(
    sim: SpawnedSimulator, tmp_path: Path
) -> None:
    """Killed right after the batch returned, the cache still holds every reply."""
    cache = tmp_path / "cache"
    child = _child(sim.base_url, "--cache", str(cache), "--concurrency", "64", "--hang")
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith(b"["), child.stderr.read() if child.stderr else ""
        child.kill()
    finally:
        child.wait(GUARD)
    sim.reset_stats()
    asyncio.run(run_batch(sim.base_url, None, cache=str(cache), concurrency=64))
    assert sim.stats().requests == 0


def test_a_second_process_on_the_same_checkpoint_dir_is_refused(
    sim: SpawnedSimulator, tmp_path: Path
) -> None:
    """Two processes on one directory would both pay for every input; the second refuses."""
    sim.reset_stats()
    checkpoint = tmp_path / "ckpt"
    first = _child(sim.base_url, str(checkpoint), "--concurrency", str(CONCURRENCY))
    try:
        deadline = time.monotonic() + GUARD
        while sim.stats().requests < CONCURRENCY:
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline, "the first run made no progress"
            time.sleep(0.01)
        second = _child(sim.base_url, str(checkpoint), "--concurrency", str(CONCURRENCY))
        _, second_err = second.communicate(timeout=GUARD)
        assert first.poll() is None, "the first run ended before the second was refused"
        assert second.returncode != 0
        assert b"is in use by another run (pid " + str(first.pid).encode() in second_err
        _, first_err = first.communicate(timeout=GUARD)
        assert first.returncode == 0, first_err
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(GUARD)
    assert sim.stats().requests == len(INPUTS) * CALLS_PER_INPUT
    # Once the first run is over, the directory is free again.
    rerun = asyncio.run(run_batch(sim.base_url, str(checkpoint), concurrency=CONCURRENCY))
    assert len(rerun) == len(INPUTS)
    assert sim.stats().requests == len(INPUTS) * CALLS_PER_INPUT
