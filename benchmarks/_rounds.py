"""Repeating a measurement: each `make bench` figure is the median of three.

One reading on a shared two-core machine can be off by a third either way
(design_docs/performance.md, "Noise"); the median of three neither hides a
regression behind one lucky run nor reports one unlucky run as a regression.
A limit is different: it must hold every time, so ``strict`` rows are met
only when every round met them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ROUNDS = 3


def median_row(
    measure: Callable[[], dict[str, Any]], *, strict: bool = False, rounds: int = ROUNDS
) -> dict[str, Any]:
    """The row of the round with the median value, with every round's value in its detail."""
    rows = sorted((measure() for _ in range(rounds)), key=lambda row: row["value"])
    row = rows[len(rows) // 2]
    row.setdefault("detail", {})["rounds"] = [each["value"] for each in rows]
    if strict:
        row["met"] = all(each["met"] for each in rows)
    if "_peak" in row:
        row["_peak"] = max(each["_peak"] for each in rows)
    return row
