"""plait's one rule of thumb for how many tokens some text is: four characters each.

Token rate limits have to be charged before a request is sent, long before
the reply reports real usage, and an exact count would need each model's
tokenizer. A quarter of the characters is close enough for English text and
cheap enough for the hot path; the rate limiter settles the difference once
the reply's usage is known. Everything that needs a count without a reply
(the rate limiter's charge, the optimizer's prompt budget, the Ray budget,
the simulator's reported usage) uses these functions, so they agree.
"""

from __future__ import annotations

from collections.abc import Iterable

from plait.clients.base import ChatRequest

CHARS_PER_TOKEN = 4
# Output tokens assumed for a request without max_tokens, until the reply's
# usage corrects the estimate.
DEFAULT_OUTPUT_TOKENS = 256


def text_tokens(text: str) -> int:
    """The tokens ``text`` is taken to be (rounded up)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def message_tokens(messages: Iterable[object]) -> int:
    """The tokens of the text in chat messages, counting every text part of
    multi-part content; images and other parts, and anything that is not a
    message dict, count for nothing."""
    chars = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    text = part.get("text")
                    if isinstance(text, str):
                        chars += len(text)
    return -(-chars // CHARS_PER_TOKEN)


def estimate_tokens(request: ChatRequest) -> int:
    """A request's prompt plus its output allowance: what a token limiter charges."""
    output = request.max_tokens if request.max_tokens is not None else DEFAULT_OUTPUT_TOKENS
    return message_tokens(request.messages) + output
