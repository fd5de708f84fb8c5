"""The ``plait`` command: batch jobs over JSONL, graph rendering, the simulator.

``plait run`` is for the job that has to finish even if the machine does not:
results are appended to the output file as each input finishes, so a rerun
after a crash reads what is already there and runs only the rest. Bad input
lines and failed inputs are recorded per line; they never stop the job.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from plait.errors import FactoryError, PlaitError, UsageError

EXIT_OK = 0
EXIT_FAILED_LINES = 1
EXIT_USAGE = 2
EXIT_FACTORY = 3


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "simulate":
        from plait.testing.__main__ import main as simulate

        return simulate(args[1:], prog="plait simulate")
    parser = _parser()
    options = parser.parse_args(args)
    try:
        if options.command == "graph":
            return _graph(options)
        return _run(options)
    except PlaitError as error:
        print(f"plait: error: {error}", file=sys.stderr)
        return EXIT_FACTORY if isinstance(error, FactoryError) else EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plait", description="Run plait pipelines from the command line."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a module over every line of a JSONL file")
    run.add_argument("target", help="the module, as package.module:factory (or :instance)")
    run.add_argument("--input", required=True, type=Path, help="JSONL file, one input per line")
    run.add_argument("--output", required=True, type=Path, help="JSONL file results go to")
    run.add_argument("--errors", type=Path, help="write failed lines here instead of --output")
    run.add_argument("--resources", type=Path, help="resource config (.yaml, .json or .toml)")
    run.add_argument("--max-concurrent", type=_positive_int, help="engine-wide concurrency cap")
    run.add_argument("--max-retries", type=_non_negative_int, help="retries per failed call")
    run.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="keep finished calls here too, so a rerun also skips the finished steps of "
        "inputs that were cut short",
    )
    run.add_argument(
        "--cache",
        nargs="?",
        const=True,
        metavar="PATH",
        help="reuse identical requests' replies from an on-disk cache (default location, or PATH)",
    )
    run.add_argument("--budget-tokens", type=_positive_int, help="stop after this many tokens")
    run.add_argument("--budget-cost", type=float, help="stop after this cost (needs prices)")
    run.add_argument(
        "--keep-failed",
        action="store_true",
        help="do not retry lines an earlier run recorded as failed (the default retries them)",
    )
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    graph = commands.add_parser("graph", help="print a module's graph")
    graph.add_argument("target", help="the module, as package.module:factory (or :instance)")
    graph.add_argument("--format", choices=("dot", "mermaid"), default="mermaid")
    graph.add_argument(
        "--args", type=int, default=1, help="number of positional inputs forward() takes"
    )

    commands.add_parser("simulate", help="serve the OpenAI-compatible simulator (see --help)")
    return parser


# `plait run` options that map one to one onto ExecutionSettings fields.
_SETTINGS_FROM_OPTIONS = {
    "max_concurrent": "max_concurrent",
    "max_retries": "max_task_retries",
    "checkpoint_dir": "checkpoint_dir",
    "cache": "cache",
    "budget_tokens": "max_tokens_total",
    "budget_cost": "max_cost",
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def load_target(target: str) -> Any:
    """Import ``package.module:name`` and return the Module it names or builds."""
    from plait.module import Module

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"target {target!r} must look like package.module:factory")
    sys.path.insert(0, str(Path.cwd()))
    try:
        imported = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"cannot import {module_name!r}: {error}") from error
    finally:
        sys.path.pop(0)
    try:
        found = getattr(imported, attribute)
    except AttributeError as error:
        raise UsageError(f"{module_name!r} has no attribute {attribute!r}") from error
    if not isinstance(found, Module) and callable(found):
        try:
            found = found()
        except Exception as error:
            raise FactoryError(
                f"the factory {target} raised {type(error).__name__}: {error}"
            ) from error
    if not isinstance(found, Module):
        raise UsageError(f"{target!r} gave a {type(found).__name__}, not a plait Module")
    return found


def _graph(options: argparse.Namespace) -> int:
    from plait.tracing import trace

    module = load_target(options.target)
    graph = trace(module, *(f"input{index}" for index in range(options.args)))
    print(graph.to_dot() if options.format == "dot" else graph.to_mermaid())
    return EXIT_OK


def _earlier(*paths: Path | None) -> tuple[set[int], set[int]]:
    """Line numbers an earlier run of the same job finished, and those it recorded as failed."""
    finished: set[int] = set()
    failed: set[int] = set()
    for path in paths:
        if path is None or not path.exists():
            continue
        with path.open() as existing:
            for text in existing:
                try:
                    record = json.loads(text)
                    line = int(record["line"])
                except (ValueError, KeyError, TypeError):
                    continue
                (finished if "output" in record else failed).add(line)
    return finished, failed - finished


def _drop_records(path: Path | None, lines: set[int]) -> None:
    """Rewrite ``path`` without the records of ``lines``, atomically: a crash keeps the old file."""
    if path is None or not lines or not path.exists():
        return
    kept = []
    for text in path.read_text().splitlines(keepends=True):
        try:
            line = int(json.loads(text)["line"])
        except (ValueError, KeyError, TypeError):
            line = None
        if line not in lines and text.endswith("\n"):
            kept.append(text)
    scratch = path.with_name(path.name + ".rewrite")
    scratch.write_text("".join(kept))
    scratch.replace(path)


def _read_inputs(path: Path, skip: set[int], bad: list[tuple[int, str]]) -> Iterator[Any]:
    """Yield ``(line_number, value)`` for lines still to run; collect unreadable ones."""
    with path.open() as source:
        for number, text in enumerate(source, start=1):
            if number in skip or not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as error:
                bad.append((number, f"line {number} is not valid JSON: {error.msg}"))


def _as_call(value: Any) -> tuple[Any, ...] | dict[str, Any]:
    """A JSON object is keyword arguments, an array positional ones, anything else one input."""
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        return tuple(value)
    return (value,)


def _run(options: argparse.Namespace) -> int:
    if not options.input.exists():
        raise UsageError(f"input file {options.input} does not exist")
    module = load_target(options.target)
    settings: dict[str, Any] = {"streaming": True, "progress": not options.no_progress}
    for option, setting in _SETTINGS_FROM_OPTIONS.items():
        value = getattr(options, option)
        if value is not None:
            settings[setting] = value
    resources = module.resolved_settings().resources
    if options.resources is not None:
        from plait.resources import ResourceConfig, ResourceManager

        resources = settings["resources"] = ResourceManager(
            ResourceConfig.from_file(options.resources)
        )
    elif resources is None and module._uses_llm():
        raise UsageError(
            f"{options.target} makes LLM calls but has no resources: pass --resources FILE "
            "or bind them in the factory"
        )

    finished, failed_before = _earlier(options.output, options.errors)
    kept = failed_before if options.keep_failed else set()
    # Failed lines run again unless kept; their old error records go, so that
    # each line has one record and the files say what is still failed.
    for path in (options.output, options.errors):
        _drop_records(path, failed_before - kept)
    done = finished | kept
    bad: list[tuple[int, str]] = []
    # With a checkpoint, every line goes to the engine so that each input keeps
    # its position (part of its checkpoint identity); finished ones come back
    # from the store without a request and are not written twice.
    skip = set() if options.checkpoint_dir is not None else done
    pending = list(_read_inputs(options.input, skip, bad))
    bad = [(number, message) for number, message in bad if number not in done]
    options.output.parent.mkdir(parents=True, exist_ok=True)
    errors_file = (
        _open_append(options.errors) if options.errors is not None else contextlib.nullcontext()
    )
    with _open_append(options.output) as output, errors_file as errors:
        sink = errors or output
        for number, message in bad:
            _write(sink, {"line": number, "error": message})
        failed = len(bad)
        written = 0
        if pending:
            written, failed_now = asyncio.run(
                _drive(module, pending, settings, resources, output, sink, done)
            )
            failed += failed_now
    report = (
        f"plait: {written} lines done, {failed} failed, {len(finished)} already done by an "
        "earlier run"
    )
    if kept:
        report += f", {len(kept)} failed line{'s' if len(kept) != 1 else ''} kept (--keep-failed)"
    if failed or kept:
        report += "; rerun the same command to retry the failed lines"
    print(report, file=sys.stderr)
    if resources is not None and hasattr(resources, "usage"):
        from plait.resources import format_usage

        print(format_usage(resources.usage()), file=sys.stderr)
    return EXIT_FAILED_LINES if failed or kept else EXIT_OK


async def _drive(
    module: Any,
    pending: list[tuple[int, Any]],
    settings: dict[str, Any],
    resources: Any,
    output: TextIO,
    sink: TextIO,
    done: set[int],
) -> tuple[int, int]:
    """Stream results to the files as they finish; returns (written, failed) counts."""
    from plait.storage.codec import surrogate_error
    from plait.values import jsonable

    written = failed = 0
    try:
        async for result in module.batch([_as_call(value) for _, value in pending], **settings):
            number = pending[result.index][0]
            if number in done:
                continue
            error = result.error
            if error is None:
                value = jsonable(result.output)
                try:
                    _write(output, {"line": number, "output": value})
                    written += 1
                    continue
                except UnicodeEncodeError as unwritable:
                    # Text that is not Unicode fails its line, not the job.
                    error = surrogate_error(value, unwritable)
            failed += 1
            _write(sink, {"line": number, "error": f"{type(error).__name__}: {error}"})
    finally:
        close = getattr(resources, "aclose", None)
        if close is not None:
            await close()
    return written, failed


def _write(stream: TextIO, record: dict[str, Any]) -> None:
    stream.write(json.dumps(record, ensure_ascii=False) + "\n")
    stream.flush()


@contextlib.contextmanager
def _open_append(path: Path) -> Iterator[TextIO]:
    """Open for appending after dropping a partial last line a crash may have left."""
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])
    with path.open("a") as stream:
        yield stream
