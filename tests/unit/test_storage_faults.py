"""Storage under faults: a full disk, a crafted or broken checkpoint row, unstorable text.

Real SQLite throughout. A full disk is SQLite's own: the writer's connection
gets a ``max_page_count`` just above the file's size, so a commit fails with
SQLITE_FULL exactly as it would on a full filesystem.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plait import LLMInference
from plait.errors import CheckpointError, StoredValueError, UnknownClassError, WriterError
from plait.storage import _sqlite
from plait.storage.checkpoint_schema import FILENAME
from plait.storage.codec import decode
from plait.testing import FakeResources
from support.llm import echo_llm, manager
from support.modules import Chain

GUARD = 30.0


async def bounded(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, GUARD)


def prompts(count: int, size: int = 3000) -> list[str]:
    return [f"{index} " + "x" * size for index in range(count)]


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every background writer's file has room for one more page from its first commit on."""
    real = _sqlite.BackgroundWriter._commit

    def commit(self: Any, conn: sqlite3.Connection, batch: Any) -> None:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count = {pages + 1}")
        real(self, conn, batch)

    monkeypatch.setattr(_sqlite.BackgroundWriter, "_commit", commit)


def writer_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("plait-sqlite-")}


def open_files_under(directory: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


@pytest.fixture
def no_leaks(tmp_path: Path) -> Iterator[None]:
    before = writer_threads()
    yield
    assert writer_threads() - before == set()
    assert open_files_under(tmp_path) == []


# -- a full disk ----------------------------------------------------------------


@pytest.mark.usefixtures("full_disk", "no_leaks")
async def test_a_full_disk_fails_the_checkpointed_run_and_releases_everything(
    tmp_path: Path,
) -> None:
    fake = FakeResources(latency=0.002)
    module = LLMInference("fast").bind(resources=fake, checkpoint_dir=tmp_path, max_concurrent=4)
    with pytest.raises(
        CheckpointError, match=r"checkpoint\.sqlite failed: database or disk is full"
    ):
        await bounded(module(prompts(300)))
    # The run stopped sending once nothing more could be saved.
    assert fake.call_count < 100


@pytest.mark.usefixtures("full_disk", "no_leaks")
async def test_a_full_disk_fails_the_cached_run_and_releases_everything(tmp_path: Path) -> None:
    resources = manager(echo_llm())
    try:
        module = LLMInference("fast").bind(resources=resources, cache=tmp_path / "cache")
        with pytest.raises(WriterError, match="database or disk is full"):
            await bounded(module(prompts(100)))
    finally:
        await resources.aclose()


# -- checkpoint rows that do not decode ------------------------------------------

CRAFTED = json.dumps(
    {
        "$plait": "model",
        "class": "plait.resources.config:EndpointConfig",
        "data": {"model": "${PLAIT_CRAFTED_SECRET}", "base_url": "http://x", "api_key": "k"},
    }
)


def tamper(directory: Path, sql: str, *params: Any) -> None:
    conn = sqlite3.connect(directory / FILENAME)
    try:
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


async def test_a_row_that_does_not_decode_is_dropped_and_its_node_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Crafted or broken rows: nothing is instantiated from a class path the graph
    does not declare, no raw JSON or value error escapes, and each bad row's
    node runs again with a warning naming where it was."""
    monkeypatch.setenv("PLAIT_CRAFTED_SECRET", "leaked-secret")
    fake = FakeResources()
    module = Chain().bind(resources=fake, checkpoint_dir=tmp_path)
    texts = [f"q{index}" for index in range(4)]
    reference = await bounded(module(texts))
    assert fake.call_count == 8

    update = "UPDATE inputs SET output = ? WHERE position = ?"
    tamper(tmp_path, update, CRAFTED, 0)
    tamper(tmp_path, update, "not json {", 1)
    tamper(tmp_path, update, '{"$plait": "tuple"}', 2)
    # Input 3 was cut short after its first node, whose stored value is broken.
    (run_id, digest) = (
        sqlite3.connect(tmp_path / FILENAME)
        .execute("SELECT run_id, digest FROM inputs WHERE position = 3")
        .fetchone()
    )
    tamper(tmp_path, "DELETE FROM inputs WHERE position = 3")
    tamper(
        tmp_path,
        "INSERT INTO nodes VALUES (?, 3, ?, 'first', ?)",
        run_id,
        digest,
        '{"$plait": "value", "kind": "bogus", "payload": 1}',
    )

    with caplog.at_level(logging.WARNING, logger="plait.storage"):
        resumed = await bounded(module(texts))
    assert resumed == reference
    assert "leaked-secret" not in json.dumps(resumed)
    assert fake.call_count == 16
    dropped = [record.getMessage() for record in caplog.records]
    assert len(dropped) == 4, dropped
    assert any("input 0" in line and "EndpointConfig" in line for line in dropped)
    assert any("input 3" in line and "node 'first'" in line for line in dropped)


def test_the_codec_decodes_only_the_model_classes_it_is_given() -> None:
    with pytest.raises(UnknownClassError, match="EndpointConfig"):
        decode(CRAFTED)
    for text in ("not json {", '{"$plait": "tuple"}', '{"$plait": "bytes", "base64": "%"}'):
        with pytest.raises(StoredValueError):
            decode(text)
