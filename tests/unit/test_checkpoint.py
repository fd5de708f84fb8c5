"""Checkpoints: what is stored, what a rerun skips, and what makes stored results stale."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from plait import ExecutionSettings, LLMInference, Module, Parameter
from plait.errors import (
    BatchError,
    CheckpointError,
    ConfigError,
    PermanentError,
    StoredValueError,
    UnencodableError,
)
from plait.execution import CheckpointManager
from plait.storage.checkpoint_schema import FILENAME
from plait.storage.codec import decode, digest, encode
from plait.testing import FakeResources
from plait.values import Value, ValueKind
from support.llm import SECRET, echo_llm, manager
from support.modules import Chain, FanOut
from support.resources import replying

GUARD = 30.0


async def bounded(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, GUARD)


def inputs(count: int) -> list[str]:
    return [f"q{index}" for index in range(count)]


class Styled(Module):
    """A prompt template in forward plus a Parameter: both are part of the module's identity."""

    def __init__(self, template: str = "Answer: {}", style: str = "short") -> None:
        super().__init__()
        self.template = template
        self.style = Parameter(style, description="answer style")
        self.llm = LLMInference("fast", system_prompt=self.style)

    def forward(self, text: str) -> Any:
        return self.llm(self.template.format(text))


class Answer(BaseModel):
    text: str


class Structured(Module):
    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference("fast", response_format=Answer)

    def forward(self, text: str) -> Any:
        return self.llm(text)


class Opaque:
    """Not JSON data: a node returning it cannot be checkpointed."""


class MakesOpaque(Module):
    def forward(self, text: str) -> Opaque:
        return Opaque()


class OpaqueAfterLLM(Module):
    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference("fast")
        self.wrap = MakesOpaque()

    def forward(self, text: str) -> Any:
        return self.wrap(self.llm(text))


# -- the value codec -------------------------------------------------------------


def test_stored_values_round_trip_through_json() -> None:
    value = {
        "text": "héllo",
        "pair": (1, 2.5),
        "numbers": {1: "one", 2: "two"},
        "model": Answer(text="x"),
        "value": Value(ValueKind.STRUCTURED, {"k": [1, 2]}, ref="llm"),
        "bytes": b"\x00\xff",
        "odd": [float("inf"), None, True],
        "reserved": {"$plait": "not a tag"},
    }
    text = encode(value)
    json.loads(text)  # strict JSON: no NaN or Infinity literals
    assert decode(text, {"test_checkpoint:Answer": Answer}) == value
    error = decode(encode(ValueError("bad json")))
    assert isinstance(error, ValueError)
    assert str(error) == "bad json"


def test_the_codec_says_where_an_unstorable_part_is() -> None:
    with pytest.raises(UnencodableError, match=r"Opaque value at \['a'\]\[1\]\[0\]"):
        encode({"a": [1, (Opaque(),)]})


def test_a_stored_value_with_an_unknown_tag_is_a_storage_error() -> None:
    with pytest.raises(StoredValueError, match="unknown tag 'set'"):
        decode('{"$plait": "set", "items": [1]}')


def test_the_input_digest_depends_on_content_only() -> None:
    assert digest([("a",), {"k": 1, "j": 2}]) == digest([("a",), {"j": 2, "k": 1}])
    assert digest([("a",), {}]) != digest([["a"], {}])
    assert digest([("a",), {}]) != digest([("b",), {}])


# -- rerun skips what finished ---------------------------------------------------


async def test_a_rerun_returns_stored_outputs_without_calling_again(tmp_path: Path) -> None:
    fake = FakeResources()
    module = Chain().bind(resources=fake, checkpoint_dir=tmp_path)
    first = await bounded(module(inputs(12)))
    assert fake.call_count == 24
    second = await bounded(module(inputs(12)))
    assert second == first
    assert fake.call_count == 24
    assert first[3] == "fast(then:fast(q3))"


