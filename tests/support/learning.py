"""A toy classification task and a scripted "model" that learns the way a small one does.

The model labels a word with its category only when it has been shown that
category (a demonstration whose answer is it), or when its instruction tells
it to name categories; otherwise it hedges. So demonstrations and a better
instruction both move the score, as they do on a real small model, and
every test can predict the score of any candidate exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from plait import LLMInference, Module, Parameter
from plait.clients.base import ChatRequest
from plait.demos import Demos
from plait.optimization.reflective import REFLECT_HEADER
from plait.testing import FakeResources, Reply

CATEGORY = {
    "apple": "fruit",
    "pear": "fruit",
    "plum": "fruit",
    "fig": "fruit",
    "oak": "tree",
    "elm": "tree",
    "ash": "tree",
    "pine": "tree",
    "cod": "fish",
    "eel": "fish",
    "tuna": "fish",
    "carp": "fish",
    "red": "colour",
    "blue": "colour",
    "teal": "colour",
    "grey": "colour",
}
HINT = "Name the category."
"""An instruction containing this makes the model answer every query correctly."""

WORDS = list(CATEGORY)
TRAIN = [(word, CATEGORY[word]) for word in WORDS[0::2]]
DEV = [(word, CATEGORY[word]) for word in WORDS[1::2]]


def accuracy(output: Any, target: Any) -> bool:
    return str(output).strip() == str(target)


class Classifier(Module):
    """The module under optimization: an instruction, demonstrations, one call."""

    def __init__(self, instruction: str = "Answer.", k: int = 2) -> None:
        super().__init__()
        self.instruction = Parameter(instruction, description="tells the model what to answer")
        self.demos = Demos("words with their categories", k=k)
        self.llm = LLMInference("fast", system_prompt=self.instruction, demos=self.demos)

    def forward(self, word: str) -> Any:
        return self.llm(f"Word: {word}")


def answer(messages: Sequence[Mapping[str, Any]]) -> str:
    """The toy model's reply to a classification request."""
    query = str(messages[-1]["content"])
    word = query.removeprefix("Word: ").strip()
    system = str(messages[0]["content"]) if messages[0]["role"] == "system" else ""
    shown = {str(message["content"]) for message in messages[:-1] if message["role"] == "assistant"}
    label = CATEGORY.get(word, "?")
    if label in shown or HINT in system:
        return label
    return "not sure"


def model(proposals: Sequence[str] = ()) -> FakeResources:
    """``fast`` classifies; ``optimizer`` plays ``proposals`` to reflection prompts in turn
    (the last one again once they run out)."""
    played = list(proposals)
    count = [0]

    def reply(request: ChatRequest) -> Reply:
        if request.model == "optimizer":
            if not str(request.messages[-1]["content"]).startswith(REFLECT_HEADER):
                return "?"
            index = min(count[0], len(played) - 1)
            count[0] += 1
            return played[index] if played else ""
        return answer(request.messages)

    return FakeResources(reply, aliases=("fast", "optimizer"))
