"""The reward's paper protocol: the original's parser, prompts (from pinned files), verdicts and syntax rule."""

from __future__ import annotations

import pytest

from harness.backends import BackendError, ChatBackend
from harness.sandbox.executor import Sandbox
from harness.training.protocol import (
    HarnessProtocol,
    PaperProtocol,
    ProtocolError,
    check_original_syntax,
    paper_parse,
    paper_verdict,
)
from harness.training.reward import PARTS, RewardConfig, RewardModel
from harness.training.verifier import VERIFIED_PARTS
from harness.upstream import UpstreamAssetError
from upstream_fixtures import API_TEXT, FILES, write_upstream
from harness import upstream

PAPER_GOOD = ("<plan>Find the cups and count them.</plan>\n"
              "<answer>\n```python\ncups = gd_detect(img_pth, \"cup, mug\")\nfinal_answer = len(cups)\n```\n</answer>")


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    return write_upstream(tmp_path_factory.mktemp("upstream"))


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox() as box:
        yield box


class Verifier(ChatBackend):
    """Answers each part from a table: a verdict text, or None for a failed call."""

    def __init__(self, answers: dict[str, str | None]) -> None:
        self.answers = answers
        self.requests: list[list[dict]] = []

    @property
    def fingerprint(self) -> str:
        return "table-verifier"

    def complete(self, messages, **sampling) -> str:
        self.requests.append(messages)
        part = next(p for p, name in (("logic", "LOGIC"), ("attribute", "ATTRIBUTE"), ("spatial", "SPATIAL"),
                                      ("adherence", "ADHERENCE")) if f"FIXTURE {name} CHECK" in messages[0]["content"])
        answer = self.answers.get(part, "<answer>1</answer>")
        if answer is None:
            raise BackendError(f"{part}: verifier unreachable", status=503, attempts=3)
        return answer


@pytest.mark.parametrize("reply, gated, plan, code", [
    ("<plan>p</plan><answer>x = 1</answer>", True, "p", "x = 1"),
    ("<PLAN> p </PLAN>\n<Answer>\n```python\nx = 1\n```\n</Answer>", True, "p", "x = 1"),  # any case; fence removed
    ("Thinking first.\n<plan>p</plan>then<answer>x = 1</answer>trailing", True, "p", "x = 1"),  # outside text ignored
    ("<plan>a</plan><plan>b</plan><answer>x = 1</answer>", True, "", "x = 1"),  # a repeated tag: judged empty
    ("<plan>p</plan><answer>x</answer><answer>y</answer>", True, "p", ""),
    ("<plan></plan><answer></answer>", True, "", ""),  # empty blocks pass the original's gate
    ("<plan>p</plan>", False, "", ""),
    ("<answer>x = 1</answer>", False, "", ""),
    ("<plan>p</plan><answer>x = 1", False, "", ""),  # unclosed
])
def test_paper_parse_follows_the_original(reply, gated, plan, code):
    parsed = paper_parse(reply)
    assert (parsed.gated, parsed.plan, parsed.code) == (gated, plan, code)


@pytest.mark.parametrize("reply, score, unreadable", [
    ("<answer>1</answer>", 1.0, False), ("Reasoning... <ANSWER> 0 </ANSWER>", 0.0, False), ("1", 1.0, False),
    ("<answer>2</answer>", 2.0, False),  # any integer, used as it is
    ("<answer>yes</answer>", 0.0, True), ("The plan is fine.", 0.0, True), ("<answer>1.0</answer>", 0.0, True),
])
def test_paper_verdict_is_the_integer_in_the_answer_tag_else_0(reply, score, unreadable):
    judgement = paper_verdict(reply)
    assert judgement.score == score and judgement.unreadable == unreadable


def test_paper_requests_fill_the_pinned_templates_in_one_user_turn(texts):
    protocol = PaperProtocol(texts)
    logic = protocol.request("logic", "How many cups?", "Count them.", "final_answer = 1")
    assert len(logic) == 1 and logic[0]["role"] == "user"
    assert logic[0]["content"] == FILES[upstream.LOGIC_REWARD].format("How many cups?", "Count them.", API_TEXT)
    adherence = protocol.request("adherence", "How many cups?", "Count them.", "final_answer = 1")
    assert adherence[0]["content"] == FILES[upstream.CODE_REWARD].format("Count them.", "final_answer = 1", API_TEXT)
    assert "How many cups?" not in adherence[0]["content"]
    # Text with braces of its own goes in as it is.
    braces = protocol.request("spatial", "What is {x}?", "Use {} here.", "")
    assert "What is {x}?" in braces[0]["content"] and "Use {} here." in braces[0]["content"]


def test_paper_texts_come_only_from_checked_pinned_files(texts, tmp_path):
    store = texts.store
    changed = tmp_path / "changed"
    for asset in store.pin.assets:
        target = changed / store.pin.repo / asset.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((store.data_dir / store.pin.repo / asset.path).read_bytes())
    (changed / store.pin.repo / upstream.LOGIC_REWARD).write_text("an edited prompt {} {} {}")
    from harness.upstream import AssetStore, PaperTexts

    with pytest.raises(UpstreamAssetError, match="logic_reward.txt"):
        PaperProtocol(PaperTexts(AssetStore(pin=store.pin, data_dir=changed, cache_dir=tmp_path / "cache")))
    monkey_offline = AssetStore(pin=store.pin, data_dir=tmp_path / "empty", cache_dir=tmp_path / "cache2")
    import os

    os.environ["HARNESS_OFFLINE"] = "1"
    try:
        with pytest.raises(UpstreamAssetError, match="not available offline"):
            PaperProtocol(PaperTexts(monkey_offline))
    finally:
        del os.environ["HARNESS_OFFLINE"]


