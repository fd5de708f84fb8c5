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

import json
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
    multi-part content and the arguments of an assistant turn's tool calls;
    images and other parts, and anything that is not a message dict, count
    for nothing."""
    chars = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            chars += _call_chars(calls)
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
    """A request's prompt plus its output allowance: what a token limiter charges.

    The tools' schemas are part of the prompt a server counts (it renders
    them into the model's context), so they are charged too.
    """
    output = request.max_tokens if request.max_tokens is not None else DEFAULT_OUTPUT_TOKENS
    return prompt_tokens(request.messages, request.tools) + output


def prompt_tokens(messages: Iterable[object], tools: object = None) -> int:
    """The tokens of a prompt: its messages, and the tools' schemas as JSON text.

    Takes the parts rather than a request so that the simulator, which has
    only the request body, counts exactly what the limiter charged.
    """
    tokens = message_tokens(messages)
    if tools:
        tokens += text_tokens(json.dumps(tools, ensure_ascii=False))
    return tokens


def _call_chars(calls: list[object]) -> int:
    """The characters of tool calls' names and argument texts."""
    chars = 0
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            for key in ("name", "arguments"):
                text = function.get(key)
                if isinstance(text, str):
                    chars += len(text)
    return chars
