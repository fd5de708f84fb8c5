"""A checkpointed 300-input batch, run as a child process that the durability tests kill.

Usage: ``python _durable_batch.py BASE_URL [CHECKPOINT_DIR] [--concurrency N]
[--cache DIR] [--hang]``. It prints the outputs as one JSON list when
the batch finishes; with ``--hang`` it then sleeps instead of exiting, so a
test can kill it right after the call returned (an exit would run the atexit
flush and hide a write the call had not waited for). The pipeline and settings
live here so that the tests' in-process runs are exactly the same batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from plait import LLMInference, Module
from plait.resources import ResourceManager
from plait.storage.checkpoint_schema import FILENAME

INPUTS = [f"item {index}" for index in range(300)]
CALLS_PER_INPUT = 2
MAX_CONCURRENT = 8


def finished_inputs(directory: Path, timeout: float = 60.0) -> int:
    """Inputs committed to the checkpoint in ``directory`` (0 before the file exists)."""
    path = directory / FILENAME
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=timeout)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM inputs").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # the tables are not created yet
    finally:
        conn.close()


class TwoStep(Module):
    """Two calls in series, so a kill can leave inputs half done."""

    def __init__(self, system_prompt: str = "Be brief.") -> None:
        super().__init__()
        self.draft = LLMInference("sim", system_prompt=system_prompt, temperature=0.0)
        self.polish = LLMInference("sim", temperature=0.0)

    def forward(self, text: str) -> Any:
        return self.polish(f"Polish: {self.draft(text)}")


async def run_batch(
    base_url: str,
    checkpoint_dir: str | None,
    *,
    system_prompt: str = "Be brief.",
    concurrency: int = MAX_CONCURRENT,
    cache: str | None = None,
) -> list[Any]:
    resources = ResourceManager(
        {
            "sim": {
                "model": "sim-model",
                "base_url": base_url,
                "api_key": "sk-durable-test",
                "max_concurrent": concurrency,
            }
        }
    )
    settings: dict[str, Any] = {
        "max_concurrent": concurrency,
        "cache": cache,
        "checkpoint_dir": checkpoint_dir,
    }
    try:
        module = TwoStep(system_prompt).bind(resources=resources)
        outputs: list[Any] = await module.batch(INPUTS, **settings)
        return outputs
    finally:
        await resources.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url")
    parser.add_argument("checkpoint_dir", nargs="?")
    parser.add_argument("--concurrency", type=int, default=MAX_CONCURRENT)
    parser.add_argument("--cache")
    parser.add_argument("--hang", action="store_true")
    options = parser.parse_args()
    outputs = asyncio.run(
        run_batch(
            options.base_url,
            options.checkpoint_dir,
            concurrency=options.concurrency,
            cache=options.cache,
        )
    )
    print(json.dumps(outputs), flush=True)
    if options.hang:
        time.sleep(600)


if __name__ == "__main__":
    main()
