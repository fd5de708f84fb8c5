"""Storage under faults: a full disk, a crafted or broken checkpoint row, unstorable text.

Real SQLite throughout. A full disk is SQLite's own: the writer's connection
gets a ``max_page_count`` just above the file's size, so a commit fails with
SQLITE_FULL exactly as it would on a full filesystem.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plait import LLMInference
from plait.errors import CheckpointError, WriterError
from plait.storage import _sqlite
from plait.testing import FakeResources
from support.llm import echo_llm, manager

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
