"""What training leaves on Parameters, and saving learned prompts as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plait import LLMInference, Module, Parameter
from plait.errors import ConfigError


def test_parameters_accumulate_feedback_scores_and_upstream_links_until_zeroed() -> None:
    upstream = Parameter("Plan.", description="plan")
    param = Parameter("Write.", description="write")
    param.accumulate_feedback("shorter", upstream=[upstream, param])
    param.accumulate_feedback("", upstream=[Parameter("x", requires_grad=False)])
    param.record_score(0.25)
    param.record_score(1)
    assert param.feedback == ("shorter",)
    assert param.upstream == (upstream,)  # itself and links from empty feedback are not kept
    assert param.scores == (0.25, 1.0)
    param.zero_feedback()
    assert not param.feedback
    assert not param.scores
    assert not param.upstream


class Tuned(Module):
    def __init__(self) -> None:
        super().__init__()
        self.style = Parameter("Be brief.", description="answer style")
        self.rules = Parameter("No jargon.", requires_grad=False)
        self.answer = LLMInference("fast", system_prompt=self.style)


def test_learned_values_round_trip_through_a_json_file(tmp_path: Path) -> None:
    trained = Tuned()
    trained.style.apply_update("Be brief and concrete — «quote» the question.")
    path = tmp_path / "tuned.json"
    trained.save(path)
    assert json.loads(path.read_text()) == trained.state_dict()

    fresh = Tuned().load(path)
    assert fresh.state_dict() == trained.state_dict()
    assert fresh.style.value == "Be brief and concrete — «quote» the question."


def test_loading_unknown_or_missing_keys_is_an_error_unless_not_strict(tmp_path: Path) -> None:
    module = Tuned()
    with pytest.raises(ConfigError, match=r"unexpected keys \['stray'\]"):
        module.load_state_dict({"style": "A", "rules": "B", "stray": "C"})
    with pytest.raises(ConfigError, match=r"missing keys \['rules'\]"):
        module.load_state_dict({"style": "A"})
    assert module.style.value == "Be brief."  # a strict failure changes nothing

    module.load_state_dict({"style": "A", "stray": "C"}, strict=False)
    assert module.state_dict() == {"style": "A", "rules": "No jargon."}

    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"style": "From file"}))
    with pytest.raises(ConfigError, match="missing keys"):
        module.load(path)
    assert module.load(path, strict=False).style.value == "From file"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        module.load(path)
    with pytest.raises(ConfigError, match="cannot load"):
        module.load(tmp_path / "absent.json")
    with pytest.raises(ConfigError, match="must be a str"):
        module.load_state_dict({"style": "half", "rules": 3})  # type: ignore[dict-item]
    assert module.style.value == "From file"  # a bad value anywhere changes nothing
