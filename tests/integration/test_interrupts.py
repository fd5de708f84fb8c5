"""Ctrl-C stops a ``run_sync`` batch at once, inside a running event loop too.

A child process runs a long batch against the simulator (served from this
process, so it counts what the child sends) and gets a real SIGINT once a
few requests are in. Inside a running loop, as in a Jupyter cell,
``run_sync`` runs the batch on a loop of its own in a helper thread; the
interrupt lands in the waiting thread and must cancel that run as promptly
as ``asyncio.run`` cancels one on the main thread.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from plait.testing import Simulator

LATENCY = 0.1
SLOTS = 4
INPUTS = 400  # 10 s of work at SLOTS / LATENCY, so a late interrupt is plain to see
GUARD = 30.0

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from plait import LLMInference

    base_url, inside_loop = sys.argv[1], sys.argv[2] == "loop"
    slots, inputs = int(sys.argv[3]), int(sys.argv[4])
    llm = LLMInference("fast").bind(resources={
        "fast": {"model": "m", "base_url": base_url, "api_key": None, "max_concurrent": slots},
    })
    batch = [f"item {i}" for i in range(inputs)]

    async def in_a_cell():
        return llm.run_sync(batch)

    try:
        if inside_loop:
            # Like a notebook kernel: a running loop, and Python's own SIGINT handler.
            asyncio.new_event_loop().run_until_complete(in_a_cell())
        else:
            llm.run_sync(batch)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(3)
    print("finished", flush=True)
    """
)


def wait_for(condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the child")
        time.sleep(0.01)


@pytest.mark.parametrize("where", ["loop", "plain"])
def test_ctrl_c_cancels_a_run_sync_batch_at_once(where: str) -> None:
    with Simulator(latency=LATENCY) as sim:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, sim.base_url, where, str(SLOTS), str(INPUTS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: sim.stats().requests >= 2 * SLOTS, GUARD)
            at_signal = sim.stats().requests
            child.send_signal(signal.SIGINT)
            signalled = time.monotonic()
            stdout, stderr = child.communicate(timeout=GUARD)
            took = time.monotonic() - signalled
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        time.sleep(2 * LATENCY)  # anything still on its way has arrived
        after_signal = sim.stats().requests - at_signal
    assert child.returncode == 3, stderr
    assert stdout.strip() == "interrupted"
    # Requests already on the wire at the signal are counted before it; at most
    # the sends racing the signal come after, never the rest of the batch.
    assert after_signal <= SLOTS, f"{after_signal} requests were sent after SIGINT"
    assert took < 5.0, f"KeyboardInterrupt reached the caller {took:.1f}s after SIGINT"
