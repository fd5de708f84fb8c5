"""Prompt tuning: learn a ticket classifier's system prompt from labelled examples.

The pipeline is one ``LLMInference`` whose system prompt is a learnable
``Parameter``. Each mini-batch is judged by a ``VerifierLoss`` (exact label
match); ``loss.backward()`` has an LLM turn the failures into feedback on the
system prompt, and ``FeedbackOptimizer.step()`` has an LLM rewrite it. The
validation score is printed for every epoch (epoch 0 is the untrained prompt)
and the best prompt is saved to JSON and loaded back.

With no ``OPENAI_API_KEY`` and no ``PLAIT_BASE_URL`` it runs offline against
plait's simulator, whose scripted "model" behaves like a real one would: it
answers in a sentence until told to give the category name only, capitalises
until told to use lowercase, and files refund requests that mention a parcel
under shipping until told otherwise. So the score rises only as the prompt
gains the instructions the feedback asks for. With a key (or base URL) set,
every call goes to that endpoint (model from ``PLAIT_MODEL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plait import ExecutionSettings, LLMInference, Module, Parameter
from plait.optimization import FeedbackOptimizer, TrainingReport, VerifierLoss, fit
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator

LABELS = ("billing", "shipping", "technical")

TRAIN = [
    ("I was charged twice for my subscription this month.", "billing"),
    ("My package has not arrived after two weeks.", "shipping"),
    ("The app crashes whenever I open the settings page.", "technical"),
    ("Please refund me: the parcel was damaged so I sent it back.", "billing"),
    ("Where is my invoice for the March payment?", "billing"),
    ("The courier left my delivery at the wrong address.", "shipping"),
    ("I get an error code 500 when I try to log in.", "technical"),
    ("I returned the parcel last week and still have no refund.", "billing"),
]
VALIDATION = [
    ("My card was billed for an order I cancelled.", "billing"),
    ("Tracking says delivered but no package is here.", "shipping"),
    ("The website shows a blank page after the update.", "technical"),
    ("The parcel never came, so I want my refund.", "billing"),
    ("Can I change the shipping address of my order?", "shipping"),
    ("Password reset emails never reach me, looks like a bug.", "technical"),
]


class TicketClassifier(Module):
    def __init__(self) -> None:
        super().__init__()
        self.instructions = Parameter(
            "Classify the customer support ticket as billing, shipping or technical.",
            description="System prompt of a classifier that labels support tickets as "
            "billing, shipping or technical; the reply is compared with the exact label.",
        )
        self.classify = LLMInference("classifier", system_prompt=self.instructions)

    def forward(self, ticket: str) -> Any:
        return self.classify(f"Ticket: {ticket}")


def exact_label(output: Any, target: str) -> str | None:
    """The verifier: None when the reply is exactly the label, else what is wrong."""
    answer = str(output).strip()
    if answer == target:
        return None
    return (
        f"Expected the label '{target}' but the answer was '{answer}'. Answers must be exactly "
        f"one of: {', '.join(LABELS)}."
    )


# -- the simulated model -------------------------------------------------------------

ONLY_LABEL = "Answer with the category name only."
LOWERCASE = "Write the category in lowercase."
REFUNDS = "Refund requests are billing, even when they mention a parcel."
_RULES = (
    (ONLY_LABEL, "answer with the category name only"),
    (LOWERCASE, "use lowercase"),
    (REFUNDS, "refund requests"),
)


def simulated_reply(body: dict[str, Any]) -> str:
    """Stand-in for the model: a classifier, a backward-pass critic and an optimizer."""
    messages = body["messages"]
    prompt = str(messages[-1]["content"])
    if prompt.startswith("Backward pass"):
        return _critic(prompt)
    if prompt.startswith("Optimizer: rewrite"):
        return _optimizer(prompt)
    if prompt.startswith("Optimizer: condense"):
        return "<SUMMARY>" + _between(prompt, "<FEEDBACK>", "</FEEDBACK>") + "</SUMMARY>"
    system = str(messages[0]["content"]) if messages[0]["role"] == "system" else ""
    return _classify(system, prompt.removeprefix("Ticket: "))


def _classify(system: str, ticket: str) -> str:
    text = ticket.lower()
    if "refund" in text and REFUNDS.lower() in system.lower():
        label = "billing"
    elif re.search(r"parcel|package|deliver|courier|shipping", text):
        label = "shipping"
    elif re.search(r"charge|bill|invoice|payment|refund", text):
        label = "billing"
    else:
        label = "technical"
    if ONLY_LABEL.lower() not in system.lower():
        return f"This ticket is about {label}."
    return label if LOWERCASE.lower() in system.lower() else label.capitalize()


def _critic(prompt: str) -> str:
    reply = _between(prompt, "<REPLY>", "</REPLY>")
    if " " in reply:
        advice = "It should tell the model to answer with the category name only."
    elif reply != reply.lower():
        advice = "It should tell the model to use lowercase for the category."
    else:
        advice = "It should say that refund requests are billing, even when they mention a parcel."
    return f'<FEEDBACK item="p1">{advice}</FEEDBACK>'


def _optimizer(prompt: str) -> str:
    value = _between(prompt, "<CURRENT_VALUE>", "</CURRENT_VALUE>")
    asked = _between(prompt, "<FEEDBACK>", "</FEEDBACK>").lower()
    added = [rule for rule, cue in _RULES if cue in asked and rule not in value]
    new = " ".join([value, *added])
    return f"<SUMMARY>{' '.join(added) or 'nothing new'}</SUMMARY>\n<VALUE>{new}</VALUE>"


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[-1].split(end, 1)[0].strip()


# -- running it ---------------------------------------------------------------------


@contextlib.contextmanager
def endpoint() -> Iterator[tuple[str, str, str | None]]:
    """Yield (base_url, model, api_key): the real endpoint if configured, else a simulator."""
    base_url = os.environ.get("PLAIT_BASE_URL")
    api_key = os.environ.get("OPENAI_API_KEY")
    if base_url or api_key:
        yield (
            base_url or "https://api.openai.com/v1",
            os.environ.get("PLAIT_MODEL", "gpt-4o-mini"),
            api_key,
        )
        return
    print("No OPENAI_API_KEY or PLAIT_BASE_URL set: using plait's simulator with scripted replies.")
    with Simulator(latency=0.01, reply=simulated_reply) as sim:
        yield sim.base_url, "simulated-model", None


async def train(
    base_url: str, model: str, api_key: str | None
) -> tuple[TicketClassifier, TrainingReport]:
    """Fit the classifier's prompt; it ends holding the best validation state."""
    shared = {"model": model, "base_url": base_url, "api_key": api_key, "max_concurrent": 8}
    resources = ResourceManager(
        ResourceConfig({"classifier": shared, "optimizer": {**shared, "max_concurrent": 4}})
    )
    classifier = TicketClassifier()
    optimizer = FeedbackOptimizer(classifier.parameters())
    try:
        async with ExecutionSettings(resources=resources):
            report = await fit(
                classifier,
                VerifierLoss(exact_label),
                optimizer,
                TRAIN,
                VALIDATION,
                epochs=3,
                batch_size=4,
                on_epoch=lambda epoch: print(
                    f"epoch {epoch.epoch}: validation score {epoch.val_score or 0.0:.2f}"
                ),
            )
    finally:
        await resources.aclose()
    return classifier, report


def main() -> TrainingReport:
    with endpoint() as (base_url, model, api_key):
        classifier, report = asyncio.run(train(base_url, model, api_key))
    print(f"\nBest validation score {report.best_score or 0.0:.2f} (epoch {report.best_epoch}).")
    print(f"Learned prompt: {classifier.instructions.value}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "classifier.json"
        classifier.save(path)
        restored = TicketClassifier().load(path)
    print(f"Saved to JSON and loaded back: {restored.state_dict() == classifier.state_dict()}")
    return report


if __name__ == "__main__":
    main()
