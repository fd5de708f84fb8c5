"""The hand-written client plait is measured against.

This is the code a careful engineer writes without a framework: one aiohttp
session, an ``asyncio.Semaphore`` for the concurrency cap, one task per
request. It is deliberately plain and fast; plait must come within 10% of it.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp


async def run_baseline(
    base_url: str, prompts: list[str], concurrency: int, *, fan: bool = False
) -> list[str]:
    """Every prompt's reply; with ``fan``, three parallel calls then a joining one each."""
    url = f"{base_url}/chat/completions"
    limit = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, headers={"Content-Type": "application/json"}
    ) as session:

        async def one(prompt: str) -> str:
            body = json.dumps(
                {"model": "sim", "messages": [{"role": "user", "content": prompt}]}
            ).encode()
            async with limit, session.post(url, data=body) as response:
                reply = json.loads(await response.read())
            content: str = reply["choices"][0]["message"]["content"]
            return content

        async def fanned(text: str) -> str:
            parts = await asyncio.gather(
                one(f"Facts in: {text}"), one(f"Risks in: {text}"), one(f"Tone of: {text}")
            )
            return await one("Combine:\n" + "\n".join(parts))

        work = fanned if fan else one
        return await asyncio.gather(*(work(prompt) for prompt in prompts))
