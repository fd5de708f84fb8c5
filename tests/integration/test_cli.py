"""The ``plait`` console script, driven in a subprocess against the simulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plait.execution import CheckpointManager
from plait.testing import Simulator

HERE = Path(__file__).parent
# The console script that installing plait puts next to the interpreter.
PLAIT = [str(Path(sys.executable).with_name("plait"))]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


def plait(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PLAIT, *args],
        cwd=cwd,
        env={**_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(latency=0.05) as server:
        yield server


def _resources(tmp_path: Path, base_url: str, max_concurrent: int = 8) -> Path:
    path = tmp_path / "resources.yaml"
    path.write_text(
        f"fast:\n  model: sim\n  base_url: {base_url}\n  max_concurrent: {max_concurrent}\n"
    )
    return path


def _inputs(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(f"item {index}") + "\n" for index in range(count)))
    return path


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_writes_every_line_with_its_output(tmp_path: Path, sim: Simulator) -> None:
    inputs = _inputs(tmp_path, 20)
    resources = _resources(tmp_path, sim.base_url)
    done = plait(
        "run", "sample_pipelines.pipelines:build", "--input", str(inputs), "--output",
        str(tmp_path / "out.jsonl"), "--resources", str(resources), "--no-progress",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = {record["line"]: record for record in _records(tmp_path / "out.jsonl")}
    assert sorted(records) == list(range(1, 21))
    assert records[4]["output"] == "ECHO: Polish: ECHO: item 3"
    assert "requests" in done.stderr  # the usage summary
    assert sim.stats().completed == 40


def test_bad_lines_are_recorded_and_the_job_goes_on(tmp_path: Path, sim: Simulator) -> None:
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('"fine"\n{not json\n"also fine"\n')
    errors = tmp_path / "errors.jsonl"
    done = plait(
        "run", "sample_pipelines.pipelines:single", "--input", str(inputs), "--output",
        str(tmp_path / "out.jsonl"), "--errors", str(errors), "--resources",
        str(_resources(tmp_path, sim.base_url)), "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    assert [record["line"] for record in _records(tmp_path / "out.jsonl")] == [1, 3]
    (bad,) = _records(errors)
    assert bad["line"] == 2
    assert "not valid JSON" in str(bad["error"])


def test_killed_run_resumes_without_repeating_a_line(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path, 100)
    output = tmp_path / "out.jsonl"
    with Simulator.spawn(latency=0.1) as server:
        resources = _resources(tmp_path, server.base_url, max_concurrent=4)
        args = [
            *PLAIT, "run", "sample_pipelines.pipelines:single", "--input", str(inputs),
            "--output", str(output), "--resources", str(resources), "--no-progress",
        ]  # fmt: skip
        child = subprocess.Popen(args, cwd=tmp_path, env=_env(), stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if output.exists() and len(output.read_text().splitlines()) >= 30:
                break
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
        first = len(_records(output))
        assert 30 <= first < 100
        finished = plait(*args[len(PLAIT) :], cwd=tmp_path)
        assert finished.returncode == 0, finished.stderr
        sent = server.stats().requests
    lines = [record["line"] for record in _records(output)]
    assert sorted(lines) == list(range(1, 101))  # every line once, none twice
    assert f"{first} already done" in finished.stderr
    assert sent <= 100 + 4  # at most what was in flight at the kill ran twice


def test_graph_prints_mermaid_and_dot(tmp_path: Path) -> None:
    mermaid = plait("graph", "sample_pipelines.pipelines:build", cwd=tmp_path)
    assert mermaid.returncode == 0, mermaid.stderr
    assert mermaid.stdout.startswith("flowchart TD")
    assert "draft" in mermaid.stdout
    assert "polish" in mermaid.stdout
    dot = plait("graph", "sample_pipelines.pipelines:build", "--format", "dot", cwd=tmp_path)
    assert '"draft" -> "polish";' in dot.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["graph", "sample_pipelines.pipelines"], "package.module:factory"),
        (["graph", "sample_pipelines.missing:build"], "cannot import"),
        (["graph", "sample_pipelines.pipelines:nothing"], "no attribute"),
        (["graph", "sample_pipelines.pipelines:NOT_A_MODULE"], "not a plait Module"),
        (["run", "sample_pipelines.pipelines:build", "--input", "nope.jsonl", "--output", "o"],
         "does not exist"),
        (["run", "sample_pipelines.pipelines:build", "--output", "o"], "--input"),
        (["run", "x:y", "--input", "a", "--output", "b", "--max-concurrent", "0"],
         "at least 1"),
        (["frobnicate"], "invalid choice"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_2_with_a_clear_message(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = plait(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr


def _run_fail_named(tmp_path: Path, *extra: str, fail: str) -> subprocess.CompletedProcess[str]:
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('"a"\n"b"\n"c"\n')
    return plait(
        "run", "sample_pipelines.pipelines:fail_named", "--input", str(inputs),
        "--output", str(tmp_path / "out.jsonl"), "--no-progress", *extra,
        cwd=tmp_path, env={"PLAIT_TEST_FAIL": fail},
    )  # fmt: skip


@pytest.mark.parametrize("errors_file", [False, True], ids=["one-file", "errors-file"])
def test_a_rerun_retries_failed_lines_and_exits_nonzero_while_any_remain(
    tmp_path: Path, errors_file: bool
) -> None:
    extra = ("--errors", str(tmp_path / "errors.jsonl")) if errors_file else ()
    first = _run_fail_named(tmp_path, *extra, fail="b")
    assert first.returncode == 1
    assert "1 failed" in first.stderr
    assert "rerun" in first.stderr  # says how to retry them

    still_failing = _run_fail_named(tmp_path, *extra, fail="b")
    assert still_failing.returncode == 1, "a line that failed again is still failed"

    fixed = _run_fail_named(tmp_path, *extra, fail="")
    assert fixed.returncode == 0, fixed.stderr
    assert "1 lines done, 0 failed, 2 already done" in fixed.stderr
    records = _records(tmp_path / "out.jsonl")
    if errors_file:
        assert _records(tmp_path / "errors.jsonl") == []
    assert sorted((record["line"], record.get("output")) for record in records) == [
        (1, "A"),
        (2, "B"),
        (3, "C"),
    ], "exactly one record per line, the retried line's error gone"


def test_keep_failed_leaves_failed_lines_alone_and_still_exits_nonzero(tmp_path: Path) -> None:
    assert _run_fail_named(tmp_path, fail="b").returncode == 1
    kept = _run_fail_named(tmp_path, "--keep-failed", fail="")
    assert kept.returncode == 1
    assert "1 failed line kept" in kept.stderr
    records = _records(tmp_path / "out.jsonl")
    assert [record["line"] for record in records if "error" in record] == [2]


def test_a_factory_that_raises_gets_a_clear_message_and_its_own_exit_code(tmp_path: Path) -> None:
    done = plait(
        "run", "sample_pipelines.pipelines:exploding", "--input", str(_inputs(tmp_path, 1)),
        "--output", str(tmp_path / "out.jsonl"), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 3
    assert (
        "plait: error: the factory sample_pipelines.pipelines:exploding raised RuntimeError: "
        "the factory could not build its pipeline" in done.stderr
    )
    assert "Traceback" not in done.stderr


def test_run_without_resources_says_how_to_give_them(tmp_path: Path) -> None:
    done = plait(
        "run", "sample_pipelines.pipelines:build", "--input", str(_inputs(tmp_path, 1)),
        "--output", str(tmp_path / "out.jsonl"), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--resources" in done.stderr


def test_simulate_help_names_the_command_the_user_typed(tmp_path: Path) -> None:
    done = plait("simulate", "--help", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: plait simulate ")


def test_simulate_serves_until_terminated(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [*PLAIT, "simulate", "--port", "0", "--latency", "0"],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        base_url = child.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        import urllib.request

        with urllib.request.urlopen(f"{base_url}/models", timeout=5) as reply:
            assert reply.status == 200
    finally:
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=10) == 0


def test_checkpointed_run_killed_halfway_resumes_from_its_steps(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path, 100)
    output = tmp_path / "out.jsonl"
    checkpoints = tmp_path / "checkpoints"
    with Simulator.spawn(latency=0.05) as server:
        resources = _resources(tmp_path, server.base_url, max_concurrent=4)
        args = [
            *PLAIT, "run", "sample_pipelines.pipelines:build", "--input", str(inputs),
            "--output", str(output), "--resources", str(resources), "--no-progress",
            "--checkpoint-dir", str(checkpoints),
        ]  # fmt: skip
        child = subprocess.Popen(args, cwd=tmp_path, env=_env(), stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if output.exists() and len(output.read_text().splitlines()) >= 10:
                break
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
        first = len(_records(output))
        assert 10 <= first < 100
        finished = plait(*args[len(PLAIT) :], cwd=tmp_path)
        assert finished.returncode == 0, finished.stderr
    records = _records(output)
    assert sorted(record["line"] for record in records) == list(range(1, 101))
    # Every line got its own input's result (stored results were matched by position+content).
    for record in records:
        assert record["output"] == f"ECHO: Polish: ECHO: item {int(str(record['line'])) - 1}"
    (run,) = CheckpointManager(checkpoints).runs()
    assert run.status == "finished"
    assert run.finished == 100


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("  model: other\n", "line 4: invalid YAML: the key 'model' appears twice (lines 2 and 4)"),
        ('  headers:\n    X-Key: "a\\r\\nX-Evil: 1"\n', "field 'headers': header 'X-Key'"),
        ("  max_concurrent: yes\n", "field 'max_concurrent': must be a number, not the bool"),
    ],
)
def test_a_bad_resources_file_stops_plait_run_before_any_request(
    tmp_path: Path, sim: Simulator, extra: str, expected: str
) -> None:
    resources = tmp_path / "resources.yaml"
    resources.write_text(f"fast:\n  model: sim\n  base_url: {sim.base_url}\n{extra}")
    output = tmp_path / "out.jsonl"
    done = plait(
        "run", "sample_pipelines.pipelines:build", "--input", str(_inputs(tmp_path, 3)),
        "--output", str(output), "--resources", str(resources), "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert str(resources) in done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert sim.stats().requests == 0
    assert not output.exists() or output.read_text() == ""