async def test_only_unfinished_nodes_run_again(tmp_path: Path) -> None:
    fake = FakeResources()
    module = Chain().bind(resources=fake, checkpoint_dir=tmp_path)
    # The second call of input 2 fails for good the first time round.
    fake.script("then:fast(q2)", PermanentError("refused", status_code=400))
    with pytest.raises(BatchError) as failed:
        await bounded(module(inputs(4)))
    assert failed.value.failed_indices == [2]
    calls_before = fake.call_count
    outputs = await bounded(module(inputs(4)))
    assert outputs[2] == "fast(then:fast(q2))"
    # Only the second call of input 2 ran again; its first call came from the store.
    assert fake.prompts()[calls_before:] == ["then:fast(q2)"]


async def test_new_inputs_run_and_finished_ones_are_skipped(tmp_path: Path) -> None:
    fake = FakeResources()
    module = FanOut(width=2).bind(resources=fake, checkpoint_dir=tmp_path)
    await bounded(module(inputs(3)))
    assert fake.call_count == 9
    outputs = await bounded(module(inputs(5)))
    assert fake.call_count == 15
    assert outputs[4] == "fast(fast(b0:q4) | fast(b1:q4))"


async def test_inputs_are_matched_by_position_and_content(tmp_path: Path) -> None:
    fake = FakeResources()
    module = LLMInference("fast").bind(resources=fake, checkpoint_dir=tmp_path)
    await bounded(module(["a", "b", "c"]))
    outputs = await bounded(module(["a", "c", "b"]))
    assert outputs == ["fast(a)", "fast(c)", "fast(b)"]
    # Positions 1 and 2 hold different content now, so they ran again.
    assert fake.prompts()[3:] in (["c", "b"], ["b", "c"])


async def test_structured_outputs_come_back_as_model_instances(tmp_path: Path) -> None:
    fake = echo_llm()
    module = Structured().bind(resources=manager(fake), checkpoint_dir=tmp_path)
    first = await bounded(module(["x", "y"]))
    again = await bounded(module(["x", "y"]))
    assert len(fake.requests) == 2
    assert again == first
    assert all(isinstance(output, Answer) for output in again)


async def test_streaming_with_a_checkpoint_restores_too(tmp_path: Path) -> None:
    fake = FakeResources()
    module = Chain().bind(resources=fake, checkpoint_dir=tmp_path)
    await bounded(module(inputs(3)))
    seen = {}
    async with ExecutionSettings(streaming=True):
        async for result in module.batch(inputs(3)):
            seen[result.index] = result.output
    assert seen == {index: f"fast(then:fast(q{index}))" for index in range(3)}
    assert fake.call_count == 6


# -- stale results are not reused silently -------------------------------------------


async def test_a_changed_prompt_template_is_detected_and_nothing_runs(tmp_path: Path) -> None:
    fake = FakeResources()
    await bounded(Styled().bind(resources=fake, checkpoint_dir=tmp_path)(inputs(3)))
    changed = Styled(template="Reply to: {}").bind(resources=fake, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError) as error:
        await bounded(changed(inputs(3)))
    message = str(error.value)
    assert "different version of Styled" in message
    for expected in ("node 'llm'", "prompt", "checkpoint_mismatch='new'", "'reuse'"):
        assert expected in message
    assert fake.call_count == 3


async def test_a_changed_parameter_value_is_detected(tmp_path: Path) -> None:
    fake = FakeResources()
    await bounded(Styled().bind(resources=fake, checkpoint_dir=tmp_path)(inputs(2)))
    changed = Styled(style="long").bind(resources=fake, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="system_prompt"):
        await bounded(changed(inputs(2)))


