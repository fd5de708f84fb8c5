"""The per-example Pareto front that the reflective optimizer picks parents from.

Picking only the best mean score would mutate one candidate forever and lose
the ones that solved examples it fails. Keeping every candidate that is best
on at least one dev example (and not beaten everywhere by another) keeps
those lessons in play; a candidate that wins more examples is picked more
often. Examples nobody solves say nothing about anyone and are left out.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def wins(scores: Sequence[Sequence[float]]) -> dict[int, int]:
    """For each candidate on the front, how many examples it is among the best on."""
    if not scores:
        return {}
    counts: dict[int, int] = {}
    for example in range(len(scores[0])):
        best = max(row[example] for row in scores)
        if best <= 0:
            continue
        for index, row in enumerate(scores):
            if row[example] == best:
                counts[index] = counts.get(index, 0) + 1
    front = [index for index in counts if not _dominated(index, counts, scores)]
    return {index: counts[index] for index in sorted(front)}


def front(scores: Sequence[Sequence[float]]) -> list[int]:
    """The candidates kept for mutation; the first one alone when nobody solves anything."""
    found = list(wins(scores))
    return found or ([0] if scores else [])


def pick(scores: Sequence[Sequence[float]], rng: random.Random) -> int:
    """A parent from the front, weighted by the examples each candidate wins."""
    counts = wins(scores)
    if not counts:
        return 0
    indices = list(counts)
    return rng.choices(indices, weights=[counts[index] for index in indices])[0]


def _dominated(index: int, counts: dict[int, int], scores: Sequence[Sequence[float]]) -> bool:
    """Another front member scores at least as well everywhere and better somewhere.

    Of identical candidates the earliest stays, so copies do not crowd the front.
    """
    mine = scores[index]
    for other in counts:
        if other == index:
            continue
        theirs = scores[other]
        at_least = all(t >= m for t, m in zip(theirs, mine, strict=True))
        if at_least and (list(theirs) != list(mine) or other < index):
            return True
    return False
