"""One DSPy row of the benchmark; runs in DSPy's own environment, one process per row.

``python -m benchmarks.learning.dspy_rows ROW --base-url URL --budget N --out FILE``
compiles one DSPy program against the same server, data and metric as the
plait rows, scores it on the test set and writes a JSON row. A process per
row lets the driver stop an optimizer that runs past its time limit and
still report the others; an exception is written into the row whole, so
the table can say exactly why a row has no figures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import time
import traceback
from typing import Any

from benchmarks.learning.task import INSTRUCTION, Example, correct, splits

ROWS = ("predict", "labeled", "bootstrap_rs", "mipro", "gepa")
NAMES = {
    "predict": "DSPy Predict (no optimizer)",
    "labeled": "DSPy LabeledFewShot",
    "bootstrap_rs": "DSPy BootstrapFewShotWithRandomSearch",
    "mipro": "DSPy MIPROv2",
    "gepa": "DSPy GEPA",
}
DEMOS = 16
"""As many demonstrations as the plait module shows (2 per intent)."""
BOOTSTRAP = 48
"""Training examples a bootstrap may run: as many as plait's DemoOptimizer runs."""
_HEADER = re.compile(r"\[\[ ## \w+ ## \]\]")
ERRORS = 10**6
"""DSPy stops an evaluation after ``max_errors`` failed replies; a small model fails many."""


class Counted:
    """The shared metric, counting its calls; DSPy passes (example, prediction, trace...)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, example: Any, prediction: Any, *rest: Any, **options: Any) -> float:
        self.calls += 1
        return float(correct(getattr(prediction, "intent", ""), example.intent))


def _examples(dspy: Any, pairs: list[Example]) -> list[Any]:
    return [
        dspy.Example(message=text, intent=label).with_inputs("message") for text, label in pairs
    ]


def _accuracy(program: Any, examples: list[Any]) -> tuple[float, int]:
    """Test accuracy with one request at a time (the server runs one anyway); failures score 0."""
    right = failed = 0
    for example in examples:
        try:
            prediction = program(message=example.message)
        except Exception:
            failed += 1
            continue
        right += correct(getattr(prediction, "intent", ""), example.intent)
    return right / len(examples), failed


def lenient_adapter(dspy: Any) -> Any:
    """DSPy's chat adapter, reading a reply without its field markers as the one output field.

    SmolLM2-135M rarely writes ``[[ ## intent ## ]]``; DSPy's own adapter then
    raises, and its JSON fallback asks the server for grammar-constrained
    output that takes seconds per reply and still fails. The plait rows score
    the reply text with ``label_of``; reading DSPy's reply the same way keeps
    one metric for every row. The same holds for MIPROv2's instruction
    proposer (one output field, the instruction), which otherwise fails on
    the first proposal.
    """

    parse_error = importlib.import_module("dspy.utils.exceptions").AdapterParseError

    class Lenient(dspy.ChatAdapter):  # type: ignore[misc]
        def parse(self, signature: Any, completion: str) -> dict[str, Any]:
            try:
                return dict(super().parse(signature, completion))
            except parse_error:
                if len(signature.output_fields) != 1:
                    raise
                [name] = signature.output_fields
                return {name: _HEADER.sub(" ", completion).strip()}

    return Lenient(use_json_adapter_fallback=False)


def compile_row(row: str, dspy: Any, budget: int, data: dict[str, list[Any]], proposer: Any) -> Any:
    signature = dspy.Signature("message -> intent", INSTRUCTION)
    student = dspy.Predict(signature)
    train, dev = data["train"], data["dev"]
    metric = COUNTER
    if row == "predict":
        return student
    if row == "labeled":
        return dspy.LabeledFewShot(k=DEMOS).compile(student, trainset=train)
    bootstrap_train = train[:BOOTSTRAP]
    if row == "bootstrap_rs":
        # zero-shot and labelled-only programs cost a dev evaluation each; every
        # bootstrapped one at most a pass over its training examples and one more
        candidates = max(1, (budget - 2 * len(dev)) // (BOOTSTRAP + len(dev)) - 1)
        optimizer = dspy.BootstrapFewShotWithRandomSearch(
            metric=metric,
            max_bootstrapped_demos=4,
            max_labeled_demos=DEMOS,
            num_candidate_programs=candidates,
            num_threads=1,
            max_errors=ERRORS,
        )
        return optimizer.compile(student, trainset=bootstrap_train, valset=dev)
    if row == "mipro":
        # three bootstrapped demo sets over half the training examples, then dev trials
        few = bootstrap_train[: BOOTSTRAP // 2]
        optimizer = dspy.MIPROv2(
            metric=metric,
            prompt_model=proposer,
            auto=None,
            num_candidates=3,
            num_threads=1,
            max_errors=ERRORS,
            max_bootstrapped_demos=4,
            max_labeled_demos=DEMOS,
        )
        trials = max(1, (budget - 3 * len(few)) // len(dev) - 1)
        return optimizer.compile(
            student, trainset=few, valset=dev, num_trials=trials, minibatch=False
        )
    if row == "gepa":
        optimizer = dspy.GEPA(
            metric=metric, max_metric_calls=budget, reflection_lm=proposer, num_threads=1, seed=0
        )
        return optimizer.compile(student, trainset=bootstrap_train, valset=dev)
    raise SystemExit(f"unknown row {row!r}; rows: {', '.join(ROWS)}")


COUNTER = Counted()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("row", choices=ROWS)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--budget", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    dspy: Any = importlib.import_module("dspy")
    # litellm's "openai/" provider sends max_completion_tokens, which this server
    # ignores (the model then writes until its context is full); "hosted_vllm/"
    # is litellm's provider for self-hosted OpenAI-compatible servers.
    lm = dspy.LM(
        "hosted_vllm/local",
        api_base=args.base_url,
        api_key="none",
        temperature=0.0,
        max_tokens=16,  # the field marker and an intent name; plait's rows get 8 for the name
        cache=False,
        num_retries=0,
    )
    # the proposer writes instructions: as many tokens as plait's reflector gets
    proposer = dspy.LM(
        "hosted_vllm/local",
        api_base=args.base_url,
        api_key="none",
        temperature=0.0,
        max_tokens=160,
        cache=False,
        num_retries=0,
    )
    dspy.configure(lm=lm, adapter=lenient_adapter(dspy))
    data = {name: _examples(dspy, pairs) for name, pairs in splits().items()}
    result: dict[str, Any] = {"name": NAMES[args.row]}
    started = time.perf_counter()
    try:
        program = compile_row(args.row, dspy, args.budget, data, proposer)
        result["optimize_seconds"] = time.perf_counter() - started
        result["metric_calls"] = COUNTER.calls
        tested = time.perf_counter()
        result["accuracy"], result["failed_replies"] = _accuracy(program, data["test"])
        result["test_seconds"] = time.perf_counter() - tested
    except Exception as error:
        result["optimize_seconds"] = time.perf_counter() - started
        result["metric_calls"] = COUNTER.calls
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc()
    with open(args.out, "w", encoding="utf-8") as out:
        json.dump(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