async def test_mismatch_new_recomputes_and_keeps_the_old_run(tmp_path: Path) -> None:
    fake = FakeResources(replying(lambda alias, prompt: prompt.upper()))
    await bounded(Styled().bind(resources=fake, checkpoint_dir=tmp_path)(inputs(2)))
    changed = Styled(template="Reply to: {}").bind(
        resources=fake, checkpoint_dir=tmp_path, checkpoint_mismatch="new"
    )
    assert await bounded(changed(inputs(2))) == ["REPLY TO: Q0", "REPLY TO: Q1"]
    assert fake.call_count == 4
    assert len(CheckpointManager(tmp_path).runs()) == 2
    # The new version is now the one that matches: no flag needed, nothing runs.
    plain = Styled(template="Reply to: {}").bind(resources=fake, checkpoint_dir=tmp_path)
    await bounded(plain(inputs(2)))
    assert fake.call_count == 4


async def test_mismatch_reuse_adopts_stored_results_on_purpose(tmp_path: Path) -> None:
    fake = FakeResources()
    original = await bounded(Styled().bind(resources=fake, checkpoint_dir=tmp_path)(inputs(2)))
    changed = Styled(style="long").bind(
        resources=fake, checkpoint_dir=tmp_path, checkpoint_mismatch="reuse"
    )
    assert await bounded(changed(inputs(2))) == original
    assert fake.call_count == 2


# -- values that cannot be stored --------------------------------------------------


async def test_a_value_that_cannot_be_stored_names_the_node(tmp_path: Path) -> None:
    fake = FakeResources()
    module = OpaqueAfterLLM().bind(resources=fake, checkpoint_dir=tmp_path)
    # It fails its own input only: the batch reports it by index.
    with pytest.raises(BatchError) as batch:
        await bounded(module(["x"]))
    error = batch.value.failures[0]
    assert isinstance(error, CheckpointError)
    message = str(error)
    assert "node 'wrap'" in message
    assert "Opaque" in message


async def test_an_input_that_is_not_json_data_is_a_clear_error(tmp_path: Path) -> None:
    module = LLMInference("fast").bind(resources=FakeResources(), checkpoint_dir=tmp_path)
    with pytest.raises(BatchError) as batch:
        await bounded(module([Opaque()]))
    error = batch.value.failures[0]
    assert isinstance(error, CheckpointError)
    assert re.search(r"input 0 cannot be checkpointed.*Opaque", str(error))


async def test_training_mode_refuses_a_checkpoint(tmp_path: Path) -> None:
    module = Chain().bind(resources=FakeResources(), checkpoint_dir=tmp_path).train()
    with pytest.raises(ConfigError, match="training mode"):
        await bounded(module("x"))


def test_the_setting_is_validated() -> None:
    with pytest.raises(ConfigError, match="checkpoint_mismatch"):
        ExecutionSettings(checkpoint_mismatch="sometimes")
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        ExecutionSettings(checkpoint_dir=3)
    with pytest.raises(ConfigError, match="checkpoint_buffer_size"):
        ExecutionSettings(checkpoint_buffer_size=0)


# -- batching and durability -----------------------------------------------------------


def stored_inputs(directory: Path) -> int:
    conn = sqlite3.connect(directory / FILENAME)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM inputs").fetchone()[0])
    finally:
        conn.close()


