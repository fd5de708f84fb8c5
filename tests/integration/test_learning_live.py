"""Demonstrations learned on a real model: run only with ``PLAIT_REAL_BASE_URL`` set.

Point it at any OpenAI-compatible server, e.g. the one ``make bench-learning``
starts (SmolLM2-135M-Instruct under llama-cpp-python): a slice of the
benchmark's intent task, a few candidate sets, and the claim that learning
demonstrations beats the hand-written prompt on the dev set.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

from plait import LLMInference, Module, Parameter
from plait.optimization import DemoOptimizer, Demos
from plait.resources import ResourceConfig, ResourceManager

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        not os.environ.get("PLAIT_REAL_BASE_URL"), reason="needs PLAIT_REAL_BASE_URL"
    ),
]

TASK = Path(__file__).resolve().parents[2] / "benchmarks" / "learning" / "task.py"


def task() -> ModuleType:
    spec = importlib.util.spec_from_file_location("learning_task", TASK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Intents(Module):
    def __init__(self, instruction: str) -> None:
        super().__init__()
        self.instruction = Parameter(instruction, description="how to label a message")
        self.demos = Demos("messages with their intent", k=16)
        self.llm = LLMInference(
            "real", system_prompt=self.instruction, demos=self.demos, temperature=0, max_tokens=8
        )

    def forward(self, message: str) -> object:
        return self.llm(f"Message: {message}")


async def test_learned_demonstrations_beat_the_hand_written_prompt() -> None:
    intents = task()
    data = intents.splits()
    endpoint = {
        "model": os.environ.get("PLAIT_REAL_MODEL", "local"),
        "base_url": os.environ["PLAIT_REAL_BASE_URL"],
        "api_key": os.environ.get("PLAIT_REAL_API_KEY", "none"),
        "max_concurrent": 2,
        "timeout": 600,
    }
    resources = ResourceManager(ResourceConfig({"real": endpoint}))
    try:
        module = Intents(intents.INSTRUCTION).bind(resources)
        report = await DemoOptimizer(
            module, intents.correct, data["train"], data["dev"][:16], candidates=2, max_bootstrap=16
        ).fit()
    finally:
        await resources.aclose()
    assert report.best_score > report.baseline_score
    assert len(module.demos) == 16
