"""The benchmark's task: banking intents, eight classes, shared by the plait and DSPy runs.

Kept free of plait imports, so DSPy's environment can import it as well and
both sides read the same data, the same instruction and the same metric.
The model answers in plain text and the metric reads the first intent named
in the reply: the server's structured output takes a JSON schema only in
its own dialect, and a label is short enough to parse.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

DATA = Path(__file__).parent / "data" / "intents.jsonl"
LABELS = (
    "balance",
    "transfer",
    "lost_card",
    "fraud",
    "loan",
    "address_change",
    "close_account",
    "atm",
)
INSTRUCTION = (
    "You are a banking assistant. Classify the customer's message into exactly one of these "
    "intents: balance, transfer, lost_card, fraud, loan, address_change, close_account, atm. "
    "Answer with the intent name only."
)
"""The hand-written baseline prompt."""

_PATTERNS = {
    label: re.compile(
        r"\b(" + "|".join(re.escape(label.replace("_", sep)) for sep in ("_", " ", "-")) + r")\b"
    )
    for label in LABELS
}

Example = tuple[str, str]


def splits() -> dict[str, list[Example]]:
    """train / dev / test, each a list of (message, intent), shuffled with a fixed seed.

    The file lists intents one after another; shuffled, any prefix of a
    split (a bootstrap subset, a progress bar's first minute) mixes them.
    """
    found: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
    for line in DATA.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        found[row["split"]].append((row["text"], row["label"]))
    for examples in found.values():
        random.Random(0).shuffle(examples)
    return found


def query(message: str) -> str:
    """The user turn the model sees for one message."""
    return f"Message: {message}"


def label_of(reply: str) -> str | None:
    """The intent a reply names first (``lost card`` and ``lost-card`` count), or None."""
    text = reply.lower()
    first: tuple[int, str] | None = None
    for label, pattern in _PATTERNS.items():
        match = pattern.search(text)
        if match is not None and (first is None or match.start() < first[0]):
            first = (match.start(), label)
    return None if first is None else first[1]


def correct(reply: object, target: object) -> bool:
    """The metric: the reply names the target intent first."""
    return label_of(str(reply)) == target