async def wait_until(predicate: Any) -> None:
    """Poll ``predicate`` (it reads the database, which has no event to wait on)."""
    for _ in range(int(GUARD / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in time")


async def test_finished_inputs_are_committed_while_the_batch_still_runs(
    tmp_path: Path,
) -> None:
    """Group commit: each completion reaches the disk without waiting for a batch to fill."""
    fake = FakeResources()
    gate = fake.gate("q3")
    module = LLMInference("fast").bind(resources=fake, checkpoint_dir=tmp_path)
    task = asyncio.ensure_future(module(inputs(4)))
    # Three inputs finish; the fourth is held back by the gate.
    await wait_until(lambda: (tmp_path / FILENAME).exists() and stored_inputs(tmp_path) == 3)
    gate.set()
    await bounded(task)
    assert stored_inputs(tmp_path) == 4


async def test_a_lone_completion_is_committed_at_once(tmp_path: Path) -> None:
    fake = FakeResources()
    gate = fake.gate("q1")
    module = LLMInference("fast").bind(resources=fake, checkpoint_dir=tmp_path)
    task = asyncio.ensure_future(module(inputs(2)))
    await wait_until(lambda: (tmp_path / FILENAME).exists() and stored_inputs(tmp_path) == 1)
    gate.set()
    await bounded(task)


def test_the_store_survives_a_process_killed_mid_write(tmp_path: Path) -> None:
    """SIGKILL while the writer commits in a loop: the file must open and be consistent."""
    script = f"""
import sqlite3, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2] / "src")!r})
from pathlib import Path
from plait.storage._sqlite import BackgroundWriter
writer = BackgroundWriter(Path({str(tmp_path / "kill.sqlite")!r}),
    setup=lambda c: c.execute("CREATE TABLE IF NOT EXISTS t(batch INTEGER, row INTEGER)"))
batch = 0
print("ready", flush=True)
while True:
    writer.submit([("INSERT INTO t VALUES (?, ?)", [(batch, r) for r in range(500)])])
    writer.flush()
    batch += 1
"""
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == b"ready"
    conn = sqlite3.connect(tmp_path / "kill.sqlite", timeout=GUARD)
    try:
        while conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] < 5000:
            pass
    finally:
        conn.close()
    process.kill()
    process.wait(GUARD)
    conn = sqlite3.connect(tmp_path / "kill.sqlite")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        per_batch = conn.execute("SELECT batch, COUNT(*) FROM t GROUP BY batch").fetchall()
    finally:
        conn.close()
    # Every batch is all there or not there at all: commits are atomic.
    assert per_batch
    assert all(count == 500 for _, count in per_batch)


# -- reading a checkpoint ------------------------------------------------------------------


async def test_the_manager_lists_runs_with_progress_and_exports_results(tmp_path: Path) -> None:
    fake = FakeResources()
    fake.script("q1", PermanentError("refused", status_code=400))
    module = LLMInference("fast").bind(resources=fake, checkpoint_dir=tmp_path)
    with pytest.raises(BatchError):
        await bounded(module(inputs(4)))
    store = CheckpointManager(tmp_path)
    (run,) = store.runs()
    assert run.module == "LLMInference"
    assert (run.total, run.finished, run.failed, run.status) == (4, 3, 1, "incomplete")
    assert run.progress == 0.75
    assert [result.index for result in store.results()] == [0, 2, 3]

    await bounded(module(inputs(4)))
    run = store.run()
    assert (run.finished, run.failed, run.status, run.progress) == (4, 0, "finished", 1.0)
    exported = tmp_path / "out.jsonl"
    assert store.export(exported) == 4
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert lines[1] == {"index": 1, "input": "q1", "output": "fast(q1)"}


async def test_exported_structured_outputs_are_plain_json(tmp_path: Path) -> None:
    fake = echo_llm()
    await bounded(Structured().bind(resources=manager(fake), checkpoint_dir=tmp_path)(["x"]))
    (result,) = CheckpointManager(tmp_path).results()
    assert result.output == {"text": "x"}


def test_a_run_left_running_by_a_dead_process_reads_as_interrupted(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(GUARD)

    async def run() -> None:
        await LLMInference("fast").bind(resources=FakeResources(), checkpoint_dir=tmp_path)("x")

    asyncio.run(run())
    conn = sqlite3.connect(tmp_path / FILENAME)
    with conn:
        conn.execute("UPDATE runs SET status = 'running', pid = ?", (dead.pid,))
    conn.close()
    assert CheckpointManager(tmp_path).run().status == "interrupted"


def test_reading_a_directory_without_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        CheckpointManager(tmp_path)


async def test_secrets_never_reach_the_checkpoint(tmp_path: Path) -> None:
    fake = echo_llm()
    module = Chain().bind(resources=manager(fake), checkpoint_dir=tmp_path)
    await bounded(module(inputs(3)))
    assert_no_secret_in(tmp_path)


def assert_no_secret_in(directory: Path) -> None:
    files = list(directory.iterdir())
    assert files
    for path in files:
        assert SECRET.encode() not in path.read_bytes()
