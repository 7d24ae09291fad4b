"""The paper protocol: the original evaluation's request, tool API, parsing, questions and scoring.

Every expected value here was worked out by hand from the original code's rules
(``docs/protocols.md`` lists them); the tables hold the edge cases that tell a
faithful reimplementation from a plausible one.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

import upstream_fixtures
from harness.cli import main
from harness.protocol import PAPER
from harness.sandbox.executor import Sandbox
from harness.scoring.compat import compat_score
from harness.scoring.values import answer_value, decode_value
from harness.systems import SystemRegistry
from harness.systems.parsing import paper_reply_text, parse_reply_paper
from harness.tasks.config import parse_task_config
from harness.tasks.formats import RowFormatError
from harness.tasks.paper_formats import PAPER_FORMATTERS, blink_question, blink_rewrite, realworldqa_rewrite
from harness.tools import ToolBackend, ToolContext
from harness.tools.paper_api import (
    PaperToolSession, depth_pixel, detector_caption, finish_vqa_reply, paper_box, shape_detections, vqa_region,
)
from harness.types import BytesImage, Sample
from harness.upstream import AssetStore, PaperTexts


@pytest.fixture
def paper_upstream(tmp_path, monkeypatch):
    """The fixture stand-ins for the original files, pinned and offline."""
    return upstream_fixtures.install(monkeypatch, tmp_path / "upstream-data")


# --------------------------------------------------------------------------- reply parsing

@pytest.mark.parametrize("reply, plan, code", [
    ("<plan>p</plan><answer>x = 1</answer>", "p", "x = 1"),
    ("<PLAN> p </PLAN>\n<Answer>\nx = 1\n</Answer>", "p", "x = 1"),
    # two plans: no plan at all; two answer blocks and one fence: the fence
    ("<plan>a</plan><plan>b</plan><answer>x=1</answer><answer>y=2</answer>\n```python\nz = 3\n```",
     "", "z = 3"),
    # two answer blocks, no fence: the whole reply is the program
    ("<answer>a</answer><answer>b</answer>", "", "<answer>a</answer><answer>b</answer>"),
    # a fenced program inside the answer loses its fences; a title on the fence line keeps them
    ("<answer>\n```python\nx = 1\n```\n</answer>", "", "x = 1"),
    ("<answer>\n```python title\nx = 1\n```\n</answer>", "", "```python title\nx = 1\n```"),
    # an empty answer block counts as no program text: the whole reply runs
    ("<plan>p</plan><answer></answer>", "p", "<plan>p</plan><answer></answer>"),
    # no tags at all, two fences: the whole reply
    ("```\na\n```\n```\nb\n```", "", "```\na\n```\n```\nb\n```"),
    ("plain text", "", "plain text"),
])
def test_paper_parsing_follows_the_original_rules(reply, plan, code):
    parsed = parse_reply_paper(paper_reply_text(reply))
    assert (parsed.plan or "", parsed.code or "") == (plan, code)


def test_every_exit_call_is_removed_before_parsing():
    reply = "<answer>if x:\n    exit()\nsys.exit()\nfinal_answer = 2</answer>"
    assert parse_reply_paper(paper_reply_text(reply)).code == "if x:\n    \nsys.\nfinal_answer = 2"


# --------------------------------------------------------------------------- question text and gold

def test_blink_keeps_the_doubled_question_mark_and_maps_the_letter_to_the_text():
    query = blink_question("Is the cup left of the plate?", ["yes", "no"])
    assert query == "Is the cup left of the plate? Options are A: yes, B: no. Respond with only A or B"
    assert blink_rewrite(query, "B") == ("Is the cup left of the plate?? Options: {yes,no}.", "no", ["yes", "no"])
    counting = blink_question("How many blue balls are there?", ["2", "3", "4", "5"])
    assert blink_rewrite(counting, "(C)"[1])[0] == "How many blue balls are there?? Options: {2,3,4,5}."


def test_blink_cuts_an_option_at_its_first_period_as_the_original_did():
    query = blink_question("What is the ratio", ["1.5", "2"])
    with pytest.raises(RowFormatError):  # "B" is lost with the rest of the options
        blink_rewrite(query, "B")
    assert blink_rewrite(query, "A")[:2] == ("What is the ratio? Options: {1}.", "1")


def test_blink_rows_through_the_task_formatter():
    config = parse_task_config({"task": "b", "dataset": {"path": "x"}, "fields": {
        "question": "question", "answer": "answer", "choices": "choices"}, "answer_type": "multiple_choice",
        "compat": "blink"})
    row = {"question": "Which is closer?", "choices": ["the cat", "the dog"], "answer": "(B)"}
    formatted = PAPER_FORMATTERS.get("blink")(row, config)
    assert formatted.question == "Which is closer?? Options: {the cat,the dog}."
    assert (formatted.compat_gold, formatted.choices) == ("the dog", ["the cat", "the dog"])


@pytest.mark.parametrize("block, answer, question, gold", [
    ("Which way is the car facing?\nA. Left\nB. Right\nPlease answer directly with only the letter of the "
     "correct option and nothing else.", "B", "Which way is the car facing? Options: {Left,Right}.", "Right"),
    # Query: is dropped; the stem's closing punctuation becomes "." when it asked no question
    ("Query: Count the cars here!\nA) 2\nB) 3", "a", "Count the cars here. Options: {2,3}.", "2"),
    # the gold given as option text, matched loosely; an "Answer:" header is read through
    ("Is it raining?\nA: yes.\nB: no.", "Answer: 'No'", "Is it raining? Options: {yes,no}.", "no"),
])
def test_realworldqa_rewrites_options_as_the_original(block, answer, question, gold):
    assert realworldqa_rewrite(block, answer)[:2] == (question, gold)


def test_realworldqa_without_both_options_keeps_the_question():
    config = parse_task_config({"task": "r", "dataset": {"path": "x"}, "answer_type": "multiple_choice",
                                "compat": "realworldqa"})
    row = {"question": "How many lanes does the road have?", "answer": "3"}
    formatted = PAPER_FORMATTERS.get("realworldqa")(row, config)
    assert (formatted.question, formatted.compat_gold, formatted.answer_type) == (row["question"], "3", "word")
    with pytest.raises(RowFormatError, match="names none of the options"):
        realworldqa_rewrite("Which?\nA. x\nB. y", "D")


def test_other_benchmarks_keep_the_gold_types_the_original_compared():
    config = parse_task_config({"task": "v", "dataset": {"path": "x"}, "fields": {"question": "caption",
                                "answer": "label"}, "question_template": "Is {caption}?", "answer_type": "yesno",
                                "compat": "vsr"})
    formatted = PAPER_FORMATTERS.get("vsr")({"caption": "the cat is on the mat.", "label": 1}, config)
    assert (formatted.question, formatted.compat_gold, formatted.answer) == ("Is the cat is on the mat.?", 1, "yes")
    robo = parse_task_config({"task": "r", "dataset": {"path": "x"}, "answer_type": "yesno", "compat": "robospatial"})
    assert PAPER_FORMATTERS.get("robospatial")({"question": "q", "answer": "Yes"}, robo).compat_gold == "yes"


# --------------------------------------------------------------------------- scoring on the original values

@pytest.mark.parametrize("rule, prediction, gold, meta, expected", [
    ("vsr", np.bool_(True), 1, {}, 1.0),  # compared as is: numpy True == 1
    ("vsr", True, 1, {}, 1.0),
    ("vsr", "It is not true", 1, {}, 1.0),  # "true" inside: the original's leniency
    ("vsr", np.array([1, 1]), 1, {}, 0.0),  # an ambiguous array raises: 0
    ("robospatial", np.bool_(True), "yes", {}, 0.0),  # numpy booleans are "no"
    ("robospatial", True, "yes", {}, 1.0),
    ("blink", np.float32(2.0), "2", {}, 1.0),  # str(int(2.0)) == "2"
    ("blink", True, "1", {}, 1.0),
    pytest.param("blink", 10 ** 5000, "1", {}, 0.0, id="too-many-digits"),  # str() raises: 0
    ("blink", "Left", "left", {}, 1.0),
    ("realworldqa", "", "left", {}, 1.0),  # an empty prediction is inside every gold
    ("realworldqa", None, "none of these", {}, 1.0),  # str(None) is "none"
    ("tallyqa", None, 0, {}, 1.0),  # a failed program counts as the answer 0
    ("tallyqa", "", 0, {}, 1.0),
    ("countbench", "3.0", 3, {}, 0.0),  # int("3.0") raises
    ("countbench", 3.9, 3, {}, 1.0),  # int() truncates
    ("omni3d", 5.0, "-2", {"raw_answer_type": "float"}, 1.0),  # a negative gold passes every threshold
    ("omni3d", 1.0, "0", {"raw_answer_type": "float"}, 0.0),  # division by a zero gold
    ("omni3d", 2.2, "2.0", {"raw_answer_type": "float"}, 0.8),  # 10% off: 8 of 10 thresholds
    ("omni3d", np.bool_(False), "no", {"raw_answer_type": "str"}, 1.0),
    ("omni3d", "", "red", {"raw_answer_type": "str"}, 1.0),  # "" is inside "red"
    ("omni3d", "north-east", "N", {"raw_answer_type": "str"}, 0.0),  # first character only, case matters
    ("omni3d", "3", "3", {"raw_answer_type": "int"}, 1.0),
])
def test_paper_rules_on_the_original_values(rule, prediction, gold, meta, expected):
    assert compat_score(rule, prediction, gold, meta) == pytest.approx(expected)


def test_values_keep_their_types_across_the_sandbox(tmp_path):
    program = ("import numpy as np\n"
               "final_answer = [np.bool_(True), np.float32(0.5), {1: 'a'}, (2, 3), float('nan'), 10 ** 30,"
               " np.array([[1, 2]])]\n")
    with Sandbox(isolation="process") as sandbox:
        result = sandbox.run(program, dialect="paper", files={"image.png": b""})
    value = decode_value(json.loads(json.dumps(result.answer_typed)))
    assert isinstance(value[0], np.bool_) and isinstance(value[1], np.float32)
    assert value[2] == {1: "a"} and value[3] == (2, 3) and math.isnan(value[4]) and value[5] == 10 ** 30
    assert value[6].dtype == np.array([1]).dtype and value[6].shape == (1, 2)


def test_records_without_the_typed_answer_use_the_recorded_type():
    value = answer_value({"prediction": True, "answer_pytype": "numpy.bool_"})
    assert isinstance(value, np.bool_)
    assert compat_score("robospatial", value, "yes", {}) == 0.0


# --------------------------------------------------------------------------- the paper dialect in the sandbox

class Recording(ToolBackend):
    """Answers every tool from fixed values and keeps what it was asked."""

    def __init__(self) -> None:
        self.asked: list = []

    def gd_detect(self, context, phrases):
        self.asked.append(("gd_detect", phrases))
        return [{"box": [10.0, 20.0, 30.0, 60.0], "label": p, "score": 0.9} for p in phrases]

    def depth(self, context, box_or_point):
        self.asked.append(("depth", box_or_point))
        return 2.5

    def vqa(self, context, box, question):
        self.asked.append(("vqa", box, question))
        return "Red."


def run_paper(code: str, backend: ToolBackend, texts: PaperTexts | None = None, size=(100, 80),
              label_filter: str = "fixed"):
    from harness.tools.paper_api import paper_program_inputs

    image = BytesImage(png_bytes(size))
    context = ToolContext(image, size, Sample("s", "t", "q", None, "none"), key="t/s")
    tools, files = paper_program_inputs(backend, context, texts, label_filter)
    with Sandbox(isolation="process") as sandbox:
        return sandbox.run(code, tools, size, dialect="paper", files=files)


def png_bytes(size) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_programs_see_the_original_api_and_globals(paper_upstream):
    backend = Recording()
    code = ("dets = gd_detect(img_pth, 'red mug, chair')\n"
            "d = depth(img_pth, dets[0]['bbox'])\n"
            "color = vqa(img_pth, None, 'what color is it?')\n"
            "crop = vqa(img_pth, dets[0]['bbox'], 'what color?')\n"
            "final_answer = [dets, type(d).__name__, float(d), color, crop, __name__, type(img_pth).__name__,\n"
            "                img_pth, len(open(img_pth, 'rb').read()) > 0]\n"
            "return 'ignored'\n")
    result = run_paper(code, backend, PaperTexts(AssetStore()))
    assert result.status == "ok", result.detail
    dets, dtype, value, color, crop, name, path_type, path, readable = result.answer
    # boxes as integer pixel corners; labels as asked, the spaces back in
    assert dets == [{"bbox": [10, 20, 30, 60], "label": "red mug"}, {"bbox": [10, 20, 30, 60], "label": "chair"}]
    assert (dtype, value, name, path_type, path, readable) == ("float32", 2.5, "__main__", "str", "image.png", True)
    assert color == "red" and crop == "red"
    # the backend was asked the caption's parts, depth at the box's centre pixel, and vqa about the padded crop
    assert backend.asked[0] == ("gd_detect", ["red mug", "chair"])
    assert backend.asked[1] == ("depth", [20, 40])
    assert backend.asked[2] == ("vqa", None, "what color is it?")
    assert backend.asked[3] == ("vqa", [5, 10, 35, 70], "what color?")


def test_return_gives_final_answer_and_an_exception_gives_none():
    backend = Recording()
    assert run_paper("final_answer = 4\nreturn 9\n", backend).answer == 4
    failed = run_paper("final_answer = 4\nraise ValueError('x')\n", backend)
    assert failed.status == "exception" and failed.answer is None
    assert run_paper("globals()['final_answer'] = 'g'\n", backend).answer == "g"
    syntax = run_paper("x = 1\n  y = 2\n", backend)
    assert syntax.status == "exception" and 'line 2' in syntax.detail
    multiline = run_paper("s = '''a\nb'''\nfinal_answer = s\n", backend)
    assert multiline.answer == "a\n        b"  # the original indented the program, strings included


def test_tool_misuse_is_a_tool_error_for_the_program():
    result = run_paper("final_answer = gd_detect('other.jpg', 'cup')\n", Recording())
    assert result.status == "tool_error" and "img_pth" in result.detail
    result = run_paper("final_answer = depth(img_pth, [0, 0, 500, 500])\n", Recording())
    assert result.status == "tool_error" and "outside" in result.detail


@pytest.mark.parametrize("centre, size, expected", [
    ([0.5, 0.5, 0.2, 0.4], (100, 80), [40, 24, 60, 56]),
    ([0.05, 0.98, 0.3, 0.3], (100, 80), [0, 66, 20, 79]),  # clipped to 0 and H-1
    ([0.5, 0.5, 1.2, 1.2], (10, 10), [0, 0, 9, 9]),
    ([0.33333, 0.5, 0.1, 0.1], (1000, 10), [283, 4, 383, 5]),  # corners rounded to 3 decimals first
])
def test_box_conversion_as_the_original(centre, size, expected):
    assert paper_box(centre, *size) == expected


def test_caption_parts_and_the_label_filter():
    caption, parts = detector_caption(" red mug,Chair ")
    assert (caption, parts) == ("red-mug . Chair", ["red-mug", "Chair"])
    raw = [([0.5, 0.5, 0.2, 0.2], "red - mug"), ([0.2, 0.2, 0.1, 0.1], "table"), ([0.3, 0.3, 0.1, 0.1], "chair")]
    fixed = shape_detections(raw, parts, (100, 100))
    assert [d["label"] for d in fixed] == ["red mug"]  # "chair" is not "Chair": the original's case rule
    original = shape_detections(raw, parts, (100, 100), "original")
    # every box once one matches; a phrase equal to a lowercased part takes the part's own case
    assert [d["label"] for d in original] == ["red mug", "table", "Chair"]
    assert shape_detections(raw[1:], parts, (100, 100), "original") == []


@pytest.mark.parametrize("box, fmt, pad, expected", [
    (None, "xyxy", 0.25, None),
    ([10, 20, 30, 60], "xyxy", 0.25, (5, 10, 35, 70)),
    ([30, 60, 10, 20], "xyxy", 0.25, (5, 10, 35, 70)),  # corners ordered
    ([10.9, 20.2, 30.7, 60.1], "xyxy", 0.25, (5, 10, 35, 70)),  # int() first
    ([10, 20, 20, 30], "xywh", 2, (8, 18, 32, 52)),  # pad above 1: pixels
    ([150, 150, 200, 200], "xyxy", 0.25, None),  # nothing left inside the image: the whole image
    ([5, 5, 5, 9], "xyxy", 0.25, None),
])
def test_vqa_crop_rules(box, fmt, pad, expected):
    assert vqa_region(box, fmt, pad, (100, 80)) == expected


def test_vqa_reply_and_depth_pixel_rules():
    assert finish_vqa_reply("  Red.  ") == "red" and finish_vqa_reply("a, b,") == "a, b"
    assert finish_vqa_reply("3..") == "3."
    assert depth_pixel([-20, -10, -2, 0], (100, 80)) == (89, 75)  # negative indices from the end
    with pytest.raises(ValueError, match="cannot read"):
        depth_pixel([1, 2, 3], (100, 80))


def test_the_real_tool_server_sends_the_original_vqa_text(paper_upstream):
    class Asking(Recording):
        def ask_region(self, context, region, text, question):
            self.asked.append(("ask", region, text))
            return " Blue, "

    backend = Asking()
    result = run_paper("final_answer = vqa(img_pth, [10, 20, 30, 60], 'what colour?', pad=0)\n", backend,
                       PaperTexts(AssetStore()))
    assert result.answer == "blue"
    assert backend.asked == [("ask", (10, 20, 30, 60),
                              "Look at the object in the middle of this crop. Reply with one word.; what colour?")]


# --------------------------------------------------------------------------- the program writer's request

def test_the_request_is_the_original_byte_for_byte(paper_upstream):
    system = SystemRegistry().build("valor", seed=1)
    assert system.protocol == PAPER
    sample = Sample("1", "t", "How many chairs are there? Options: {1,2}.", None, "none")
    expected = upstream_fixtures.SYSTEM_PROMPT + "\n" + "Question: How many chairs are there? Options: {1,2}."
    assert system.messages_for(sample) == [{"role": "user", "content": expected}]
    assert system.params["llm"]["chat_template_kwargs"] == {"enable_thinking": False}
    assert system.sampling["temperature"] == 0.7 and system.sampling["top_p"] == 0.8 and system.sampling["top_k"] == 20


def test_table_1_and_8_program_writers_default_to_the_paper_protocol():
    registry = SystemRegistry()
    for name in registry.names():
        config = registry.config(name)
        if config.kind == "llm_program" and {"1", "8"} & set(config.tables):
            assert config.params.get("protocol") == PAPER, name


def test_a_paper_run_records_its_protocol_everywhere(paper_upstream, tmp_path, capsys):
    """A scripted program writer in the original dialect on the synthetic benchmark, with oracle tools."""
    from toy import SMALL_SYNTHETIC_TASK

    from harness.backends.scripted import script_entry
    from harness.tasks import TaskRegistry

    include = tmp_path / "include"
    include.mkdir()
    (include / "synthetic_small.yaml").write_text(SMALL_SYNTHETIC_TASK)
    samples = [s for s in TaskRegistry([include]).task("synthetic_small", protocol=PAPER).samples(limit=12)]
    # questions whose reference program is a plain count of one phrase
    counting = [s for s in samples if "vqa(" not in s.meta["reference_program"]
                and s.meta["reference_program"].count("gd_detect(") == 1 and s.question.startswith("How many")]
    assert counting
    writer = SystemRegistry().build("llm-tools-qwen3-8b", seed=1)
    replies = tmp_path / "replies.jsonl"
    with replies.open("w") as f:
        for sample in samples:
            phrase = re.search(r"gd_detect\(image, '([^']+)'\)", sample.meta["reference_program"])
            code = f"dets = gd_detect(img_pth, '{phrase.group(1) if phrase else 'objects'}')\nfinal_answer = len(dets)\nexit()"
            f.write(json.dumps(script_entry(writer.messages_for(sample), f"<plan>count</plan><answer>{code}</answer>")) + "\n")
    (include / "scripted-paper.yaml").write_text(json.dumps({"system": "scripted-paper", "kind": "llm_program", "params": {
        "llm": {"backend": "scripted", "path": str(replies)}, "tools": "oracle", "protocol": "paper",
        "sampling": writer.params["sampling"]}}))
    out = tmp_path / "run"
    assert main(["run", "--system", "scripted-paper", "--tasks", "synthetic_small", "--limit", "12",
                 "--include-path", str(include), "--output-path", str(out)]) == 0
    assert "protocol: paper" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert run["protocol"] == results["protocol"] == results["config"]["protocol"] == PAPER
    records = {r["id"]: r for r in map(json.loads, (out / "samples_synthetic_small.jsonl").read_text().splitlines())}
    for sample in counting:
        record = records[sample.id]
        assert record["status"] == "ok" and record["program"].endswith("final_answer = len(dets)")
        assert record["scores"]["strict"] == 1.0, record
    capsys.readouterr()
    assert main(["show", str(out), counting[0].id]) == 0
    assert "protocol:    paper" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    assert "paper (headline score: paper-compatible)" in (out / "report.html").read_text()
    # under the harness protocol the request differs, so the scripted model has no reply for it: an
    # infrastructure failure (exit code 3), recorded under the run's protocol
    assert main(["run", "--system", "scripted-paper", "--tasks", "synthetic_small", "--limit", "2",
                 "--include-path", str(include), "--output-path", str(tmp_path / "other"),
                 "--protocol", "harness"]) == 3
    assert json.loads((tmp_path / "other" / "run.json").read_text())["protocol"] == "harness"


def test_resume_refuses_another_protocol(paper_upstream, tmp_path):
    from toy import write_system, write_toy_task

    include, data = write_toy_task(tmp_path, n=6)
    write_system(include, "echo-gold", "harness.systems.predictions:PredictionsSystem")
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("".join(json.dumps({"id": str(i), "task": "toy_counting", "prediction": i % 5}) + "\n"
                                   for i in range(6)))
    args = ["run", "--system", "predictions", "--tasks", "toy_counting", "--predictions", str(predictions),
            "--include-path", str(include), "--data-dir", str(data), "--output-path", str(tmp_path / "run")]
    assert main(args) == 0
    assert main(args + ["--resume", "--protocol", "paper"]) == 2


# --------------------------------------------------------------------------- hundreds of recorded cases

CASES = json.loads((Path(__file__).parent / "golden" / "paper_cases.json").read_text(encoding="utf-8"))


def test_recorded_cases_cover_each_rule():
    """The file holds the original code's outputs for our own random inputs (edge values included:
    numpy scalars and arrays, nan, huge integers, nested containers, empty and lettered strings)."""
    assert len(CASES["scoring"]) >= 400 and len(CASES["parsing"]) >= 300
    assert len(CASES["blink"]) >= 200 and len(CASES["realworldqa"]) >= 250
    assert {c["rule"] for c in CASES["scoring"]} == {"omni3d", "tallyqa", "countbench", "vsr", "robospatial",
                                                     "blink", "realworldqa"}


@pytest.mark.parametrize("case", CASES["scoring"], ids=lambda c: f"{c['rule']}-{str(c['prediction'])[:30]}")
def test_scores_equal_the_originals(case):
    prediction = decode_value(case["prediction"])
    assert compat_score(case["rule"], prediction, case["gold"], {"raw_answer_type": case["raw_answer_type"]}) \
        == pytest.approx(case["expected"])


def test_parsing_equals_the_originals():
    for case in CASES["parsing"]:
        parsed = parse_reply_paper(paper_reply_text(case["reply"]))
        assert (parsed.plan or "", parsed.code or "") == (case["plan"], case["code"]), case["reply"]


def test_question_rewriting_equals_the_originals():
    for case in CASES["blink"]:
        try:
            got = list(blink_rewrite(blink_question(case["question"], case["choices"]), case["letter"])[:2])
        except RowFormatError:
            got = None
        assert got == case["expected"], case
    for case in CASES["realworldqa"]:
        try:
            got = list(realworldqa_rewrite(case["question"], case["answer"])[:2])
        except RowFormatError:
            got = None
        assert got == case["expected"], case


# --------------------------------------------------------------------------- the Responses API and the paper judge

def test_responses_api_requests_and_replies(monkeypatch):
    import asyncio

    from fake_openai import KEY_ENV, Reply, make_chat, running_chat_server

    monkeypatch.setenv(KEY_ENV, "k")
    with running_chat_server(monkeypatch) as server:
        chat = make_chat(server, api="responses", temperature=None, extra={"reasoning": {"effort": "medium"}})
        server.default = Reply(content="Red.")
        image = __import__("PIL.Image", fromlist=["Image"]).new("RGB", (4, 4))
        messages = [{"role": "user", "content": [{"type": "text", "text": "what colour?"}, {"type": "image", "image": image}]}]
        assert chat.complete(messages) == "Red."
        assert asyncio.run(chat.acomplete(messages)) == "Red."
        for request in server.requests:
            assert request["path"] == "/v1/responses"
            body = request["body"]
            assert body["reasoning"] == {"effort": "medium"} and "temperature" not in body and "messages" not in body
            parts = body["input"][0]["content"]
            assert parts[0] == {"type": "input_text", "text": "what colour?"}
            assert parts[1]["type"] == "input_image" and parts[1]["image_url"].startswith("data:image/png;base64,")
        server.default = Reply(body={"id": "r", "object": "response", "status": "incomplete", "output": [],
                                     "incomplete_details": {"reason": "max_output_tokens"}})
        with pytest.raises(Exception, match="no text"):
            chat.complete([{"role": "user", "content": "x"}])
        chat.close()


def test_the_paper_judge_reads_verdicts_as_the_original(paper_upstream, monkeypatch, tmp_path):
    from fake_openai import KEY_ENV, Reply, running_chat_server

    from harness.scoring.judge import JudgeSpec, make_paper_judge, paper_verdict

    assert paper_verdict("<answer>1</answer>") == (1.0, None)
    assert paper_verdict("<answer> 1 </answer> <answer>0</answer>")[0] == 1.0  # the first block, int() strips
    assert paper_verdict("<answer>1<answer>")[0] == 1.0
    assert paper_verdict("yes")[0] == 0.0 and "unreadable" in paper_verdict("yes")[1]
    assert paper_verdict("<answer>\n1\n</answer>")[0] == 0.0  # a block is one line: the whole reply is read
    monkeypatch.setenv(KEY_ENV, "k")
    with running_chat_server(monkeypatch) as server:
        spec = JudgeSpec(api_key_env=KEY_ENV, paper_base_url=server.url)
        judge = make_paper_judge(spec, cache_dir=tmp_path)
        server.script = [Reply(content="<answer>1</answer>"), Reply(status=400)]
        verdict = judge.judge("What is on the table?", "cup", None)
        assert verdict.score == 1.0
        text = server.requests[0]["body"]["input"][0]["content"][0]["text"]
        assert text.endswith("Q: What is on the table?\nReference: cup\nCandidate: None\n")  # a failed program: None
        assert server.requests[0]["body"]["model"] == "gpt-5-mini" and "temperature" not in server.requests[0]["body"]
        failed = judge.judge("q", "cup", "mug")
        assert failed.score is None and "400" in failed.error  # a failed call is no verdict, never 0
        assert judge.judge("What is on the table?", "cup", None).cached  # verdicts are cached by the exact text


def test_exec_runs_a_program_in_the_original_dialect_with_oracle_tools(paper_upstream, tmp_path, capsys):
    from harness.synthetic.dataset import QUESTIONS, build_benchmark

    root = tmp_path / "bench"
    build_benchmark(root, seed=3, n_scenes=1, questions_per_scene=1)
    row = json.loads((root / QUESTIONS).read_text().splitlines()[0])
    scene = json.loads((root / row["scene_json"]).read_text())
    nearest = min(scene["objects"], key=lambda o: o["center"][2])
    program = tmp_path / "original.py"
    program.write_text(
        "dets = gd_detect(img_pth, 'objects')\n"
        "near = min(dets, key=lambda d: depth(img_pth, d['bbox']))\n"
        "colour = vqa(img_pth, near['bbox'], 'What color is this object?')\n"
        "final_answer = [len(dets), colour, float(depth(img_pth, near['bbox']))]\n")
    code = main(["exec", str(program), "--protocol", "paper", "--tools", "oracle", "--image", str(root / row["image"]),
                 "--scene", str(root / row["scene_json"])])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["status"] == "ok", result
    count, colour, distance = result["answer"]
    assert count == len(scene["objects"]) and colour == nearest["color"]
    assert abs(distance - nearest["center"][2]) < nearest["dimensions"]["depth"]  # the front face, near the centre
    assert all(isinstance(v, int) for call in result["tool_calls"] if call["tool"] == "gd_detect"
               for det in call["result"] for v in det["bbox"])
