"""A dynamic pipeline over a Ray dataset: the same results as a local run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# See test_ray.py: Ray must not start its workers through uv.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install plait[ray])")

from plait.integrations.ray import map_dataset  # noqa: E402
from plait.testing import Simulator  # noqa: E402

pytestmark = pytest.mark.ray
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
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


def test_a_dynamic_pipeline_on_ray_equals_a_local_run(local_ray: None) -> None:
    from dynamic_pipelines.pipelines import build

    texts = [f"row {index}" for index in range(12)]
    with Simulator.spawn(latency=0.01) as sim:
        resources = {"fast": {"model": "sim", "base_url": sim.base_url, "max_concurrent": 8}}
        local = build().bind(resources).run_sync(texts)
        dataset = ray.data.from_items([{"input": text} for text in texts])
        rows = map_dataset(dataset, build, resources, batch_size=4).take_all()
    by_input = {row["input"]: row for row in rows}
    assert [by_input[text]["output"] for text in texts] == local
    assert all(row["error"] == "" for row in rows)


def test_a_dynamic_module_at_the_top_on_ray_equals_a_local_run(local_ray: None) -> None:
    from dynamic_pipelines.pipelines import build_grow

    texts = [f"row {index}" for index in range(8)]
    with Simulator.spawn(latency=0.01) as sim:
        resources = {"fast": {"model": "sim", "base_url": sim.base_url, "max_concurrent": 8}}
        local = build_grow().bind(resources).run_sync(texts)
        sim.reset_stats()
        dataset = ray.data.from_items([{"input": text} for text in texts])
        rows = map_dataset(dataset, build_grow, resources, batch_size=4).take_all()
        # the loop ran on the workers, three rounds per row
        assert sim.stats().completed == len(texts) * 3
    by_input = {row["input"]: row for row in rows}
    assert [by_input[text]["output"] for text in texts] == local
    assert local[0] == "ECHO: ECHO: ECHO: row 0"
