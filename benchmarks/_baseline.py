"""The hand-written client plait is measured against.

This is the code a careful engineer writes without a framework: one aiohttp
session, an ``asyncio.Semaphore`` for the concurrency cap, one task per
request. It is deliberately plain and fast; plait must come within 10% of it.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp


async def run_baseline(base_url: str, prompts: list[str], concurrency: int) -> list[str]:
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

        return await asyncio.gather(*(one(prompt) for prompt in prompts))
