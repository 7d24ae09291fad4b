"""The label-free reward: format gate, sandboxed syntax check, verifier parts, failures, caching."""

from __future__ import annotations

import json

import pytest

from fake_openai import Reply, running_chat_server
from harness.backends import BackendError, ChatBackend, OpenAIChat
from harness.sandbox.executor import Sandbox
from harness.training.reward import PARTS, RewardConfig, RewardModel, RewardWeights
from harness.training.verifier import RUBRICS, VERIFIED_PARTS, read_judgement, verifier_request

GOOD = ("<plan>Detect the cups; count them; with none found the count is 0.</plan>\n"
        "<answer>\ncups = gd_detect(image, \"cup\")\nfinal_answer = len(cups)\n</answer>")
CRASHES = "<plan>Divide.</plan><answer>final_answer = 1 / 0</answer>"
EMPTY_PATH_CRASH = ("<plan>Take the first cup's left edge.</plan>"
                    "<answer>final_answer = gd_detect(image, \"cup\")[0][\"box\"][0]</answer>")
HANGS = "<plan>Wait.</plan><answer>while True:\n    pass</answer>"


class ScriptedVerifier(ChatBackend):
    """Judges by rule: 0 when the user message holds the part's veto word, else 1; may fail a part."""

    def __init__(self, fail_part: str | None = None, garble_part: str | None = None) -> None:
        self.fail_part, self.garble_part = fail_part, garble_part
        self.requests: list[list[dict]] = []

    @property
    def fingerprint(self) -> str:
        return "scripted-verifier"

    def complete(self, messages, **sampling) -> str:
        self.requests.append(messages)
        part = next(p for p in VERIFIED_PARTS if messages[0]["content"].endswith(RUBRICS[p]))
        if part == self.fail_part:
            raise BackendError(f"verifier down for {part}", status=503, attempts=3)
        if part == self.garble_part:
            return "I think it is fine."
        veto = {"logic": "ILLOGICAL", "attribute": "PIXELS", "spatial": "NOWHERE", "adherence": "HARDCODED"}[part]
        score = 0 if veto in messages[1]["content"] else 1
        return json.dumps({"reason": f"{part} checked", "score": score})


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox() as box:
        yield box


def reward_model(sandbox, verifier, **config) -> RewardModel:
    """The harness protocol's reward (tests/test_reward_protocol.py covers the paper's)."""
    return RewardModel(RewardConfig(**{"protocol": "harness", **config}), verifier=verifier, sandbox=sandbox)


def test_a_good_program_earns_every_part(sandbox):
    model = reward_model(sandbox, ScriptedVerifier())
    [result] = model.score_many(["How many cups are there?"], [GOOD])
    assert result.parts == dict.fromkeys(PARTS, 1.0) and result.score == pytest.approx(1.0)
    assert result.failed == [] and result.notes["logic"] == "logic checked"
    assert result.log_fields()["verifier_failures"] == 0.0


@pytest.mark.parametrize("reply", [
    "The answer is 3.",                                        # no tags at all
    "<plan></plan><answer>final_answer = 1</answer>",          # empty plan
    "<plan>Count.</plan><answer>   </answer>",                 # empty program
    "<plan>Count.</plan><answer>final_answer = 1",             # unclosed answer
    "<plan>Count.</plan>\n```python\nfinal_answer = 1\n```",   # a fence instead of answer tags
])
def test_the_format_gate_zeroes_everything_without_asking_the_verifier(sandbox, reply):
    verifier = ScriptedVerifier()
    [result] = reward_model(sandbox, verifier).score_many(["How many cups?"], [reply])
    assert result.score == 0.0 and result.parts == dict.fromkeys(PARTS, 0.0)
    assert verifier.requests == [] and result.notes["format"]


@pytest.mark.parametrize("reply, why", [(CRASHES, "ZeroDivisionError"), (EMPTY_PATH_CRASH, "nothing detected")])
def test_programs_that_crash_lose_the_syntax_part(sandbox, reply, why):
    [result] = reward_model(sandbox, ScriptedVerifier()).score_many(["q"], [reply])
    assert result.parts["syntax"] == 0.0 and result.score == pytest.approx(0.9)
    assert why in result.notes["syntax"]


def test_a_hanging_program_times_out(sandbox):
    [result] = reward_model(sandbox, ScriptedVerifier(), syntax_timeout_s=1.0).score_many(["q"], [HANGS])
    assert result.parts["syntax"] == 0.0 and "timeout" in result.notes["syntax"]


