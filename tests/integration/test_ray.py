"""Ray Data integration: a local Ray cluster, workers calling the simulator."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Under `uv run`, Ray starts its workers through uv again, in an environment
# without the ray extra, and they die on start. Ray reads this switch when it is
# imported, so it must be set first.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install plait[ray])")

from plait.integrations.ray import create_budget, map_dataset  # noqa: E402
from plait.testing import Simulator  # noqa: E402

pytestmark = pytest.mark.ray
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    examples = HERE.parents[1] / "examples"
    path = os.pathsep.join([str(HERE), str(examples), os.environ.get("PYTHONPATH", "")])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _resources(base_url: str, **extra: Any) -> dict[str, Any]:
    return {"fast": {"model": "sim", "base_url": base_url, "max_concurrent": 8, **extra}}


def test_results_equal_a_local_run(local_ray: None) -> None:
    from sample_pipelines.pipelines import build

    texts = [f"row {index}" for index in range(40)]
    with Simulator.spawn(latency=0.01) as sim:
        local = build().bind(_resources(sim.base_url)).run_sync(texts)
        dataset = ray.data.from_items([{"input": text} for text in texts])
        rows = map_dataset(dataset, build, _resources(sim.base_url), batch_size=10).take_all()
    by_input = {row["input"]: row for row in rows}
    assert [by_input[text]["output"] for text in texts] == local
    assert all(row["error"] == "" for row in rows)


def _rate_limited_run(budget: Any, rpm: float, count: int) -> tuple[int, int]:
    """Two workers against a server enforcing ``rpm``: (429s seen, rows that failed)."""
    from sample_pipelines.pipelines import single

    with Simulator.spawn(latency=0.01, rate_limit=rpm, rate_window=60.0) as sim:
        dataset = ray.data.from_items([{"input": f"q{index}"} for index in range(count)])
        rows = map_dataset(
            dataset, single, _resources(sim.base_url), budget=budget, concurrency=2, batch_size=15
        ).take_all()
        refused = sim.stats().rate_limited
    return refused, sum(1 for row in rows if row["error"])


def test_two_workers_share_one_rate_budget(local_ray: None) -> None:
    rpm, count = 600.0, 60  # 10 requests per second in total, across both workers
    budget = create_budget({"fast": {"rate_limit": rpm}})
    refused, failed = _rate_limited_run(budget, rpm, count)
    granted = ray.get(budget.stats.remote())["fast"]
    assert failed == 0
    assert granted["granted"] == count  # every request went through the shared budget
    # The permits were handed out at the shared pace, not each worker's own.
    assert granted["last"] - granted["first"] >= (count - 1) / (rpm / 60) * 0.99
    # Scheduling jitter on 2 loaded cores can bunch a few sends; without the
    # budget the same job is refused far more often (the control below), even
    # with each worker's own adaptive backoff.
    assert refused <= count * 0.1
    unbudgeted_refused, _ = _rate_limited_run(None, rpm, count)
    assert unbudgeted_refused >= 10
    assert unbudgeted_refused > 3 * refused


def test_a_failing_row_lands_in_the_error_column(local_ray: None) -> None:
    from sample_pipelines.pipelines import guarded

    with Simulator.spawn(latency=0.0) as sim:
        dataset = ray.data.from_items([{"input": text} for text in ["ok one", "boom", "ok two"]])
        rows = map_dataset(dataset, guarded, _resources(sim.base_url), batch_size=3).take_all()
    by_input = {row["input"]: row for row in rows}
    assert "refusing to process 'boom'" in by_input["boom"]["error"]
    assert by_input["boom"]["output"] is None
    assert by_input["ok one"]["output"] == "ECHO: ok one"
    assert by_input["ok two"]["error"] == ""


def test_the_ray_example_classifies_every_row(local_ray: None) -> None:
    import sys

    sys.path.insert(0, str(HERE.parents[1] / "examples"))
    try:
        from ray_data import classify_rows
    finally:
        sys.path.pop(0)
    with Simulator.spawn(latency=0.0) as sim:
        rows = classify_rows(sim.base_url, ["alpha", "beta", "gamma"])
        assert sim.stats().rate_limited == 0
    assert sorted(row["output"] for row in rows) == [
        "ECHO: Label the topic of: alpha",
        "ECHO: Label the topic of: beta",
        "ECHO: Label the topic of: gamma",
    ]


def test_the_shared_budget_holds_concurrency_across_workers(local_ray: None) -> None:
    """Each worker's manager allows 4; the budget holds 4 for the whole cluster.

    Before: the max_concurrent key was ignored and three workers sent up to 12
    at once (4 each).
    """
    from sample_pipelines.pipelines import single

    budget = create_budget({"fast": {"max_concurrent": 4}})
    with Simulator.spawn(latency=0.25) as sim:
        dataset = ray.data.from_items([{"input": f"q{index}"} for index in range(120)])
        rows = map_dataset(
            dataset,
            single,
            _resources(sim.base_url, max_concurrent=4),
            budget=budget,
            concurrency=3,
            batch_size=10,
        ).take_all()
        peak = sim.stats().peak_concurrency
    assert all(row["error"] == "" for row in rows)
    assert len(rows) == 120
    assert peak <= 4  # 12 before
    assert ray.get(budget.stats.remote())["fast"]["peak_concurrency"] <= 4


def test_create_budget_refuses_unknown_keys_and_bad_values() -> None:
    from plait.errors import ConfigError

    with pytest.raises(ConfigError, match=r"max_concurent.*did you mean 'max_concurrent'"):
        create_budget({"fast": {"max_concurent": 4}})
    with pytest.raises(ConfigError, match="rate_limit"):
        create_budget({"fast": {"rate_limit": -1}})


def test_a_row_missing_the_input_column_lands_in_the_error_column(local_ray: None) -> None:
    """Before: the KeyError failed the whole job."""
    from sample_pipelines.pipelines import single

    with Simulator.spawn(latency=0.0) as sim:
        dataset = ray.data.from_items([{"input": "ok one"}, {"text": "no input"}, {"input": "ok"}])
        rows = map_dataset(dataset, single, _resources(sim.base_url), batch_size=3).take_all()
        no_column = ray.data.from_items([{"text": "a"}, {"text": "b"}])
        bare = map_dataset(no_column, single, _resources(sim.base_url), batch_size=2).take_all()
    by_input = {row.get("input"): (row["output"], row["error"]) for row in rows}
    assert by_input["ok one"] == ("ECHO: ok one", "")
    assert by_input["ok"] == ("ECHO: ok", "")
    output, error = by_input[None]
    assert output is None
    assert "no 'input' column" in error
    assert [row["output"] for row in bare] == [None, None]
    assert all("no 'input' column" in row["error"] for row in bare)
