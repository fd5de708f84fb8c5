"""How many threads were inside a stretch of code at once: the bound on a thread pool, seen."""

from __future__ import annotations

import threading
import time


class PeakThreads:
    """Counts the threads inside :meth:`hold` at the same time, and the most ever."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self._lock = threading.Lock()

    def hold(self, seconds: float = 0.05) -> None:
        """Occupy the calling thread for ``seconds``, counted while it lasts."""
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(seconds)
        with self._lock:
            self.running -= 1
