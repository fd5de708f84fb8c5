"""examples/agent.py runs offline: the scripted model's answers need every tool's result."""

from __future__ import annotations

from test_examples import run


def test_the_agent_answers_from_its_tools_results() -> None:
    out = run("examples/agent.py")
    # 3 * 0.5 + 2 * 0.7 and 10 * 0.3: the prices exist only in the price tool,
    # and the sums are the calculator's, so both answers need both rounds of tools.
    assert "How much do 3 apples and 2 pears cost? -> That comes to 2.90 EUR." in out
    assert "How much do 10 plums cost? -> That comes to 3.00 EUR." in out
    # Two inputs, three turns each: ask for prices, ask for the sum, answer.
    assert "model turns: 6" in out
