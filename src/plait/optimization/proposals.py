"""The check every optimizer runs on a proposed value before it may be used.

An optimizer's model can be weak: it may answer with nothing, repeat the
value it was shown, paste back the prompt it was asked, or leave the
optimizer's own tags in its answer. None of those is a better prompt, and
trying one on the dev set would spend metric calls to learn so. Whether a
valid proposal is also *better* is for the dev set to say; this only
decides whether it is worth asking.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_MARKER = re.compile(r"</?[A-Z][A-Z_]{2,}\b[^<>]*>|<<<|>>>")
"""The optimizers' tags (``<VALUE>``, ``<FEEDBACK item=...>``) and quoted-block fences."""

_ECHOED_SHARE = 0.5
"""A proposal holding this share of the prompt's lines is the prompt pasted back."""

_MIN_LINE = 12
"""Shorter prompt lines ("Input:", a label) may recur in a good value by chance."""


def rejection(new: str, old: str, prompt: str, scaffold: Sequence[str] = ()) -> str | None:
    """Why ``new`` cannot replace ``old`` (None when it can).

    ``prompt`` is what the optimizer's model was asked; ``scaffold`` lists the
    fixed sentences of that prompt, any one of which in ``new`` marks an echo.
    Markers that ``old`` itself contains are allowed in ``new`` too.
    """
    text = new.strip()
    if not text:
        return "empty"
    if normalise(text) == normalise(old):
        return "unchanged"
    flat = normalise(text)
    if any(normalise(sentence) in flat for sentence in scaffold if sentence.strip()):
        return "an echo of the optimizer's prompt"
    lines = [normalise(line) for line in prompt.splitlines() if len(line.strip()) >= _MIN_LINE]
    own = {normalise(line) for line in old.splitlines()}
    foreign = [line for line in lines if line not in own]
    if foreign and sum(line in flat for line in foreign) >= _ECHOED_SHARE * len(foreign):
        return "an echo of the optimizer's prompt"
    left = sorted(set(_MARKER.findall(text)) - set(_MARKER.findall(old)))
    if left:
        return f"leftover markers {', '.join(left)}"
    return None


def normalise(text: str) -> str:
    """Text compared as a reader would: case and spacing do not count."""
    return " ".join(text.split()).casefold()
