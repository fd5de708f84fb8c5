"""A checkpointed batch of tool loops, run as a child process the replay test kills.

Usage: ``python _durable_tools.py BASE_URL CHECKPOINT_DIR RUNS_FILE``; prints
the outputs as one JSON list when the batch finishes. Each input's model
turn calls the ``record`` tool twice; every run of the tool appends its key
to RUNS_FILE before it answers, so the file shows which runs happened, in
this process and in any killed before it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from plait import LLMInference
from plait.resources import ResourceManager
from plait.testing import ToolCallReply

INPUTS = [f"task {index}." for index in range(30)]
MAX_CONCURRENT = 4
RULES: list[tuple[str, str | ToolCallReply]] = [
    (
        rf"task {index}\.",
        ToolCallReply([("record", {"key": f"{index}-a"}), ("record", {"key": f"{index}-b"})]),
    )
    for index in range(len(INPUTS))
]
"""The model's script: one turn calling ``record`` twice, then (once the
tools answered) the simulator's echo of the task."""


def recorder(runs_file: Path) -> Any:
    def record(key: str) -> str:
        """Record that a key was seen."""
        with runs_file.open("a") as log:
            log.write(key + "\n")
        time.sleep(0.05)
        return f"recorded {key}"

    return record


async def run_batch(base_url: str, checkpoint_dir: str, runs_file: Path) -> list[Any]:
    resources = ResourceManager(
        {"sim": {"model": "sim-model", "base_url": base_url, "max_concurrent": MAX_CONCURRENT}}
    )
    agent = LLMInference("sim", temperature=0.0, tools=[recorder(runs_file)])
    try:
        outputs: list[Any] = await agent.bind(resources=resources).batch(
            INPUTS, checkpoint_dir=checkpoint_dir, max_concurrent=MAX_CONCURRENT
        )
        return outputs
    finally:
        await resources.aclose()


if __name__ == "__main__":
    outputs = asyncio.run(run_batch(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
    print(json.dumps(outputs), flush=True)
