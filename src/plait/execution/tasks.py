"""Task groups that fail with the error the failing task raised.

``asyncio.TaskGroup`` cancels the other tasks on the first failure, which is
what concurrent LLM questions want (one failure sinks the step, and nothing
should keep spending after it), but it reports failures wrapped in an
ExceptionGroup. plait's callers catch the errors their own code raised
(``BackwardError``, a client's ``PermanentError``), so the first failure is
raised as it is, the way ``asyncio.gather`` would have.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """An ``asyncio.TaskGroup`` that raises its first failure rather than a group of them."""
    try:
        async with asyncio.TaskGroup() as group:
            yield group
    except BaseExceptionGroup as failures:
        first = failures.exceptions[0]
    else:
        return
    # Raised outside the handler, so the error keeps its own context instead
    # of gaining the group as one.
    raise first
