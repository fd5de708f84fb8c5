"""``make bench-learning``: plait's optimizers and DSPy's on a real small model, side by side.

Builds (once, cached) and starts SmolLM2-135M-Instruct on a loopback port,
runs the baseline prompt and every optimizer on the banking-intent task with
the same metric-call budget, and prints one table. The figures are written
to ``benchmarks/results/learning.json``. Options: ``--budget N`` (metric calls
per optimizer, default 240), ``--skip-dspy``, ``--dspy-rows a,b``,
``--dspy-timeout SECONDS`` (per DSPy row, default 900).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.learning import environment
from benchmarks.learning.dspy_rows import NAMES, ROWS
from benchmarks.learning.plait_rows import Row, rows
from benchmarks.learning.task import splits

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "learning.json"


def _warm(base_url: str) -> None:
    """One request, so the first row does not pay for loading the model into memory."""
    body = json.dumps(
        {"model": "local", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    ).encode()
    request = urllib.request.Request(
        f"{base_url}/chat/completions", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300):
        pass


def _dspy_row(python: Path, row: str, base_url: str, budget: int, timeout: float) -> Row:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "row.json"
        command = [str(python), "-m", "benchmarks.learning.dspy_rows", row]
        command += ["--base-url", base_url, "--budget", str(budget), "--out", str(out)]
        started = time.perf_counter()
        try:
            subprocess.run(command, cwd=ROOT, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            took = time.perf_counter() - started
            return Row(NAMES[row], None, None, took, 0.0, f"did not finish in {timeout:.0f} s")
        if not out.exists():
            took = time.perf_counter() - started
            return Row(NAMES[row], None, None, took, 0.0, "the DSPy process wrote no result")
        data: dict[str, Any] = json.loads(out.read_text())
    if data.get("traceback"):
        print(data["traceback"], file=sys.stderr)
    return Row(
        data["name"],
        data.get("accuracy"),
        data.get("metric_calls"),
        data.get("optimize_seconds", 0.0),
        data.get("test_seconds", 0.0),
        data.get("error", ""),
        note=(
            f"{data['failed_replies']} of the test replies did not parse (scored 0)"
            if data.get("failed_replies")
            else ""
        ),
    )


def table(found: list[Row]) -> str:
    lines = [
        "| row | test accuracy | metric calls | optimize wall (s) | test wall (s) |",
        "|---|---|---|---|---|",
    ]
    for row in found:
        if row.accuracy is None:
            lines.append(
                f"| {row.name} | failed: {row.error} | {row.metric_calls or '-'} | "
                f"{row.optimize_seconds:.0f} | - |"
            )
            continue
        lines.append(
            f"| {row.name} | {row.accuracy:.3f} | {row.metric_calls} | "
            f"{row.optimize_seconds:.0f} | {row.test_seconds:.0f} |"
        )
    return "\n".join(lines)


def verdicts(found: list[Row]) -> list[str]:
    """The issue's targets, each with whether this run met it."""
    scored = [row for row in found if row.accuracy is not None]
    baseline = next(row for row in scored if row.name == "baseline prompt")
    plait = [row for row in scored if row.name.startswith("plait")]
    dspy = [row for row in scored if row.name.startswith("DSPy") and row.name != NAMES["predict"]]
    best = max(plait, key=lambda row: row.accuracy or 0.0)
    lift = (best.accuracy or 0.0) - (baseline.accuracy or 0.0)
    lines = [
        f"best plait optimizer: {best.name}, +{100 * lift:.1f} points over the baseline "
        f"({'met' if lift >= 0.30 else 'NOT met'}: target +30)"
    ]
    if dspy:
        rival = max(dspy, key=lambda row: row.accuracy or 0.0)
        as_good = (best.accuracy or 0.0) >= (rival.accuracy or 0.0)
        faster = best.optimize_seconds < rival.optimize_seconds
        lines.append(
            f"best DSPy optimizer: {rival.name} at {rival.accuracy:.3f}: plait is "
            f"{'at least as good' if as_good else 'WORSE'} and "
            f"{'faster' if faster else 'SLOWER'} ({best.optimize_seconds:.0f} s vs "
            f"{rival.optimize_seconds:.0f} s)"
        )
    else:
        lines.append("no DSPy optimizer produced a score (see the table for why)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning")
    parser.add_argument("--budget", type=int, default=240)
    parser.add_argument("--skip-dspy", action="store_true")
    parser.add_argument("--dspy-rows", default=",".join(row for row in ROWS if row != "predict"))
    parser.add_argument("--dspy-timeout", type=float, default=900.0)
    args = parser.parse_args()
    started = time.time()
    server = environment.server_python()
    model = environment.model_file(server)
    dspy = None if args.skip_dspy else environment.dspy_python()
    data = splits()
    environment.say(
        f"task: {len(data['train'])} train / {len(data['dev'])} dev / {len(data['test'])} test, "
        f"budget {args.budget} metric calls per optimizer"
    )
    with environment.serving(server, model) as base_url:
        _warm(base_url)
        found = asyncio.run(rows(base_url, data, args.budget))
        if dspy is not None:
            for row in args.dspy_rows.split(","):
                environment.say(f"DSPy row {row}")
                found.append(_dspy_row(dspy, row, base_url, args.budget, args.dspy_timeout))
    print()
    print(table(found))
    print()
    for row in found:
        if row.note:
            print(f"- {row.name}: {row.note}")
    print()
    for line in verdicts(found):
        print(line)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                "python": platform.python_version(),
                "seconds": round(time.time() - started, 1),
                "budget": args.budget,
                "rows": [asdict(row) for row in found],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwritten to {RESULTS} ({time.time() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
