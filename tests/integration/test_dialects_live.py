"""Structured output against a real server's dialect: run only with ``PLAIT_REAL_BASE_URL`` set.

Meant for llama-cpp-python's OpenAI-compatible server with a small model (the
one ``make bench-learning`` starts, SmolLM2-135M-Instruct): that server
refuses ``json_schema``, so ``auto`` has to find ``json_object`` on its own,
and ``json_object`` set outright must work at once. The schema is one enum
field, so even a 135M model under the server's grammar gives a reply that
validates; which label it picks is not what is tested here.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from plait import LLMInference, Module
from plait.resources import ResourceManager

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        not os.environ.get("PLAIT_REAL_BASE_URL"), reason="needs PLAIT_REAL_BASE_URL"
    ),
]

REVIEWS = ["I loved this film, the acting was wonderful.", "Terrible and boring, a waste."]


class Sentiment(BaseModel):
    sentiment: Literal["positive", "negative"]


class Label(Module):
    def __init__(self) -> None:
        super().__init__()
        self.llm = LLMInference(
            "real",
            system_prompt="Say whether the review is positive or negative.",
            response_format=Sentiment,
            temperature=0,
            max_tokens=24,
        )

    def forward(self, review: str) -> Any:
        return self.llm(f"Review: {review}")


@pytest.mark.parametrize("client", ["lean", "openai"])
@pytest.mark.parametrize("dialect", ["auto", "json_object"])
async def test_a_real_llama_cpp_python_server_answers_structured_output(
    dialect: str, client: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="plait.resources")
    endpoint = {
        # One model name per case: what auto learns is remembered per endpoint.
        "model": f"{os.environ.get('PLAIT_REAL_MODEL', 'local')}-{dialect}-{client}",
        "base_url": os.environ["PLAIT_REAL_BASE_URL"],
        "api_key": os.environ.get("PLAIT_REAL_API_KEY", "none"),
        "client": client,
        "structured_output": dialect,
        "max_concurrent": 1,
        "timeout": 120,
    }
    manager = ResourceManager({"real": endpoint})
    try:
        answers = await Label().bind(resources=manager)(REVIEWS)
    finally:
        await manager.aclose()
    print(f"\n{dialect}/{client}: {[answer.model_dump() for answer in answers]}")
    assert all(isinstance(answer, Sentiment) for answer in answers)
    assert len(answers) == len(REVIEWS)
    refused = "refused structured output as json_schema; using json_object" in caplog.text
    assert refused is (dialect == "auto")
