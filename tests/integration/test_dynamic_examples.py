"""The dynamic-module examples run offline, and the CLI runs and draws a dynamic pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from plait.testing import Simulator

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
PLAIT = str(Path(sys.executable).with_name("plait"))


def run(*args: str, cwd: Path = ROOT) -> str:
    env = {key: value for key, value in os.environ.items()}
    for name in ("OPENAI_API_KEY", "PLAIT_BASE_URL", "OPENAI_BASE_URL"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_self_refine_stops_when_the_judge_passes() -> None:
    out = run(sys.executable, "examples/self_refine.py")
    assert out.count(": 2 fixes ->") == 2
    assert "requests: 12" in out


def test_the_router_runs_only_the_chosen_branch() -> None:
    out = run(sys.executable, "examples/router.py")
    assert out.splitlines()[:3] == [
        "[math] ECHO: What is 12 * 7?",
        "[chat] ECHO: How are you today?",
        "[math] ECHO: Is 91 prime?",
    ]
    assert "requests: 6" in out


def test_map_reduce_maps_over_as_many_chunks_as_each_document_has() -> None:
    out = run(sys.executable, "examples/map_reduce.py")
    for chunks in range(1, 6):
        assert f"{chunks} chunks -> {chunks} notes combined" in out
    assert "requests: 20, peak concurrency: 4" in out


def test_the_fallback_model_answers_only_what_the_primary_refused() -> None:
    out = run(sys.executable, "examples/fallback.py")
    assert "ECHO: a legal question (fallback after TransientError)" in out
    assert "ECHO: a recipe\n" in out
    assert "'fallback-model': 1" in out


def graph_and_run(tmp_path: Path, target: str, count: int) -> tuple[str, list[Any], int]:
    """``plait graph`` then ``plait run`` of ``target`` over ``count`` items against the
    simulator: the drawing, the outputs written, and the calls the server completed."""
    graph = run(PLAIT, "graph", target, cwd=tmp_path)
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(f"item {index}") + "\n" for index in range(count)))
    with Simulator(latency=0.01) as sim:
        resources = tmp_path / "resources.yaml"
        resources.write_text(f"fast:\n  model: sim\n  base_url: {sim.base_url}\n")
        run(
            PLAIT, "run", target, "--input", str(inputs),
            "--output", str(tmp_path / "out.jsonl"), "--resources", str(resources),
            "--no-progress", cwd=tmp_path,
        )  # fmt: skip
        completed = sim.stats().completed
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    return graph, [record["output"] for record in records], completed


def test_plait_run_and_graph_handle_a_dynamic_pipeline(tmp_path: Path) -> None:
    graph, outputs, completed = graph_and_run(tmp_path, "dynamic_pipelines.pipelines:build", 6)
    assert '[["grow: Grow (dynamic)"]]' in graph
    # "item N" (6 chars) -> "ECHO: item N" (12) -> "ECHO: ECHO: item N" (18) -> 24 chars
    assert completed == 6 * 4
    assert len(outputs) == 6
    assert outputs[0] == "ECHO: Polish: ECHO: ECHO: ECHO: item 0"


def test_plait_run_and_graph_handle_a_dynamic_module_at_the_top(tmp_path: Path) -> None:
    graph, outputs, completed = graph_and_run(tmp_path, "dynamic_pipelines.pipelines:build_grow", 4)
    assert '[["grow: Grow (dynamic)"]]' in graph
    # the loop follows the replies: three rounds until the text is 20 chars long
    assert completed == 4 * 3
    assert outputs == [f"ECHO: ECHO: ECHO: item {index}" for index in range(4)]
