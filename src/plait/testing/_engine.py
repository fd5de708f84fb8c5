"""The simulator's behaviour: routing, rate limiting, faults, replies and counters.

Everything here runs on the server's event loop thread and never blocks:
latency and stalls are timers held by the connection, so ten thousand
sleeping requests cost ten thousand timer handles and nothing else.
"""

from __future__ import annotations

import json
import math
import random
import time
from typing import Any

from plait.resources.tokens import prompt_tokens, text_tokens
from plait.testing._config import SimulatorConfig, check_fault_kind
from plait.testing._dialects import refusal
from plait.testing._http import Connection
from plait.testing._limiter import SlidingWindow, TokenBucket
from plait.testing._replies import Replier, last_user_text, reply_text
from plait.testing._stream import SseReply
from plait.testing.stats import SimulatorStats

DEFAULT_MODEL = "plait-simulator"
_CHAT_PATH = "/v1/chat/completions"
_ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    411: ("invalid_request_error", "length_required"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_exceeded", "rate_limit_exceeded"),
    431: ("invalid_request_error", "headers_too_large"),
    500: ("server_error", "internal_error"),
    503: ("server_error", "service_unavailable"),
}
_MALFORMED_BODY = b'{"id": "chatcmpl-sim-malformed", "object": "chat.completion", "choices": [{'


def error_body(status: int, message: str) -> bytes:
    """An OpenAI-style error body, which SDKs turn into their typed exceptions."""
    kind, code = _ERROR_TYPES.get(status, ("server_error", "error"))
    payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return json.dumps(payload).encode()


