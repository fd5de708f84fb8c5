"""Chat-completion reply bodies for test servers that stand in for an endpoint."""

from __future__ import annotations

from typing import Any


def completion(content: str | None, **message: Any) -> dict[str, Any]:
    """A chat.completion answering ``content``; ``message`` adds fields such as ``refusal``."""
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
