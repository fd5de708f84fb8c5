"""The queue of ready nodes that a run's workers share, and the order it keeps.

One entry per ready node, each ranked by that node, keeps an input's wide
fan-out at one push and one pop per node. An entry outlives its node only if
the node was cancelled or requeued meanwhile; the worker that pops it finds
the input's most urgent node ranked behind it and drops it.

Work goes input by input (depth first: an input's join before a later
input's branches), so results arrive early and a killed run has paid for few
half-done inputs. At the end of a batch that order would leave the last
inputs' joins for a last wave of their own, mostly empty; so once no more
inputs can arrive and no more are unfinished than the endpoints have slots,
the queue and the endpoints' gates rank what is left by node first (the
nodes with the most calls still ahead go first), which fills the last waves.
Only those last inputs' results come later, by a few waves at most.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection
from itertools import count

from plait.execution.gate import Gate, Key
from plait.execution.state import ExecutionState


class ReadyQueue:
    """Ready nodes of every admitted input, most urgent first."""

    __slots__ = (
        "_breadth_at",
        "_depth_first",
        "_gates",
        "_heap",
        "_more_inputs",
        "_open",
        "_tiebreak",
    )

    def __init__(self, gates: Collection[Gate], workers: int) -> None:
        self._gates = gates
        self._heap: list[tuple[int, int, int, int, ExecutionState]] = []
        self._tiebreak = count()
        self._depth_first = True
        self._more_inputs = True
        self._open = 0
        self._breadth_at = sum(gate.free for gate in gates) or workers

    def __len__(self) -> int:
        return len(self._heap)

    def order(self, key: tuple[int, int, str], index: int) -> Key:
        """Where a node of input ``index`` stands, here and at its endpoint's gate."""
        return (key[0], index, key[1]) if self._depth_first else (key[0], key[1], index)

    def push(self, state: ExecutionState, key: tuple[int, int, str]) -> None:
        """Queue one ready node of ``state`` under its own key."""
        heapq.heappush(self._heap, (*self.order(key, state.index), next(self._tiebreak), state))

    def pop(self) -> ExecutionState | None:
        """The input whose node is most urgent, or None if that entry was stale."""
        entry = heapq.heappop(self._heap)
        state = entry[4]
        key = state.next_key()
        rank = entry[2] if self._depth_first else entry[1]
        if key is None or key[0] != entry[0] or key[1] != rank:
            return None
        return state

    def clear(self) -> None:
        self._heap.clear()

    def input_started(self) -> None:
        self._open += 1

    def input_finished(self) -> None:
        self._open -= 1
        self._end_in_breadth()

    def inputs_ended(self) -> None:
        """No more inputs will be admitted to this run."""
        self._more_inputs = False
        self._end_in_breadth()

    def _end_in_breadth(self) -> None:
        if not self._depth_first or self._more_inputs or self._open > self._breadth_at:
            return
        self._depth_first = False
        heap = self._heap
        heap[:] = [(e[0], e[2], e[1], e[3], e[4]) for e in heap]
        heapq.heapify(heap)
        for gate in self._gates:
            gate.swap_order()
