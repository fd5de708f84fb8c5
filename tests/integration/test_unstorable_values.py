"""One input's unstorable data fails that input only, over real HTTP.

A lone surrogate (``"\\ud800"``) is valid JSON, so it arrives from a JSONL
file or a reply, but it is not Unicode text: it cannot be written to SQLite
or to a UTF-8 file. It must fail the input that holds it, with an error that
says so, while every other input of the batch goes on and is stored.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli import _records, _resources, plait

from plait import LLMInference
from plait.errors import BatchError, CheckpointError, StorageError
from plait.execution import CheckpointManager
from plait.resources import ResourceManager
from plait.testing import Simulator

GUARD = 60.0
LONE = "\ud800"
TEXTS = [f"item {index}" for index in range(10)]
TEXTS[3] = f"bad {LONE} input"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(latency=0.01) as server:
        yield server


def _manager(base_url: str) -> ResourceManager:
    return ResourceManager({"sim": {"model": "m", "base_url": base_url, "api_key": "k"}})


async def _batch(base_url: str, **settings: Any) -> BatchError:
    resources = _manager(base_url)
    try:
        module = LLMInference("sim", temperature=0.0).bind(resources=resources, **settings)
        with pytest.raises(BatchError) as raised:
            await asyncio.wait_for(module.batch(TEXTS), GUARD)
        return raised.value
    finally:
        await resources.aclose()


async def test_a_lone_surrogate_fails_only_its_input_in_a_checkpointed_batch(
    sim: Simulator, tmp_path: Path
) -> None:
    error = await _batch(sim.base_url, checkpoint_dir=tmp_path)
    assert list(error.failures) == [3]
    failure = error.failures[3]
    assert isinstance(failure, CheckpointError)
    assert "input 3" in str(failure)
    assert "lone surrogate" in str(failure)
    assert CheckpointManager(tmp_path).run().finished == 9


async def test_a_lone_surrogate_fails_only_its_input_with_the_cache_on(
    sim: Simulator, tmp_path: Path
) -> None:
    error = await _batch(sim.base_url, cache=tmp_path / "cache")
    assert list(error.failures) == [3]
    assert isinstance(error.failures[3], StorageError)
    assert "lone surrogate" in str(error.failures[3])
    sim.reset_stats()
    error = await _batch(sim.base_url, cache=tmp_path / "cache")
    assert list(error.failures) == [3]
    assert sim.stats().requests == 0  # the other nine were cached


def test_plait_run_with_a_checkpoint_writes_every_other_line(
    sim: Simulator, tmp_path: Path
) -> None:
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(text) + "\n" for text in TEXTS))
    output = tmp_path / "out.jsonl"
    done: subprocess.CompletedProcess[str] = plait(
        "run", "sample_pipelines.pipelines:single", "--input", str(inputs), "--output",
        str(output), "--resources", str(_resources(tmp_path, sim.base_url)),
        "--checkpoint-dir", str(tmp_path / "ckpt"), "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    records = {record["line"]: record for record in _records(output)}
    assert sorted(records) == list(range(1, 11))
    assert "lone surrogate" in str(records[4]["error"])
    assert all("output" in records[line] for line in records if line != 4)


def test_plait_run_records_an_output_it_cannot_write_as_that_lines_error(
    sim: Simulator, tmp_path: Path
) -> None:
    """Without a checkpoint the echoed surrogate reaches the output file's encoder."""
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(text) + "\n" for text in TEXTS))
    output = tmp_path / "out.jsonl"
    done: subprocess.CompletedProcess[str] = plait(
        "run", "sample_pipelines.pipelines:single", "--input", str(inputs), "--output",
        str(output), "--resources", str(_resources(tmp_path, sim.base_url)), "--no-progress",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    records = {record["line"]: record for record in _records(output)}
    assert sorted(records) == list(range(1, 11))
    assert "lone surrogate" in str(records[4]["error"])
