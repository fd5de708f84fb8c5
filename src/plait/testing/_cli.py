"""Command-line flags for ``python -m plait.testing``, in both directions.

``Simulator.spawn`` starts the server as a child process, so the config has
to travel as argv: :func:`config_to_argv` writes exactly the flags that
:func:`build_parser` reads back, and a test holds the two in step.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from plait.testing._config import FAULT_KINDS, OPT_IN_FAULT_KINDS, RuleReply, SimulatorConfig
from plait.testing._dialects import STRUCTURED_DIALECTS
from plait.testing._tool_calls import ToolCallReply


def build_parser(prog: str = "python -m plait.testing") -> argparse.ArgumentParser:
    """The parser for every option a spawned or hand-started simulator accepts.

    ``prog`` is how the user started it (``plait simulate`` or the module), so
    ``--help`` and errors name the command they typed.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a local OpenAI-compatible chat-completions simulator on 127.0.0.1.",
    )
    add = parser.add_argument
    add("--port", type=int, default=0, help="port to listen on (0 picks a free one)")
    add("--latency", type=float, default=0.0, help="seconds each request takes")
    add("--latency-jitter", type=float, default=0.0, help="uniform +/- jitter on the latency")
    add(
        "--latency-sigma",
        type=float,
        default=0.0,
        help="log-normal spread: latency is the median, each request draws its own",
    )
    add(
        "--record-latencies",
        action="store_true",
        help="keep each prompt's first drawn latency in the stats (benchmarks)",
    )
    add("--rate-limit", type=float, default=None, help="requests allowed per --rate-window")
    add("--rate-window", type=float, default=60.0, help="seconds the rate limit counts over")
    add("--rate-burst", type=float, default=None, help="bucket capacity (default: 1 s of tokens)")
    add(
        "--rate-sliding",
        action="store_true",
        help="count --rate-limit over a sliding --rate-window instead of a token bucket",
    )
    add("--fault-rate", type=float, default=0.0, help="probability a request fails")
    add(
        "--faults",
        type=_fault_list,
        default=FAULT_KINDS,
        help=f"comma-separated fault kinds to draw from (default: {','.join(FAULT_KINDS)})",
    )
    add("--stall-seconds", type=float, default=30.0, help="how long a stalled request hangs")
    add(
        "--retry-after",
        type=float,
        default=0.05,
        help="seconds an injected 429 asks the client to wait (Retry-After and retry-after-ms)",
    )
    add("--seed", type=int, default=None, help="seed for latency jitter and fault draws")
    add("--stream-pace", type=float, default=0.0, help="seconds between streamed chunks")
    add("--stream-chunk-chars", type=int, default=4, help="characters per streamed chunk")
    add(
        "--structured-dialect",
        choices=STRUCTURED_DIALECTS,
        default="any",
        help="which response_format forms to admit, imitating a real server (default: any)",
    )
    add(
        "--rule",
        nargs=2,
        action="append",
        default=[],
        metavar=("PATTERN", "REPLY"),
        help="reply REPLY when PATTERN matches the prompt (repeatable; first match wins)",
    )
    add(
        "--rules-json",
        type=_rules_json,
        default=[],
        help=(
            "rules as a JSON list of [pattern, reply] pairs, applied after --rule; a reply "
            'may be {"tool_calls": [[name, arguments], ...], "content": null} to call tools'
        ),
    )
    return parser


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Turn parsed flags into ``Simulator`` keyword arguments."""
    return {
        "port": args.port,
        "latency": args.latency,
        "latency_jitter": args.latency_jitter,
        "latency_sigma": args.latency_sigma,
        "record_latencies": args.record_latencies,
        "rate_limit": args.rate_limit,
        "rate_window": args.rate_window,
        "rate_burst": args.rate_burst,
        "rate_sliding": args.rate_sliding,
        "fault_rate": args.fault_rate,
        "faults": tuple(args.faults),
        "stall_seconds": args.stall_seconds,
        "retry_after": args.retry_after,
        "seed": args.seed,
        "stream_pace": args.stream_pace,
        "stream_chunk_chars": args.stream_chunk_chars,
        "structured_dialect": args.structured_dialect,
        "rules": [tuple(rule) for rule in args.rule] + list(args.rules_json),
    }


def config_to_argv(config: SimulatorConfig) -> list[str]:
    """Flags that reproduce ``config`` in a child process (callables cannot travel).

    Values use the ``--flag=value`` form so that one starting with ``-`` is
    never mistaken for another flag.
    """
    argv = [
        f"--port={config.port}",
        f"--latency={config.latency!r}",
        f"--latency-jitter={config.latency_jitter!r}",
        f"--latency-sigma={config.latency_sigma!r}",
        f"--rate-window={config.rate_window!r}",
        f"--fault-rate={config.fault_rate!r}",
        f"--faults={','.join(config.faults)}",
        f"--stall-seconds={config.stall_seconds!r}",
        f"--retry-after={config.retry_after!r}",
        f"--stream-pace={config.stream_pace!r}",
        f"--stream-chunk-chars={config.stream_chunk_chars}",
        f"--structured-dialect={config.structured_dialect}",
    ]
    if config.record_latencies:
        argv.append("--record-latencies")
    if config.rate_limit is not None:
        argv.append(f"--rate-limit={config.rate_limit!r}")
    if config.rate_sliding:
        argv.append("--rate-sliding")
    if config.rate_burst is not None:
        argv.append(f"--rate-burst={config.rate_burst!r}")
    if config.seed is not None:
        argv.append(f"--seed={config.seed}")
    if config.rules:
        rules = [
            [pattern, reply.to_json() if isinstance(reply, ToolCallReply) else reply]
            for pattern, reply in config.rules
        ]
        argv.append(f"--rules-json={json.dumps(rules)}")
    return argv


def _fault_list(text: str) -> tuple[str, ...]:
    kinds = tuple(kind.strip() for kind in text.split(",") if kind.strip())
    known = FAULT_KINDS + OPT_IN_FAULT_KINDS
    unknown = [kind for kind in kinds if kind not in known]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(known)}, got {text!r}"
        )
    return kinds


def _rules_json(text: str) -> list[tuple[str, RuleReply]]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    valid = isinstance(data, list) and all(
        isinstance(pair, list)
        and len(pair) == 2
        and isinstance(pair[0], str)
        and isinstance(pair[1], str | dict)
        for pair in data
    )
    if not valid:
        raise argparse.ArgumentTypeError(
            "expected a JSON list of [pattern, reply] pairs, each reply a string or a "
            "tool-call reply object"
        )
    try:
        return [
            (pattern, reply if isinstance(reply, str) else ToolCallReply.from_json(reply))
            for pattern, reply in data
        ]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
