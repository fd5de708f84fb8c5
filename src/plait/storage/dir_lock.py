"""One run per checkpoint directory, across processes.

Two processes resuming the same directory would both find the same inputs
unfinished and both pay for them. So a run holds an exclusive ``flock`` on
``<checkpoint_dir>/checkpoint.lock`` for as long as its session is open. The
kernel drops the lock when the holder's process ends, ``kill -9`` included,
so a crashed run never leaves a stale lock behind for its rerun.

A second run refuses at once rather than waiting: a batch can hold the
directory for hours, a waiting process would look hung, and the event loop
that opens the session must not block. The refusal names the holder, and no
request has been sent by then.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from plait.errors import CheckpointError

LOCK_FILENAME = "checkpoint.lock"


class DirectoryLock:
    """An exclusive, process-wide hold on one checkpoint directory; ``release`` ends it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILENAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise CheckpointError(
                f"checkpoint_dir {directory} is in use by another run ({holder}); wait for "
                "it to finish, or give this run another checkpoint_dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor drops the flock


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if text:
            return text
    return "a process that has just started"
