"""Self-refine: write, let a judge check, fix until it passes (an ``async def forward``).

The number of rounds depends on the judge's replies, which a traced graph
cannot express; a dynamic module runs on real values instead, on the same
engine (limits, retries, batching). The simulator's judge passes a draft
once it has been fixed twice, so each task takes three writes and three
judgements, and the loop stops by itself.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from plait import LLMInference, Module, Parameter
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator


class Verdict(BaseModel):
    ok: bool
    problem: str


class Refine(Module):
    def __init__(self, rounds: int = 4) -> None:
        super().__init__()
        self.rounds = rounds
        style = Parameter("Write one clear paragraph.", description="how drafts are written")
        self.write = LLMInference("fast", system_prompt=style)
        self.judge = LLMInference("smart", response_format=Verdict)

    async def forward(self, task: str) -> str:
        draft = await self.write(task)
        for _ in range(self.rounds):
            verdict = await self.judge(f"Task: {task}\nDraft: {draft}")
            if verdict.ok:
                break
            draft = await self.write(f"{task}\nFix: {verdict.problem}\nDraft: {draft}")
        return draft


RULES = [
    (r"(?s)^Task: .*Fix: .*Fix: ", '{"ok": true, "problem": ""}'),
    (r"^Task: ", '{"ok": false, "problem": "add an example"}'),
]


async def main() -> None:
    async with Simulator(latency=0.05, rules=RULES) as sim:
        endpoint = {"model": "demo", "base_url": sim.base_url, "max_concurrent": 8}
        resources = ResourceManager(ResourceConfig({"fast": endpoint, "smart": endpoint}))
        try:
            module = Refine().bind(resources=resources)
            for task, draft in zip(
                ["Explain tides", "Explain rain"],
                await module(["Explain tides", "Explain rain"]),
                strict=True,
            ):
                print(f"{task}: {draft.count('Fix:')} fixes -> {draft[:60]!r}")
            print(f"requests: {sim.stats().requests}")
        finally:
            await resources.aclose()


if __name__ == "__main__":
    asyncio.run(main())
