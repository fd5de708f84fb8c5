"""The token-stream side of running one node: which call streams, and its deltas' guard.

The scheduler asks :func:`streams_node` for each LLM node of a run that has a
delta sink, and wraps the chosen call's deltas in a :class:`Delivery`. Kept
apart from :mod:`plait.execution.token_stream`, which starts runs, so the
scheduler does not import its own caller.
"""

from __future__ import annotations

from collections.abc import Awaitable

from plait.clients.base import ChatResponse
from plait.clients.sse import DeltaSink
from plait.errors import StreamInterruptedError
from plait.execution.state import ExecutionState
from plait.resources.manager import ResourceManager
from plait.resources.protocol import ResourceManagerLike


def streams_node(resources: ResourceManagerLike, state: ExecutionState, node_id: str) -> bool:
    """Whether ``node_id`` is the call a token stream shows.

    That is the graph's only output, for the run's own input (not a dynamic
    forward's sub-run), sent through a real ResourceManager (a test double
    answers whole, and its text is yielded at the end).
    """
    return (
        state.owner is None
        and isinstance(resources, ResourceManager)
        and state.plan.graph.output_ids == [node_id]
    )


class Delivery:
    """The delta sink for one attempt of the streamed node; counts what got through."""

    __slots__ = ("delivered", "sink")

    def __init__(self, sink: DeltaSink) -> None:
        self.sink = sink
        self.delivered = 0

    def __call__(self, text: str) -> None:
        self.delivered += len(text)
        self.sink(text)

    async def guard(self, call: Awaitable[ChatResponse]) -> ChatResponse:
        """``call``, with any failure after the first delta made final.

        The clients already do this for a broken stream; this catches what
        happens above them, such as ``task_timeout``, which the retry policy
        would otherwise retry under text the consumer has already shown.
        """
        try:
            return await call
        except StreamInterruptedError:
            raise
        except Exception as error:
            if not self.delivered:
                raise
            raise StreamInterruptedError(
                f"the streamed reply failed after {self.delivered} characters had been "
                f"delivered: {type(error).__name__}: {error}. The partial reply is not kept; "
                "call again for a whole one"
            ) from error
