"""A small tool-using agent: typed Python functions the model calls, run by plait.

``LLMInference(..., tools=[...])`` describes each function to the model (its
schema comes from the signature and docstring), runs the calls the model
makes (those of one turn at the same time), answers the model with the
results and returns its final reply. Here the model is plait's built-in
simulator, scripted to behave like one: it looks two prices up in parallel,
then asks the calculator for the total, then answers. A real endpoint needs
only a different ``base_url``.
"""

from __future__ import annotations

import ast
import asyncio
import operator
import re
from typing import Any, Literal

from plait import LLMInference, Module
from plait.resources import ResourceConfig, ResourceManager, format_usage
from plait.testing import Simulator, ToolCallReply

Fruit = Literal["apple", "pear", "plum"]
PRICES: dict[str, float] = {"apple": 0.5, "pear": 0.7, "plum": 0.3}
_OPERATORS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def price(fruit: Fruit) -> float:
    """The price of one piece of fruit, in euros.

    Args:
        fruit: which fruit.
    """
    return PRICES[fruit]


def calculate(expression: str) -> float:
    """Work out an arithmetic expression with + - * / and parentheses.

    Args:
        expression: e.g. "3 * 0.5 + 2 * 0.7".
    """
    return round(_evaluate(ast.parse(expression, mode="eval").body), 6)


def _evaluate(node: ast.expr) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return float(_OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right)))
    raise ValueError(f"not plain arithmetic: {ast.unparse(node)}")


class Shopper(Module):
    """Answers "how much do N x and M y cost?" with the tools' help."""

    def __init__(self) -> None:
        super().__init__()
        self.agent = LLMInference(
            "fast",
            system_prompt="Answer shopping questions. Use the tools for prices and sums.",
            temperature=0,
            tools=[price, calculate],
            max_tool_rounds=4,
        )

    def forward(self, question: str) -> Any:
        return self.agent(question)


def model(body: dict[str, Any]) -> str | ToolCallReply:
    """The simulator's stand-in for a model that uses its tools sensibly."""
    messages = body["messages"]
    question = next(m["content"] for m in messages if m["role"] == "user")
    wanted = [(int(count), fruit) for count, fruit in re.findall(r"(\d+) (\w+?)s?\b", question)]
    results = [m["content"] for m in messages if m["role"] == "tool"]
    if not results:
        return ToolCallReply([("price", {"fruit": fruit}) for _, fruit in wanted])
    if len(results) == len(wanted):
        terms = " + ".join(
            f"{count} * {cost}" for (count, _), cost in zip(wanted, results, strict=True)
        )
        return ToolCallReply([("calculate", {"expression": terms})])
    return f"That comes to {float(results[-1]):.2f} EUR."


async def main() -> None:
    async with Simulator(reply=model) as sim:
        resources = ResourceManager(
            ResourceConfig({"fast": {"model": "demo", "base_url": sim.base_url}})
        )
        shopper = Shopper().bind(resources)
        questions = ["How much do 3 apples and 2 pears cost?", "How much do 10 plums cost?"]
        try:
            for question, answer in zip(questions, await shopper(questions), strict=True):
                print(f"{question} -> {answer}")
            print(f"model turns: {sim.stats().requests}")
            print(format_usage(resources.usage()))
        finally:
            await resources.aclose()


if __name__ == "__main__":
    asyncio.run(main())
