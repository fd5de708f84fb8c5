"""Every example and main.py run offline, as a user would run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> str:
    env = {key: value for key, value in os.environ.items()}
    for name in ("OPENAI_API_KEY", "PLAIT_BASE_URL", "OPENAI_BASE_URL"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_main_runs_the_pipeline_against_the_simulator() -> None:
    out = run("main.py")
    assert "starting plait's built-in simulator" in out
    assert out.count("\n  -> ") == 6
    assert "Usage by alias:" in out
    assert "smart" in out


def test_quickstart_composes_the_second_prompt_from_the_first_reply() -> None:
    out = run("examples/quickstart.py")
    assert (
        "Rewrite these notes for a curious ten-year-old:\nECHO: List three facts about tides."
        in out
    )


def test_fan_out_overlaps_the_branches() -> None:
    out = run("examples/fan_out.py")
    assert out.startswith("flowchart TD")
    assert "ECHO: Weaknesses of: paper 0" in out


def test_structured_output_is_a_validated_model() -> None:
    out = run("examples/structured.py")
    assert "Triage {'sentiment': 'negative', 'topic': 'billing', 'urgent': True}" in out
    assert "Draft a reply about billing in a negative tone." in out


def test_streaming_server_streams_every_result_as_ndjson() -> None:
    lines = [
        json.loads(line) for line in run("examples/streaming_server.py", "--self-test").splitlines()
    ]
    assert sorted(line["index"] for line in lines) == [0, 1, 2, 3, 4]
    assert {line["output"] for line in lines} == {
        f"ECHO: Summarize: document {i}" for i in range(5)
    }


@pytest.mark.parametrize("example", sorted(path.name for path in (ROOT / "examples").glob("*.py")))
def test_every_example_is_covered(example: str) -> None:
    covered = {
        "quickstart.py", "fan_out.py", "structured.py", "streaming_server.py",
        "prompt_tuning.py", "batch_job.py", "ray_data.py",
        # run by tests/integration/test_dynamic_examples.py
        "self_refine.py", "router.py", "map_reduce.py", "fallback.py",
        "agent.py",  # run by tests/integration/test_agent_example.py
    }  # fmt: skip
    assert example in covered, f"examples/{example} has no test that runs it"


def test_batch_job_resumes_without_paying_twice() -> None:
    out = run("examples/batch_job.py")
    assert "first run: stopped after 15 of 40 inputs" in out
    resumed = int(out.split("second run: 40 outputs, ")[1].split(" requests")[0])
    assert resumed <= 2 * (40 - 15)  # only the unfinished inputs' calls are sent again
    assert "status finished" in out
