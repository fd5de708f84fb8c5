"""Markers in prompts and replies, and how to read them back leniently.

The backward pass and the optimizer ask models to wrap answers in simple
tags. Models follow that most of the time; when one does not, the whole reply
(stripped) is used instead of failing, so any chat model can do the job.
"""

from __future__ import annotations

import re

_NO_CHANGE = re.compile(r"\W*(no changes?( needed)?|none|n/?a)\W*", re.IGNORECASE)


def tagged(reply: str, tag: str) -> str | None:
    """The text inside the last ``<tag>...</tag>`` in ``reply``, or None.

    An opening tag the model never closed counts up to the end of the reply.
    """
    pattern = re.compile(rf"<{tag}>(.*?)</{tag}>", re.IGNORECASE | re.DOTALL)
    found = pattern.findall(reply)
    if found:
        return str(found[-1]).strip()
    opening = re.search(rf"<{tag}>", reply, re.IGNORECASE)
    if opening is not None:
        return reply[opening.end() :].strip()
    return None


def tagged_items(reply: str, tag: str) -> dict[str, str]:
    """Every ``<tag item="id">...</tag>`` block by id (quotes optional)."""
    pattern = re.compile(
        rf"<{tag}\s+item\s*=\s*[\"']?([\w.:-]+)[\"']?\s*>(.*?)</{tag}>",
        re.IGNORECASE | re.DOTALL,
    )
    return {match.group(1).lower(): match.group(2).strip() for match in pattern.finditer(reply)}


def without_tag(reply: str, tag: str) -> str:
    """``reply`` with every ``<tag>...</tag>`` block removed, stripped."""
    return re.sub(rf"<{tag}>.*?</{tag}>", "", reply, flags=re.IGNORECASE | re.DOTALL).strip()


def means_no_change(text: str) -> bool:
    """True for the "nothing to change here" answers models give (``No change.``, ``N/A``)."""
    return not text.strip() or _NO_CHANGE.fullmatch(text) is not None


def quoted(text: str) -> str:
    """Text set off on its own lines, so multi-line values stay readable in a prompt."""
    return f"<<<\n{text}\n>>>"