def test_verifier_parts_and_weights(sandbox):
    weights = RewardWeights(syntax=0.0, logic=0.5, attribute=0.5, spatial=0.0, adherence=0.0)
    model = reward_model(sandbox, ScriptedVerifier(), weights=weights)
    illogical = GOOD.replace("Detect the cups", "ILLOGICAL: detect the cups")
    hardcoded = GOOD.replace("final_answer = len(cups)", "final_answer = 3  # HARDCODED")
    results = model.score_many(["q", "q", "q"], [GOOD, illogical, hardcoded])
    assert [r.score for r in results] == pytest.approx([1.0, 0.5, 1.0])
    assert results[1].parts["logic"] == 0.0 and results[2].parts["adherence"] == 0.0


def test_failed_and_unreadable_judgements_are_counted_never_silent(sandbox, caplog):
    model = reward_model(sandbox, ScriptedVerifier(fail_part="spatial", garble_part="attribute"))
    results = model.score_many(["q", "q"], [GOOD, CRASHES])
    for result in results:
        assert sorted(result.failed) == ["attribute", "spatial"]
        assert result.parts["spatial"] == result.parts["attribute"] == 0.0
        assert "verifier down" in result.notes["spatial"] and "unreadable verdict" in result.notes["attribute"]
        assert result.log_fields()["verifier_failures"] == 2.0
    assert results[0].score == pytest.approx(0.1 + 0.3 + 0.2), results[0].notes
    assert model.stats["failed_spatial"] == 2 and model.stats["failed_attribute"] == 2 and model.stats["judgements"] == 8
    assert "verifier failed on 4 of 8 judgements" in caplog.text


def test_requests_put_the_static_part_first():
    a = verifier_request("logic", "How many cups?", "plan one", "code")
    b = verifier_request("logic", "Is the mug left?", "plan two", "other code")
    assert a[0] == b[0] and a[0]["role"] == "system" and "gd_detect" in a[0]["content"]
    assert "How many cups?" in a[1]["content"] and "code" not in a[1]["content"]
    adherence = verifier_request("adherence", "How many cups?", "plan one", "cups = 1")
    assert "cups = 1" in adherence[1]["content"] and "How many cups?" not in adherence[1]["content"]
    with pytest.raises(ValueError, match="unknown verifier part"):
        verifier_request("style", "q", "p", "c")


@pytest.mark.parametrize("reply, score", [
    ('{"reason": "ok", "score": 1}', 1.0), ('```json\n{"reason": "no", "score": 0}\n```', 0.0),
    ("1", 1.0), ('{"reason": "hmm"}', None), ("maybe", None),
])
def test_read_judgement(reply, score):
    assert read_judgement(reply).score == score


def test_verifier_over_http_retries_and_dedupes_identical_completions(sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("VERIFIER_KEY", "sk-test")
    with running_chat_server(monkeypatch) as server:
        server.default = Reply(content='{"reason": "fine", "score": 1}')
        server.script = [Reply(status=500), Reply(status=429, headers={"retry-after-ms": "10"})]
        from harness.backends import with_cache

        verifier = with_cache(OpenAIChat("judge", base_url=server.url, api_key_env="VERIFIER_KEY", backoff_s=0.01,
                                         max_backoff_s=0.02), tmp_path / "verdicts.sqlite")
        model = reward_model(sandbox, verifier)
        results = model.score_many(["How many cups?"] * 3, [GOOD, GOOD, GOOD])  # a group repeating itself
        assert all(r.score == pytest.approx(1.0) and not r.failed for r in results)
        assert len(server.requests) == 4 + 2  # four distinct judgements, two of them retried once
        again = model.score_many(["How many cups?"], [GOOD])  # later steps: from the cache
        assert again[0].score == pytest.approx(1.0) and len(server.requests) == 6

        server.default = Reply(status=500)
        failing = reward_model(sandbox, OpenAIChat("judge", base_url=server.url, api_key_env="VERIFIER_KEY",
                                                   max_retries=1, backoff_s=0.01, max_backoff_s=0.02))
        [result] = failing.score_many(["Is the mug left of the cup?"], [GOOD])
        assert sorted(result.failed) == sorted(VERIFIED_PARTS) and result.score == pytest.approx(0.1)
        assert "HTTP 500" in result.notes["logic"] and "after 2 attempts" in result.notes["logic"]
