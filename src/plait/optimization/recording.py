"""Training-mode calls: outputs that remember the resources their forward ran on.

A training-mode output already carries its ``ForwardRecord``; this adds the
resource manager the run used, so a loss computed on the output and the
backward pass through it run against the same endpoints without the caller
binding them again.
"""

from __future__ import annotations

from typing import Any

from plait.execution.results import BatchResult
from plait.execution.runner import Call
from plait.values import Value


class TrainingCall(Call):
    """A :class:`Call` whose record-carrying outputs get ``meta["resources"]``."""

    async def result(self) -> Any:
        outputs = await super().result()
        resources = self.settings.resources
        if resources is not None:
            for item in outputs if self.is_batch else [outputs]:
                value = item.output if isinstance(item, BatchResult) else item
                if isinstance(value, Value) and "record" in value.meta:
                    value.meta.setdefault("resources", resources)
        return outputs
