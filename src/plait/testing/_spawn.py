"""Running the simulator in a child process.

Benchmarks need the server's CPU kept apart from the client's, so that the
client being measured is never slowed by the server it talks to. The child is
``python -m plait.testing``; it prints its base URL once it is listening,
which is how the parent knows it is ready. Counters come back over HTTP.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from plait.testing._cli import config_to_argv
from plait.testing._config import SimulatorConfig
from plait.testing.stats import SimulatorStats

_STOP_TIMEOUT = 5.0


class SpawnedSimulator:
    """A simulator in a separate OS process; use as a context manager or start()/stop()."""

    def __init__(self, config: SimulatorConfig, *, startup_timeout: float = 15.0) -> None:
        self._argv = [sys.executable, "-m", "plait.testing", *config_to_argv(config)]
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``, the value to give an OpenAI client."""
        if self._base_url is None:
            raise RuntimeError("the spawned simulator is not running; call start() first")
        return self._base_url

    @property
    def pid(self) -> int:
        """The child's process id, for tests that measure or signal it."""
        if self._process is None:
            raise RuntimeError("the spawned simulator is not running; call start() first")
        return self._process.pid

    def start(self) -> None:
        """Start the child and block until it is listening."""
        if self._process is not None:
            raise RuntimeError("this spawned simulator is already running")
        self._process = subprocess.Popen(
            self._argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            bufsize=0,
            env=_child_env(),
        )
        try:
            self._base_url = self._await_url(self._process)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL if it lingers) and reap it."""
        process, self._process, self._base_url = self._process, None, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def stats(self) -> SimulatorStats:
        """A snapshot of the child's counters."""
        with urllib.request.urlopen(self._sim_url("stats"), timeout=10) as response:
            return SimulatorStats.from_dict(json.loads(response.read()))

    def reset_stats(self) -> None:
        """Zero the child's counters (see ``Simulator.reset_stats``)."""
        request = urllib.request.Request(self._sim_url("reset"), data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def __enter__(self) -> SpawnedSimulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _sim_url(self, action: str) -> str:
        return self.base_url.removesuffix("/v1") + "/_sim/" + action

    def _await_url(self, process: subprocess.Popen[bytes]) -> str:
        assert process.stdout is not None
        fd = process.stdout.fileno()
        deadline = time.monotonic() + self._startup_timeout
        received = b""
        while b"\n" not in received:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"spawned simulator did not report ready within {self._startup_timeout} s"
                )
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                code = process.wait()
                raise RuntimeError(
                    f"spawned simulator exited with code {code} before becoming ready "
                    "(its stderr is shown above)"
                )
            received += chunk
        return received.split(b"\n", 1)[0].decode().strip()


def _child_env() -> dict[str, str]:
    """The parent's environment, with plait's import root first on PYTHONPATH.

    This lets the child import the same plait as the parent even when plait
    is on ``sys.path`` only (a source checkout) rather than installed.
    """
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root if not existing else os.pathsep.join([root, existing])
    return env
