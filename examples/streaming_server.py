"""A small aiohttp service that streams pipeline results as NDJSON while they finish.

POST a JSON list of texts to /analyze; each line of the response is one
result (``index``, ``output`` or ``error``) in completion order. If the client
disconnects, leaving the ``async for`` cancels the work still in flight.
Run it and, from another shell::

    curl -N -X POST localhost:8080/analyze -d '["first", "second", "third"]'

``--self-test`` starts the service on a free port, sends one request, prints
the streamed lines and exits (this is what the example test runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web

from plait import ExecutionSettings, LLMInference, Module
from plait.resources import ResourceConfig, ResourceManager
from plait.testing import Simulator


class Summarize(Module):
    def __init__(self) -> None:
        super().__init__()
        self.summary = LLMInference("fast")

    def forward(self, text: str) -> Any:
        return self.summary(f"Summarize: {text}")


def make_app(pipeline: Module) -> web.Application:
    async def analyze(request: web.Request) -> web.StreamResponse:
        texts = await request.json()
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise web.HTTPBadRequest(text="expected a JSON list of strings")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        async with ExecutionSettings(streaming=True):
            async for result in pipeline(texts):
                line: dict[str, Any] = {"index": result.index}
                if result.ok:
                    line["output"] = result.output
                else:
                    line["error"] = str(result.error)
                await response.write(json.dumps(line).encode() + b"\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/analyze", analyze)
    return app


async def serve(port: int, self_test: bool) -> None:
    async with Simulator(latency=0.05, latency_jitter=0.04, seed=1) as sim:
        resources = ResourceManager(
            ResourceConfig({"fast": {"model": "demo", "base_url": sim.base_url}})
        )
        runner = web.AppRunner(make_app(Summarize().bind(resources)))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        address = runner.addresses[0]
        try:
            if self_test:
                async with (
                    aiohttp.ClientSession() as client,
                    client.post(
                        f"http://127.0.0.1:{address[1]}/analyze",
                        json=[f"document {index}" for index in range(5)],
                    ) as reply,
                ):
                    async for raw in reply.content:
                        print(raw.decode().strip())
            else:
                print(f"listening on http://127.0.0.1:{address[1]}/analyze")
                await asyncio.Event().wait()
        finally:
            await runner.cleanup()
            await resources.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--self-test", action="store_true")
    options = parser.parse_args()
    asyncio.run(serve(0 if options.self_test else options.port, options.self_test))


if __name__ == "__main__":
    main()
