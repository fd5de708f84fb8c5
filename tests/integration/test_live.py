"""Against a real endpoint: run only by ``make test-all`` with a key or base URL set."""

from __future__ import annotations

import os

import pytest
from pydantic import BaseModel

from plait import LLMInference, Module
from plait.resources import ResourceConfig, ResourceManager

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        not (os.environ.get("OPENAI_API_KEY") or os.environ.get("PLAIT_BASE_URL")),
        reason="needs OPENAI_API_KEY or PLAIT_BASE_URL",
    ),
]


class Capital(BaseModel):
    country: str
    capital: str


class TwoStep(Module):
    def __init__(self) -> None:
        super().__init__()
        self.name = LLMInference("live", temperature=0, max_tokens=20)
        self.capital = LLMInference("live", temperature=0, response_format=Capital)

    def forward(self, hint: str) -> object:
        country = self.name(f"Name the country described, one word only: {hint}")
        return self.capital(f"Give the capital of {country}.")


@pytest.mark.parametrize("client", ["lean", "openai"])
async def test_a_real_model_answers_a_composed_structured_prompt(client: str) -> None:
    model = os.environ.get("PLAIT_MODEL", "gpt-4o-mini")
    manager = ResourceManager(
        ResourceConfig({"live": {"model": model, "client": client, "max_concurrent": 4}})
    )
    try:
        answers = await TwoStep().bind(manager)(["home of the Eiffel Tower", "land of the Kiwi"])
    finally:
        await manager.aclose()
    assert [answer.capital.lower() for answer in answers] == ["paris", "wellington"]