class Engine:
    """Answers every request a :class:`Connection` parses; owns the live counters."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = SimulatorStats()
        self.connections: set[Connection] = set()
        rate = config.rate_per_second
        self._limiter: TokenBucket | SlidingWindow | None = None
        if config.rate_limit is not None and config.rate_sliding:
            self._limiter = SlidingWindow(config.rate_limit, config.rate_window)
        elif rate is not None:
            self._limiter = TokenBucket(rate, config.bucket_capacity)
        self._rng = random.Random(config.seed)
        self._replier = Replier(config.reply, config.rules)

    def reset(self) -> None:
        """Zero the counters, refill the rate bucket and rewind the fault dice.

        Rewinding the seeded generator makes a run after a reset replay the
        same fault sequence, so benchmark repetitions are comparable.
        """
        self.stats.reset()
        if self._limiter is not None:
            self._limiter.refill()
        self._rng.seed(self.config.seed)

    def close_connections(self) -> None:
        """Abort every open connection, dropping deferred replies."""
        for conn in list(self.connections):
            conn.close()

    def http_error(self, status: int, message: str) -> bytes:
        return error_body(status, message)

    def handle(self, conn: Connection, method: str, path: str, body: bytes) -> None:
        if path == _CHAT_PATH:
            if method == "POST":
                self._chat(conn, body)
            else:
                conn.send(405, error_body(405, f"use POST for {path}"))
        elif path == "/_sim/stats" and method == "GET":
            conn.send(200, json.dumps(self.stats.to_dict()).encode())
        elif path == "/_sim/reset" and method == "POST":
            self.reset()
            conn.send(200, b'{"reset": true}')
        elif path == "/v1/models" and method == "GET":
            conn.send(200, self._models_body())
        else:
            conn.send(404, error_body(404, f"no route for {method} {path}"))

    def release(self) -> None:
        """Mark one chat request as no longer in flight."""
        self.stats.in_flight -= 1

    def _chat(self, conn: Connection, raw: bytes) -> None:
        stats = self.stats
        seq = stats.requests
        stats.requests = seq + 1
        now = time.monotonic()
        if stats.first_request_at is None:
            stats.first_request_at = now
        stats.last_request_at = now
        try:
            body = json.loads(raw)
        except ValueError:
            conn.send(400, error_body(400, "request body is not valid JSON"))
            return
        problem = _validate(body)
        if problem:
            conn.send(400, error_body(400, problem))
            return
        refused = refusal(self.config.structured_dialect, body)
        if refused is not None:
            stats.refused_formats += 1
            conn.send(refused[0], error_body(refused[0], refused[1]))
            return
        model = body.get("model") or DEFAULT_MODEL
        stats.models[model] = stats.models.get(model, 0) + 1
        stats.in_flight += 1
        if stats.in_flight > stats.peak_concurrency:
            stats.peak_concurrency = stats.in_flight
        if self._limiter is not None:
            wait = self._limiter.try_acquire()
            if wait > 0.0:
                self._rate_limited(conn, wait)
                return
        try:
            kind = self._pick_fault(seq, body)
        except Exception as exc:
            self.release()
            conn.send(500, error_body(500, f"fault callable raised {type(exc).__name__}: {exc}"))
            return
        if kind is not None:
            stats.faults[kind] = stats.faults.get(kind, 0) + 1
        if kind == "429" or kind == "quota":
            stats.rate_limited += 1
            self.release()
            self._refuse(conn, kind)
            return
        delay = self.config.stall_seconds if kind == "stall" else self._latency()
        if self.config.record_latencies:
            stats.latencies.setdefault(last_user_text(body["messages"]), delay)
        if delay > 0.0:
            conn.defer(delay, self.release, self._finish, conn, body, model, kind, seq)
        else:
            self._finish(conn, body, model, kind, seq)

    def _rate_limited(self, conn: Connection, wait: float) -> None:
        self.stats.rate_limited += 1
        self.release()
        wait_ms = math.ceil(wait * 1000.0)
        headers = b"Retry-After: %d\r\nretry-after-ms: %d\r\n" % (math.ceil(wait), wait_ms)
        message = f"rate limit reached; retry in {wait_ms} ms"
        conn.send(429, error_body(429, message), headers)

    def _refuse(self, conn: Connection, kind: str) -> None:
        """An injected 429: a busy endpoint asking for ``retry_after``, or a spent quota.

        The quota body is OpenAI's: the same status as a rate limit, told apart
        only by ``error.code``, and no wait makes it go away.
        """
        if kind == "quota":
            payload = {
                "error": {
                    "message": "You exceeded your current quota, please check your plan.",
                    "type": "insufficient_quota",
                    "param": None,
                    "code": "insufficient_quota",
                }
            }
            conn.send(429, json.dumps(payload).encode())
            return
        wait = self.config.retry_after
        headers = b"Retry-After: %d\r\nretry-after-ms: %d\r\n" % (
            math.ceil(wait),
            round(wait * 1000.0),
        )
        conn.send(429, error_body(429, "simulated rate limit"), headers)

    def _pick_fault(self, seq: int, body: dict[str, Any]) -> str | None:
        config = self.config
        if config.fault is not None:
            forced = config.fault(seq, body)
            if forced is not None:
                check_fault_kind(forced)
                return forced
        if config.fault_rate > 0.0 and self._rng.random() < config.fault_rate:
            return self._rng.choice(config.faults)
        return None

    def _latency(self) -> float:
        config = self.config
        if config.latency_sigma > 0.0 and config.latency > 0.0:
            return self._rng.lognormvariate(math.log(config.latency), config.latency_sigma)
        if config.latency_jitter > 0.0:
            jitter = self._rng.uniform(-config.latency_jitter, config.latency_jitter)
            return max(0.0, config.latency + jitter)
        return config.latency

    def _finish(
        self, conn: Connection, body: dict[str, Any], model: str, kind: str | None, seq: int
    ) -> None:
        streamed = bool(body.get("stream")) and kind not in ("reset", "503", "malformed")
        if not streamed:
            self.release()
        if kind == "reset":
            conn.abort()
            return
        if kind == "503":
            conn.send(503, error_body(503, "simulated overload; try again"))
            return
        if kind == "malformed":
            conn.send(200, _MALFORMED_BODY)
            return
        messages: list[Any] = body["messages"]
        try:
            message, finish_reason = self._replier.message(body, messages)
        except Exception as exc:
            if streamed:
                self.release()
            conn.send(500, error_body(500, f"reply callable raised {type(exc).__name__}: {exc}"))
            return
        # A server never reports an empty prompt or reply as zero tokens.
        prompt_used = max(1, prompt_tokens(messages, body.get("tools")))
        completion_tokens = max(1, text_tokens(reply_text(message)))
        stats = self.stats
        if kind != "cut":
            stats.completed += 1
        stats.prompt_tokens += prompt_used
        stats.completion_tokens += completion_tokens
        if streamed:
            # In flight until the last chunk (or until the client leaves).
            options = body.get("stream_options")
            wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            usage = _usage(prompt_used, completion_tokens) if wants_usage else None
            config = self.config
            sse = SseReply(conn, stats, self.release, config.stream_pace, cut=kind == "cut")
            sse.send(seq, model, message, finish_reason, usage, config.stream_chunk_chars)
            return
        if kind == "cut":
            conn.abort()
            return
        reply = _completion(seq, model, message, finish_reason, prompt_used, completion_tokens)
        conn.send(200, reply)

    def _models_body(self) -> bytes:
        names = dict.fromkeys([DEFAULT_MODEL, *self.stats.models])
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "plait"} for n in names]
        return json.dumps({"object": "list", "data": data}).encode()


def _validate(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("messages"), list):
        return "'messages' must be a list of chat messages"
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        return "'model' must be a string"
    return None


def _completion(
    seq: int,
    model: str,
    message: dict[str, Any],
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> bytes:
    payload = {
        "id": f"chatcmpl-sim-{seq}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(prompt_tokens, completion_tokens),
    }
    return json.dumps(payload).encode()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
