"""A real plait pipeline: three analyses of each review run concurrently, then a join.

With no ``OPENAI_API_KEY`` and no ``PLAIT_BASE_URL`` set, it starts plait's
built-in OpenAI-compatible simulator on a loopback port and runs against that;
otherwise it calls the configured endpoint (model from ``PLAIT_MODEL``,
default ``gpt-4o-mini``). Either way every call is real HTTP.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from plait import ExecutionSettings, LLMInference, Module, Parameter
from plait.resources import ResourceConfig, ResourceManager, format_usage
from plait.testing import Simulator

REVIEWS = [
    "The battery lasts two days and the screen is sharp, but the charger died in a week.",
    "Support took nine days to answer and then closed my ticket without a fix.",
    "Setup was painless; the app is clunky yet it does everything I need.",
    "Arrived scratched. The replacement was perfect and came the next morning.",
    "Great sound for the price, though the case feels cheap.",
    "It stopped syncing after the last update and the rollback did not help.",
]


def simulated_reply(body: dict[str, Any]) -> str:
    """Stand-in for a model when no endpoint is configured: short, review-specific replies."""
    prompt = body["messages"][-1]["content"]
    review = prompt.split("review:\n", 1)[-1]
    clauses = [part.strip(" .") for part in review.replace(";", ",").split(",") if part.strip()]
    if "Summarise the verdict" in prompt:
        notes = prompt.split("these notes:\n", 1)[-1].splitlines()
        points = dict.fromkeys(note.split(": ", 1)[-1].rstrip(".") for note in notes[:2])
        return "Verdict: " + "; ".join(points)
    if "praise" in prompt:
        return f"Praise: {clauses[0]}."
    if "complaints" in prompt:
        return f"Complaint: {clauses[-1]}."
    return "Sentiment: mixed."


class ReviewAnalyzer(Module):
    """Fan out three independent analyses, then join them into one verdict."""

    def __init__(self) -> None:
        super().__init__()
        self.style = Parameter(
            "Answer in one short sentence.",
            description="Style instruction shared by every analysis step",
        )
        self.praise = LLMInference("fast", system_prompt=self.style, temperature=0.2)
        self.complaints = LLMInference("fast", system_prompt=self.style, temperature=0.2)
        self.sentiment = LLMInference("fast", system_prompt=self.style, temperature=0.2)
        self.verdict = LLMInference("smart", temperature=0.2)

    def forward(self, review: str) -> Any:
        praise = self.praise(f"List the praise in this review:\n{review}")
        complaints = self.complaints(f"List the complaints in this review:\n{review}")
        sentiment = self.sentiment(f"Give the overall sentiment of this review:\n{review}")
        return self.verdict(
            f"{self.style}\nSummarise the verdict from these notes:\n"
            f"{praise}\n{complaints}\n{sentiment}"
        )


@contextlib.contextmanager
def endpoint() -> Iterator[tuple[str, str, str | None]]:
    """Yield (base_url, model, api_key): the real endpoint if configured, else a simulator."""
    base_url = os.environ.get("PLAIT_BASE_URL")
    api_key = os.environ.get("OPENAI_API_KEY")
    if base_url or api_key:
        model = os.environ.get("PLAIT_MODEL", "gpt-4o-mini")
        where = base_url or "https://api.openai.com/v1"
        print(f"Using the configured endpoint {where} with model {model}.")
        yield where, model, api_key
        return
    print("No OPENAI_API_KEY or PLAIT_BASE_URL set: starting plait's built-in simulator.")
    with Simulator(latency=0.3, latency_jitter=0.1, reply=simulated_reply, seed=7) as sim:
        print(f"Simulator listening at {sim.base_url}")
        yield sim.base_url, "simulated-model", None


def main() -> int:
    with endpoint() as (base_url, model, api_key):
        shared = {"model": model, "base_url": base_url, "api_key": api_key}
        resources = ResourceManager(
            ResourceConfig(
                {
                    "fast": {**shared, "max_concurrent": 8, "rate_limit": 600},
                    "smart": {**shared, "max_concurrent": 4, "rate_limit": 300},
                }
            )
        )
        pipeline = ReviewAnalyzer()
        with ExecutionSettings(resources=resources, progress=True, max_task_retries=3):
            verdicts = pipeline.run_sync(REVIEWS)
        for review, verdict in zip(REVIEWS, verdicts, strict=True):
            print(f"\n- {review}\n  -> {verdict}")
        print("\nUsage by alias:")
        print(format_usage(resources.usage()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
