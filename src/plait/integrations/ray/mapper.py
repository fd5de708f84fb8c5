"""``map_batches`` support: one plait module per Ray worker, one engine run per batch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from plait.integrations.ray.budget import SharedBudgetResources
from plait.module import Module


class PlaitMapper:
    """A callable class for ``Dataset.map_batches(PlaitMapper, fn_constructor_kwargs=...)``.

    Ray builds one instance per worker, so the module, its HTTP connections and
    its event loop are created once and reused for every batch. Each row's
    failure is written to ``error_column`` (empty string when the row
    succeeded) instead of failing the Ray task, so one bad row never sinks a
    job of millions; a row without ``input_column`` is such a failure too.

    Each worker's ``ResourceManager`` enforces the endpoints' limits for that
    worker only; pass a ``budget`` (:func:`create_budget`) with the alias's
    ``rate_limit`` and ``max_concurrent`` to hold them across the cluster.
    """

    def __init__(
        self,
        factory: Callable[[], Module],
        resources: Mapping[str, Any],
        *,
        budget: Any = None,
        input_column: str = "input",
        output_column: str = "output",
        error_column: str = "error",
        **settings: Any,
    ) -> None:
        from plait.resources import ResourceConfig, ResourceManager

        module = factory()
        if not isinstance(module, Module):
            raise TypeError(f"the factory must return a plait Module, got {type(module).__name__}")
        manager: Any = ResourceManager(ResourceConfig(resources))
        if budget is not None:
            manager = SharedBudgetResources(manager, budget)
        self.resources = manager
        self.module = module.bind(manager, **settings)
        self.input_column = input_column
        self.output_column = output_column
        self.error_column = error_column
        self._loop = asyncio.new_event_loop()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        size = len(next(iter(batch.values()), ()))
        column = batch.get(self.input_column)
        # A row without the input column (a null in Arrow, or the column
        # absent from the whole block) is that row's error, not the job's.
        values = [None] * size if column is None else [_plain(value) for value in column]
        present = [index for index, value in enumerate(values) if value is not None]
        results = self._loop.run_until_complete(self._run([values[i] for i in present]))
        outputs: list[Any] = [None] * size
        missing = f"KeyError: the row has no {self.input_column!r} column"
        errors = [missing] * size
        for index, result in zip(present, results, strict=True):
            outputs[index] = None if result.error is not None else _plain(result.output)
            errors[index] = (
                "" if result.error is None else f"{type(result.error).__name__}: {result.error}"
            )
        return {**batch, self.output_column: outputs, self.error_column: errors}

    async def _run(self, rows: list[Any]) -> list[Any]:
        if not rows:
            return []
        collected = []
        async for result in self.module.batch([(row,) for row in rows], streaming=True):
            collected.append(result)
        collected.sort(key=lambda result: result.index)
        return collected

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed():
            loop.run_until_complete(self.resources.aclose())
            loop.close()


def _plain(value: Any) -> Any:
    """numpy scalars and pydantic models as plain Python / JSON-like data.

    Not :func:`plait.values.jsonable`: Arrow columns hold lists, dicts and
    numpy arrays natively, so everything else passes through as it is rather
    than becoming its ``str``.
    """
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    return value


def map_dataset(
    dataset: Any,
    factory: Callable[[], Module],
    resources: Mapping[str, Any],
    *,
    budget: Any = None,
    concurrency: int = 2,
    batch_size: int = 64,
    **kwargs: Any,
) -> Any:
    """``dataset.map_batches`` with a PlaitMapper per worker; returns the new dataset."""
    return dataset.map_batches(
        PlaitMapper,
        fn_constructor_kwargs={
            "factory": factory,
            "resources": dict(resources),
            "budget": budget,
            **kwargs,
        },
        concurrency=concurrency,
        batch_size=batch_size,
        num_cpus=0.5,
    )
