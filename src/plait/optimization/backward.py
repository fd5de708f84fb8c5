"""What a module's ``backward`` receives and returns.

Backward is textual: feedback is text about what was wrong with an output, and
each module turns feedback on its output into feedback on its inputs and its
parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plait.parameter import Parameter


@dataclass(slots=True)
class BackwardContext:
    """One node's view of the forward pass: its resolved inputs, output and parameters.

    ``inputs`` maps argument positions (``0``, ``1``, ...) and keyword names to
    the values the node actually ran with.
    """

    node_id: str
    inputs: dict[int | str, Any]
    output: Any
    parameters: tuple[Parameter, ...] = ()


@dataclass(slots=True)
class BackwardResult:
    """Feedback for a node's inputs (same keys as ``BackwardContext.inputs``) and parameters."""

    inputs: dict[int | str, str] = field(default_factory=dict)
    parameters: dict[int, str] = field(default_factory=dict)

    def for_parameter(self, param: Parameter) -> str | None:
        return self.parameters.get(id(param))

    def set_parameter(self, param: Parameter, feedback: str) -> None:
        self.parameters[id(param)] = feedback