@pytest.mark.parametrize("code, ok", [
    ('boxes = gd_detect(img_pth, "cup, red mug")\nfinal_answer = boxes[1]["bbox"][2] + len(boxes)', True),
    ('d = depth(img_pth, [1, 2, 3, 4])\nanswer = vqa(img_pth, None, "colour?")\nfinal_answer = (d, answer)', True),
    ("final_answer = gd_detect(img_pth, 'cup')[0]['box']", False),   # the original's boxes are 'bbox'
    ("final_answer = depth(img_pth, [1, 2])", False),                  # its depth wants 4 numbers
    ("x = 1", False),                                                  # final_answer never set
    ("final_answer = 1 / 0", False),
    ("final_answer = gd_detect(image=img_pth, phrases='cup')", False),  # our keyword names are not the original's
    ("return 5", False),  # the original's wrapper: `return x` yields final_answer, still None
    ("final_answer = 2\nreturn None", True),
    ("final_answer = img_pth == ''", True),  # the original's img_pth was the empty string
])
def test_the_original_syntax_rule_runs_once_against_its_stubs(sandbox, code, ok):
    assert check_original_syntax(sandbox, code, RewardConfig(protocol="harness").syntax_policy).ok is ok


def test_a_program_that_only_handles_found_objects_passes_paper_not_harness(sandbox):
    code = 'boxes = gd_detect(img_pth, "cup")\nfinal_answer = boxes[0]["bbox"][0]'
    policy = RewardConfig(protocol="harness").syntax_policy
    assert PaperProtocol.syntax(None, sandbox, code, policy).ok  # the stubs always find one box
    ours = code.replace('"bbox"', '"box"')
    assert not HarnessProtocol().syntax(sandbox, ours, policy).ok  # ours also runs it with nothing found


def test_paper_reward_end_to_end(texts, sandbox, caplog):
    verifier = Verifier({"attribute": "I would say yes.", "spatial": None})
    config = RewardConfig(protocol="paper", verifier={"backend": "scripted"})
    model = RewardModel(config, verifier=verifier, sandbox=sandbox, texts=texts)
    good, no_plan = model.score_many(["How many cups?", "q"], [PAPER_GOOD, "<answer>final_answer = 1</answer>"])
    assert good.parts["format"] == good.parts["syntax"] == good.parts["logic"] == good.parts["adherence"] == 1.0
    assert good.parts["attribute"] == 0.0 and good.unreadable == ["attribute"]  # scored 0, as the original
    assert good.failed == ["spatial"] and good.excluded  # a failed call: excluded, never a silent 0
    assert good.score == pytest.approx(0.1 + 0.3 + 0.2)
    fields = good.log_fields()
    assert fields["verifier_failures"] == 1.0 and fields["excluded"] == 1.0 and fields["unreadable_verdicts"] == 1.0
    assert no_plan.score == 0.0 and no_plan.parts == dict.fromkeys(PARTS, 0.0) and not no_plan.excluded
    assert len(verifier.requests) == len(VERIFIED_PARTS)  # the ungated reply asked nothing
    assert all(len(request) == 1 and request[0]["role"] == "user" for request in verifier.requests)
    assert model.stats["excluded"] == 1 and model.stats["failed_spatial"] == 1 and model.stats["unreadable_attribute"] == 1
    assert "1 rollouts excluded" in caplog.text


def test_protocol_defaults_and_settings(tmp_path):
    paper, harness = RewardConfig(), RewardConfig(protocol="harness")
    assert paper.protocol == "paper"
    assert paper.verifier["model"] == harness.verifier["model"] == "gemini-2.5-flash"
    assert paper.verifier["temperature"] is None and "thinking_budget" not in paper.verifier  # the model's defaults
    assert paper.verifier_sampling == {}
    assert harness.verifier["thinking_budget"] == 0 and harness.verifier_sampling == {"temperature": 0.0}
    assert RewardConfig(verifier={"model": "gemini-2.5-pro"}).verifier["backend"] == "genai"  # defaults fill the rest
    with pytest.raises(ProtocolError, match="unknown protocol"):
        RewardConfig(protocol="vibes")
    path = tmp_path / "reward.yaml"
    path.write_text("protocol: harness\nverifier: {backend: openai, model: judge}\n")
    assert RewardConfig.from_yaml(path).protocol == "harness"
    with pytest.raises(ProtocolError, match="make them agree"):
        RewardConfig.from_yaml(path, protocol="paper")
    path.write_text("verifier: {backend: openai, model: judge}\n")
    assert RewardConfig.from_yaml(path, protocol="harness").protocol == "harness"


def test_max_concurrency_is_shared_by_every_scoring_process(sandbox):
    config = RewardConfig(protocol="harness", cache=False, verifier={
        "backend": "openai", "model": "judge", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "NO_SUCH_KEY_SET",
        "max_concurrency": 10})
    alone = RewardModel(config, sandbox=sandbox)
    four = RewardModel(config, sandbox=sandbox, processes=4)
    assert alone.verifier.max_concurrency == 10 and four.verifier.max_concurrency == 3


def test_the_protocol_table_is_one_table():
    """docs/training.md holds the table of every difference between the protocols; the GRPO
    recipes' READMEs repeat it word for word."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]

    def table(path: Path) -> str:
        text = path.read_text(encoding="utf-8")
        return text[text.index("<!-- protocol-table -->"):text.index("<!-- /protocol-table -->")]

    reference = table(repo / "docs" / "training.md")
    assert reference.count("\n|") >= 12  # header, rule and the details
    for readme in ("reasoning_grpo_verl", "reasoning_grpo_trl"):
        assert table(repo / "recipes" / readme / "README.md") == reference, readme
