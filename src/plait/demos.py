"""Demonstrations: worked examples an ``LLMInference`` shows the model before the query.

A small model follows examples far better than instructions, so the pairs
shown are worth learning as much as the wording of a prompt. ``Demos`` is a
:class:`~plait.parameter.Parameter` so it registers on a module, appears in
``named_parameters()`` and is saved by ``state_dict()`` like any prompt; its
value is the pairs as JSON text, which keeps every state dict plain strings.
Its pairs are chosen (by :class:`~plait.optimization.DemoOptimizer`), never
rewritten as text, so the textual backward pass and the feedback optimizer
leave it alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from plait.errors import ConfigError
from plait.parameter import Parameter
from plait.values import to_text


@dataclass(frozen=True, slots=True)
class Demo:
    """One worked example: the prompt a call received and the reply it should give."""

    input: str
    output: str


class Demos(Parameter):
    """Up to ``k`` demonstrations, rendered as user/assistant turns before the query.

    ``description`` says what the examples demonstrate (as for any learnable
    Parameter). ``examples`` gives starting pairs: ``Demo`` objects or
    ``(input, output)`` tuples; non-text values are rendered as text.
    """

    def __init__(
        self,
        description: str,
        k: int = 4,
        examples: Iterable[Demo | tuple[Any, Any]] = (),
        requires_grad: bool = True,
    ) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"Demos k must be a positive int, got {k!r}")
        self.k = k
        self._pairs: tuple[Demo, ...] = ()
        super().__init__(
            _encode(_as_demos(examples, k)), description=description, requires_grad=requires_grad
        )

    @property
    def value(self) -> str:
        """The pairs as JSON text (what ``state_dict`` saves)."""
        return _encode(self._pairs)

    @value.setter
    def value(self, text: str) -> None:
        self._pairs = _decode(text, self.k)

    @property
    def pairs(self) -> tuple[Demo, ...]:
        """The current demonstrations, in the order they are shown."""
        return self._pairs

    def set(self, examples: Iterable[Demo | tuple[Any, Any]]) -> None:
        """Replace the demonstrations (an optimizer's update)."""
        self.apply_update(_encode(_as_demos(examples, self.k)))

    def messages(self) -> list[dict[str, str]]:
        """The pairs as chat turns, oldest first: user input, then assistant output."""
        turns: list[dict[str, str]] = []
        for demo in self._pairs:
            turns.append({"role": "user", "content": demo.input})
            turns.append({"role": "assistant", "content": demo.output})
        return turns

    def __len__(self) -> int:
        return len(self._pairs)

    def __repr__(self) -> str:
        return (
            f"Demos({len(self._pairs)} of k={self.k}, description={self.description!r}, "
            f"requires_grad={self.requires_grad})"
        )


def _as_demos(examples: Iterable[Demo | tuple[Any, Any]], k: int) -> tuple[Demo, ...]:
    demos: list[Demo] = []
    for example in examples:
        if isinstance(example, Demo):
            demos.append(example)
        elif isinstance(example, tuple) and len(example) == 2:
            demos.append(Demo(to_text(example[0]), to_text(example[1])))
        else:
            raise ConfigError(
                f"a demonstration must be a Demo or an (input, output) tuple, got {example!r}"
            )
    return _checked(demos, k)


def _checked(demos: Sequence[Demo], k: int) -> tuple[Demo, ...]:
    if len(demos) > k:
        raise ConfigError(f"Demos holds at most k={k} demonstrations, got {len(demos)}")
    return tuple(demos)


def _encode(demos: Sequence[Demo]) -> str:
    return json.dumps(
        [{"input": demo.input, "output": demo.output} for demo in demos], ensure_ascii=False
    )


def _decode(text: str, k: int) -> tuple[Demo, ...]:
    """Parse a saved value; anything but a list of input/output objects is refused whole."""
    try:
        data = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError as error:
        raise ConfigError(f"a Demos value must be JSON text: {error}") from None
    if not isinstance(data, list):
        raise ConfigError(f"a Demos value must be a JSON list of pairs, got {text!r:.80}")
    demos: list[Demo] = []
    for item in data:
        if not (
            isinstance(item, dict)
            and set(item) == {"input", "output"}
            and all(isinstance(part, str) for part in item.values())
        ):
            raise ConfigError(
                f'each Demos pair must be {{"input": str, "output": str}}, got {item!r:.80}'
            )
        demos.append(Demo(item["input"], item["output"]))
    return _checked(demos, k)
