"""Progress reporting: the ``on_progress`` callback and the optional progress bar."""

from __future__ import annotations

from typing import Any

from plait.execution.settings import ResolvedSettings


class ProgressReporter:
    """Counts finished inputs and tells whoever asked (callback, tqdm bar)."""

    def __init__(self, settings: ResolvedSettings, total: int | None) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self._callback = settings.on_progress
        self._bar: Any = None
        if settings.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="input", dynamic_ncols=True)

    def advance(self, ok: bool) -> None:
        self.done += 1
        if not ok:
            self.failed += 1
        if self._callback is not None:
            self._callback(self.done, self.total)
        bar = self._bar
        if bar is not None:
            bar.update(1)
            if self.failed:
                bar.set_postfix(failed=self.failed, refresh=False)
            if self.total is not None and self.done >= self.total:
                self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
