"""The simulator's streamed replies: a chat completion as paced SSE chunks.

A ``stream: true`` request gets what OpenAI sends: a role chunk, the content
in pieces of ``stream_chunk_chars`` characters (tool calls as a name chunk
and an arguments chunk each), a chunk with the finish reason, the usage chunk
when ``stream_options.include_usage`` asks for it, and ``data: [DONE]``.
``stream_pace`` seconds pass between chunks, on the connection's timer, so a
test can watch a delta arrive before the server has finished, and see a
client that leaves mid-way close the connection (``streams_aborted``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from plait.testing._http import Connection
from plait.testing.stats import SimulatorStats


class SseReply:
    """Sends one streamed reply on ``conn``, chunk by chunk, then calls ``done``.

    ``done`` runs exactly once: when the stream ends, or when the client
    leaves (or the fault ``cut`` drops it) before that.
    """

    __slots__ = ("_chunks", "_conn", "_cut_at", "_done", "_next", "_pace", "_stats")

    def __init__(
        self,
        conn: Connection,
        stats: SimulatorStats,
        done: Callable[[], None],
        pace: float,
        *,
        cut: bool = False,
    ) -> None:
        self._conn = conn
        self._stats = stats
        self._done = done
        self._pace = pace
        self._chunks: list[bytes] = []
        self._next = 0
        self._cut_at: int | None = None if not cut else -1

    def send(
        self,
        seq: int,
        model: str,
        message: dict[str, Any],
        finish_reason: str,
        usage: dict[str, int] | None,
        chunk_chars: int,
    ) -> None:
        """Start sending; the rest follows on timers (or at once with no pace)."""
        base = {
            "id": f"chatcmpl-sim-{seq}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        content = message.get("content") or ""
        deltas += [
            {"content": content[i : i + chunk_chars]} for i in range(0, len(content), chunk_chars)
        ]
        for index, call in enumerate(message.get("tool_calls") or []):
            function = call["function"]
            head = {"index": index, "id": call["id"], "type": "function"}
            deltas.append({"tool_calls": [{**head, "function": {"name": function["name"]}}]})
            deltas.append(
                {"tool_calls": [{"index": index, "function": {"arguments": function["arguments"]}}]}
            )
        events = [{**base, "choices": [_choice(delta, None)]} for delta in deltas]
        events.append({**base, "choices": [_choice({}, finish_reason)]})
        if usage is not None:
            events.append({**base, "choices": [], "usage": usage})
        self._chunks = [b"data: %b\n\n" % json.dumps(event).encode() for event in events]
        self._chunks.append(b"data: [DONE]\n\n")
        if self._cut_at is not None:
            # Cut after the first content piece: deltas have reached the client.
            self._cut_at = min(2, len(self._chunks) - 1)
        self._stats.streams += 1
        if not self._conn.start_stream():
            self._left()
            return
        self._step()

    def _step(self) -> None:
        conn = self._conn
        while self._next < len(self._chunks):
            if self._next == self._cut_at:
                conn.abort()
                self._finish()
                return
            conn.write_chunk(self._chunks[self._next])
            self._next += 1
            if self._pace > 0.0 and self._next < len(self._chunks):
                conn.defer(self._pace, self._left, self._step)
                return
        self._stats.streams_completed += 1
        conn.end_stream()
        self._finish()

    def _left(self) -> None:
        """The client closed the connection before the stream ended."""
        self._stats.streams_aborted += 1
        self._finish()

    def _finish(self) -> None:
        done, self._done = self._done, _nothing
        done()


def _choice(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}


def _nothing() -> None:
    return None
