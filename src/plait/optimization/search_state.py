"""What a reflective search has found so far, and the file that keeps it across a kill.

Evaluating a candidate on the dev set is the expensive part of the search,
so each one is written down as soon as it is scored: the file is replaced
atomically (write, fsync, rename) after every iteration, and a killed run
picks up at the iteration it was in, with every candidate and the metric
calls already spent. The file is JSON data; nothing in it is code.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

from plait.errors import CheckpointError

FILENAME = "reflective.json"
_FORMAT = 1


@dataclass(slots=True)
class Candidate:
    """A set of component values with its score on every dev example."""

    index: int
    parent: int | None
    values: dict[str, str]
    scores: list[float]

    @property
    def score(self) -> float:
        return fmean(self.scores) if self.scores else 0.0


@dataclass(slots=True)
class Proposal:
    """One new value the reflector wrote, and what became of it."""

    iteration: int
    parent: int
    component: str
    value: str
    accepted: bool
    reason: str
    candidate: int | None = None
    """The candidate it became, when accepted."""


@dataclass(slots=True)
class SearchState:
    """Everything the search needs to continue: iteration, spend, candidates, proposals."""

    key: str
    iteration: int = 0
    metric_calls: int = 0
    candidates: list[Candidate] = field(default_factory=list)
    proposals: list[Proposal] = field(default_factory=list)

    def scores(self) -> list[list[float]]:
        return [candidate.scores for candidate in self.candidates]


class SearchStore:
    """``<directory>/reflective.json``: the state of one search (one ``key``)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILENAME

    def load(self, key: str) -> SearchState | None:
        """The stored state, or None when there is none yet.

        Raises:
            CheckpointError: the file belongs to a different search (other
                data, components or settings), or cannot be read.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as error:
            raise CheckpointError(f"cannot read {self.path}: {error}") from None
        try:
            data = json.loads(text)
            if data.get("format") != _FORMAT:
                raise CheckpointError(f"{self.path} has an unknown format {data.get('format')!r}")
            state = _state(data["state"])
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointError(
                f"{self.path} is not a reflective search state: {error}"
            ) from None
        if state.key != key:
            raise CheckpointError(
                f"{self.path} holds a search over other data, components or settings; "
                "use another checkpoint_dir, or delete the file to start over"
            )
        return state

    def save(self, state: SearchState) -> None:
        """Replace the file with ``state`` atomically: a kill leaves the old or the new one."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            with temporary.open("w", encoding="utf-8") as handle:
                json.dump({"format": _FORMAT, "state": asdict(state)}, handle, ensure_ascii=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except OSError as error:
            raise CheckpointError(f"cannot write {self.path}: {error}") from None


def _state(data: dict[str, Any]) -> SearchState:
    return SearchState(
        key=str(data["key"]),
        iteration=int(data["iteration"]),
        metric_calls=int(data["metric_calls"]),
        candidates=[Candidate(**item) for item in data["candidates"]],
        proposals=[Proposal(**item) for item in data["proposals"]],
    )
