"""The OpenAI-compatible simulator server and how to run it.

Tests and benchmarks need an endpoint that behaves like a hosted LLM over
real HTTP (latency, rate limits, faults) without the cost, the quota or the
nondeterminism. One server, three ways to host it:

* ``with Simulator(...)``: in a background thread with its own event loop,
  for synchronous tests and notebooks;
* ``async with Simulator(...)``: on the caller's running loop, for async tests;
* ``with Simulator.spawn(...)``: in a separate process, for benchmarks that
  must not share a CPU with the server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from plait.testing._config import FAULT_KINDS, FaultFn, ReplyFn, RuleReply, SimulatorConfig
from plait.testing._dialects import StructuredDialectName
from plait.testing._engine import Engine
from plait.testing._http import Connection
from plait.testing._spawn import SpawnedSimulator
from plait.testing.stats import SimulatorStats

HOST = "127.0.0.1"
_T = TypeVar("_T")
_LOOP_CALL_TIMEOUT = 30.0


class Simulator:
    """A local OpenAI chat-completions server with scripted replies and injected trouble.

    Args:
        port: TCP port on 127.0.0.1; 0 picks a free one.
        latency: seconds each request takes before it is answered.
        latency_jitter: uniform +/- spread around ``latency``.
        latency_sigma: log-normal spread instead: each request draws its own
            latency, ``latency`` is the median (sigma 0.99 puts p99 at 10x it).
        record_latencies: keep the first latency drawn for each prompt (its last
            user message) in ``stats().latencies``, so a benchmark can compute
            the bound a run's latencies set.
        rate_limit: requests allowed per ``rate_window`` seconds (None: unlimited).
            Excess requests get 429 with ``Retry-After`` and ``retry-after-ms``.
        rate_window: the window ``rate_limit`` is counted over.
        rate_burst: token-bucket capacity; default one second's worth (at least 1).
        rate_sliding: count ``rate_limit`` over a sliding ``rate_window`` instead
            of a bucket (any window of that length holds at most that many).
        fault_rate: probability that a request fails with a kind drawn from ``faults``.
        faults: kinds to draw from: ``"503"``, ``"reset"`` (connection dropped
            without a reply), ``"malformed"`` (200 with a body that is not
            JSON), ``"stall"`` (answers only after ``stall_seconds``), ``"429"``
            (asking for ``retry_after``). ``"quota"`` (a 429 saying
            ``insufficient_quota``) is acted out only when named or forced.
        stall_seconds: how long a stalled request hangs.
        retry_after: seconds an injected ``"429"`` asks for, in ``Retry-After``
            (rounded up to whole seconds) and ``retry-after-ms``.
        seed: makes jitter and fault draws reproducible.
        fault: ``fault(sequence_number, body)`` returns a kind to force on that
            request, or None to leave it to ``fault_rate``.
        reply: ``reply(body)`` returns the assistant content (a dict or pydantic
            model is sent as its JSON), or a :class:`ToolCallReply` to call tools.
        rules: ``(regex, reply)`` pairs searched in the joined message contents;
            the first match wins (a :class:`ToolCallReply` only while the conversation
            holds no tool message yet). Without a match, a ``json_schema`` request gets
            a minimal object satisfying its schema, and any other gets
            ``"ECHO: " + <last user message>``.
        stream_pace: seconds between the chunks of a ``stream: true`` reply
            (0: all at once, still as separate SSE events).
        stream_chunk_chars: characters of content per streamed chunk.
        structured_dialect: which ``response_format`` forms the server admits, to
            imitate a real server: ``"any"``, ``"llama_cpp"`` (llama-cpp-python:
            ``json_object`` with a ``schema``; ``json_schema`` gets that server's
            500) or ``"text_only"`` (no constrained decoding: a 400). A schema
            written into a system message is answered as a fenced JSON block.

    A ``stream: true`` request is answered as server-sent events (see
    ``plait.testing._stream``); the fault ``"cut"`` (opt-in) drops such a
    stream after its first content chunk (a whole reply is dropped as by ``reset``).
    Latency and stalls apply after the rate limiter; 429s are answered at once.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        latency: float = 0.0,
        latency_jitter: float = 0.0,
        latency_sigma: float = 0.0,
        record_latencies: bool = False,
        rate_limit: float | None = None,
        rate_window: float = 60.0,
        rate_burst: float | None = None,
        rate_sliding: bool = False,
        fault_rate: float = 0.0,
        faults: Sequence[str] = FAULT_KINDS,
        stall_seconds: float = 30.0,
        retry_after: float = 0.05,
        seed: int | None = None,
        fault: FaultFn | None = None,
        reply: ReplyFn | None = None,
        rules: Sequence[tuple[str, RuleReply]] = (),
        stream_pace: float = 0.0,
        stream_chunk_chars: int = 4,
        structured_dialect: StructuredDialectName = "any",
    ) -> None:
        self._config = SimulatorConfig(
            port=port,
            latency=latency,
            latency_jitter=latency_jitter,
            latency_sigma=latency_sigma,
            record_latencies=record_latencies,
            rate_limit=rate_limit,
            rate_window=rate_window,
            rate_burst=rate_burst,
            rate_sliding=rate_sliding,
            fault_rate=fault_rate,
            faults=faults,
            stall_seconds=stall_seconds,
            retry_after=retry_after,
            seed=seed,
            fault=fault,
            reply=reply,
            rules=rules,
            stream_pace=stream_pace,
            stream_chunk_chars=stream_chunk_chars,
            structured_dialect=structured_dialect,
        )
        self._engine = Engine(self._config)
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._port: int | None = None

    @classmethod
    def spawn(cls, *, startup_timeout: float = 15.0, **options: Any) -> SpawnedSimulator:
        """A simulator to run in a separate process; start it with ``with`` or ``start()``.

        Takes the same keywords as the constructor except the callables,
        which cannot cross a process boundary; use ``rules`` instead (their
        replies may be :class:`ToolCallReply`, so a child process can script tool calls).
        """
        passed = [name for name in ("reply", "fault") if options.get(name) is not None]
        if passed:
            raise TypeError(
                f"Simulator.spawn cannot take {' or '.join(passed)}: callables cannot be sent "
                "to another process; script replies with rules=[(regex, reply), ...] instead"
            )
        return SpawnedSimulator(SimulatorConfig(**options), startup_timeout=startup_timeout)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``, the value to give an OpenAI client."""
        if self._port is None:
            raise RuntimeError("the simulator is not running; enter it with 'with' or 'async with'")
        return f"http://{HOST}:{self._port}/v1"

    @property
    def config(self) -> SimulatorConfig:
        """The validated settings this simulator was built with."""
        return self._config

    def stats(self) -> SimulatorStats:
        """A snapshot of the counters, safe to read from any thread."""
        return self._on_loop(self._engine.stats.snapshot)

    def reset_stats(self) -> None:
        """Zero the counters, refill the rate bucket and rewind the seeded fault draws."""
        self._on_loop(self._engine.reset)

    def start(self) -> None:
        """Serve from a background thread; returns once the port is listening."""
        self._claim()
        ready = threading.Event()
        failure: list[BaseException] = []
        thread = threading.Thread(
            target=asyncio.run,
            args=(self._serve_in_thread(ready, failure),),
            name=f"plait-simulator-{id(self):x}",
            daemon=True,
        )
        self._thread = thread
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            self._thread = None
            raise failure[0]

    def stop(self) -> None:
        """Shut the background server down and join its thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None:
            return
        loop.call_soon_threadsafe(stop.set)
        thread.join()
        self._thread = None

    async def astart(self) -> None:
        """Serve on the running event loop; returns once the port is listening."""
        self._claim()
        await self._open()

    async def aclose(self) -> None:
        """Stop serving on the running loop and drop every open connection."""
        await self._close()

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Simulator:
        await self.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _claim(self) -> None:
        if self._server is not None or self._thread is not None:
            raise RuntimeError("this simulator is already running")

    async def _serve_in_thread(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            await self._open()
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        self._stop = asyncio.Event()
        ready.set()
        try:
            await self._stop.wait()
        finally:
            self._stop = None
            await self._close()

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        factory = functools.partial(Connection, self._engine, self._engine.connections)
        server = await loop.create_server(factory, HOST, self._config.port)
        self._server = server
        self._loop = loop
        self._port = int(server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._engine.close_connections()
        await server.wait_closed()
        # Aborted transports close their sockets in a callback on the next
        # loop iterations; let those run so no socket outlives the server.
        for _ in range(10):
            if not self._engine.connections:
                break
            await asyncio.sleep(0)
        self._loop = None
        self._port = None

    def _on_loop(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the server's loop thread, so it never races the request handlers."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or threading.current_thread() is thread:
            return fn()
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        # Bounded so a call racing stop() fails instead of waiting forever.
        return future.result(timeout=_LOOP_CALL_TIMEOUT)
