"""Checkpointed dynamic batches the replay tests kill with SIGKILL and run again.

Usage: ``python _durable_dynamic.py PIPELINE BASE_URL CHECKPOINT_DIR``, where
PIPELINE is ``structured`` (a refine loop whose judge returns a pydantic
model) or ``nested`` (a refine loop three dynamic levels down, run twice per
input through ``asyncio.gather``). Prints the outputs as one JSON list.

Every call is sequential inside its loop and replies are scripted, so a test
can work out from the checkpoint file alone how many calls a rerun may skip.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from pydantic import BaseModel

from plait import LLMInference, Module
from plait.resources import ResourceManager

MAX_CONCURRENT = 4
LOOP_CALLS = 6
"""write, then judge and fix twice, then a judge that passes."""

RULES = [
    (r"^Judge: .*draft v3", '{"ok": true, "problem": ""}'),
    (r"^Judge:", '{"ok": false, "problem": "too thin"}'),
    (r"^Check: .*draft v3", "PASS"),
    (r"^Check:", "FAIL"),
    (r"^Fix: .*draft v2", "draft v3"),
    (r"^Fix: .*draft v1", "draft v2"),
    (r"^Write:", "draft v1"),
    (r"^Sum:", "summary"),
]


class Verdict(BaseModel):
    ok: bool
    problem: str


class StructuredRefine(Module):
    """The judge's reply is a Verdict, so its stored calls are pydantic rows."""

    def __init__(self) -> None:
        super().__init__()
        self.write = LLMInference("sim", temperature=0.0)
        self.judge = LLMInference("sim", temperature=0.0, response_format=Verdict)

    async def forward(self, task: str) -> str:
        draft = await self.write(f"Write: {task}")
        for _ in range(5):
            verdict = await self.judge(f"Judge: {task} {draft}")
            if verdict.ok:
                break
            draft = await self.write(f"Fix: {task} {draft} ({verdict.problem})")
        return f"{task}: {draft}"


class Inner(Module):
    """Level three: the refine loop itself."""

    def __init__(self) -> None:
        super().__init__()
        self.write = LLMInference("sim", temperature=0.0)
        self.check = LLMInference("sim", temperature=0.0)

    async def forward(self, task: str) -> str:
        draft = await self.write(f"Write: {task}")
        for _ in range(5):
            if await self.check(f"Check: {task} {draft}") == "PASS":
                break
            draft = await self.write(f"Fix: {task} {draft}")
        return draft


class Middle(Module):
    """Level two: two loops of one input at once."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()

    async def forward(self, task: str) -> str:
        first, second = await asyncio.gather(self.inner(f"{task} a"), self.inner(f"{task} b"))
        return f"{first} / {second}"


class Outer(Module):
    """Level one: the two loops, then a summary of them."""

    def __init__(self) -> None:
        super().__init__()
        self.middle = Middle()
        self.sum = LLMInference("sim", temperature=0.0)

    async def forward(self, task: str) -> str:
        both = await self.middle(task)
        return f"{both} | {await self.sum(f'Sum: {both}')}"


PIPELINES: dict[str, tuple[type[Module], int]] = {
    "structured": (StructuredRefine, 60),
    "nested": (Outer, 12),
}
"""Each pipeline and how many inputs its batch has."""


def inputs_of(pipeline: str) -> list[str]:
    return [f"item {index}" for index in range(PIPELINES[pipeline][1])]


async def run_batch(pipeline: str, base_url: str, checkpoint_dir: str | None) -> list[Any]:
    resources = ResourceManager(
        {"sim": {"model": "sim-model", "base_url": base_url, "max_concurrent": MAX_CONCURRENT}}
    )
    settings: dict[str, Any] = {"max_concurrent": MAX_CONCURRENT}
    if checkpoint_dir is not None:
        settings.update(checkpoint_dir=checkpoint_dir)
    module = PIPELINES[pipeline][0]()
    try:
        outputs: list[Any] = await module.bind(resources=resources).batch(
            inputs_of(pipeline), **settings
        )
        return outputs
    finally:
        await resources.aclose()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run_batch(sys.argv[1], sys.argv[2], sys.argv[3]))), flush=True)
