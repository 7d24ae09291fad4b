"""Systems of the paper's comparisons: their files, their exact prompts, and scripted end-to-end runs."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from harness.backends.scripted import script_entry
from harness.cli import main
from harness.systems import SystemRegistry
from harness.systems.direct import extract_answer, final_text
from harness.systems.parsing import parse_reply
from harness.types import AnswerType, BytesImage, Sample
from toy import SMALL_SYNTHETIC_TASK

GOLDEN = Path(__file__).parent / "golden" / "prompts"


def golden_sample() -> Sample:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (90, 10, 200)).save(buffer, "PNG")
    return Sample(id="golden", task="golden", question="If the red cube is 0.5 m tall, how tall is the blue "
                  "cylinder, in metres?", answer=0.7, answer_type=AnswerType.FLOAT, image=BytesImage(buffer.getvalue()))


def render(messages: list[dict]) -> str:
    """A request as plain text; images appear as their size."""
    blocks = []
    for message in messages:
        content = message["content"]
        parts = [content] if isinstance(content, str) else [
            part["text"] if part["type"] == "text" else f"[image {part['image'].width}x{part['image'].height}]"
            for part in content]
        blocks.append(f"=== {message['role']} ===\n" + "\n".join(parts))
    return "\n".join(blocks) + "\n"


def chat_systems() -> list[str]:
    registry = SystemRegistry()
    return [n for n in registry.names() if registry.config(n).kind not in ("predictions", "reference", "replay")]


# --------------------------------------------------------------------------- the system files

def test_every_system_file_builds_without_loading_a_model(monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_API_KEY", "test-key")  # the genai backend checks for credentials when built
    (tmp_path / "run.json").write_text(json.dumps({"system": "reference", "system_config": {"kind": "reference"}}))
    needs = {"predictions": {"path": __file__}, "replay": {"run": str(tmp_path)}}  # their input files
    registry = SystemRegistry()
    for name in registry.names():
        overrides = needs.get(registry.config(name).kind)
        system = registry.build(name, overrides)
        if hasattr(system, "chat"):
            assert system.chat.fingerprint, name
        system.close()


def test_system_files_cover_the_papers_tables():
    registry = SystemRegistry()
    tables = {t for n in registry.names() for t in registry.config(n).tables}
    assert {"1", "2", "3", "4", "7", "8"} <= tables
    table1 = {n for n in registry.names() if "1" in registry.config(n).tables}
    assert {"llm-tools-qwen3-8b", "llm-tools-gemma-3-12b", "llm-tools-llama-3.2-11b", "llm-tools-gpt-4o",
            "llm-tools-o4-mini", "llm-tools-gemini-2.0-flash", "llm-tools-gemini-2.5-flash",
            "llm-tools-claude-3.5-haiku", "valor-rl", "valor"} <= table1
    valor, valor_rl = registry.config("valor"), registry.config("valor-rl")
    assert valor.params["llm"] == valor_rl.params["llm"]  # same programs; only the detector differs
    assert valor.params["tool_options"]["real"]["detector"]["checkpoint"] == "glab-caltech/VALOR-GroundingDINO"
    assert valor_rl.params["tool_options"]["real"]["detector"]["checkpoint"] == "IDEA-Research/grounding-dino-tiny"
    assert registry.config("llm-tools-qwen3-8b").params["llm"]["chat_template_kwargs"] == {"enable_thinking": False}
    assert registry.config("direct-gpt-5-mini-grounded").params["grounded"] is True


def test_list_systems_shows_model_backend_tools_and_tables(capsys):
    assert main(["list", "systems"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| valor "))
    assert "glab-caltech/VALOR-8B" in row and "vllm" in row and "VALOR-GroundingDINO" in row and "1, 2" in row


def test_extends_cycles_and_unknown_parents_are_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("system: a\nextends: b\n")
    (tmp_path / "b.yaml").write_text("system: b\nextends: a\n")
    with pytest.raises(Exception, match="cycle"):
        SystemRegistry([tmp_path])
    (tmp_path / "b.yaml").write_text("system: b\nextends: valor-rll\n")
    with pytest.raises(Exception, match="valor-rl"):
        SystemRegistry([tmp_path])


# --------------------------------------------------------------------------- golden prompts

@pytest.mark.parametrize("name", chat_systems())
def test_prompt_snapshot(name):
    """The exact request each system sends for a fixed sample under the harness protocol (the paper
    protocol's is the original's, tested in test_protocol.py); refresh deliberately with UPDATE_GOLDEN=1."""
    system = SystemRegistry().build(name, seed=1234, protocol="harness")
    text = render(system.messages_for(golden_sample()))
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"no snapshot for {name}; run the tests with UPDATE_GOLDEN=1 once"
    assert text == path.read_text(encoding="utf-8"), f"the prompt of {name} changed; update the snapshot if meant"


def test_program_prompts_never_show_the_answer_or_the_reference_program():
    sample = golden_sample()
    sample.meta["reference_program"] = "final_answer = 0.7  # SECRET"
    for name in chat_systems():
        system = SystemRegistry().build(name, protocol="harness")
        text = render(system.messages_for(sample))
        assert "SECRET" not in text and "0.7" not in text, name


# --------------------------------------------------------------------------- reading replies

def test_parse_reply_rules():
    assert parse_reply("<plan>look</plan><answer>final_answer = 1</answer>").code == "final_answer = 1"
    fenced = parse_reply("<plan>p</plan>\n<answer>\n```python\nx = 1\nfinal_answer = x\n```\n</answer>")
    assert fenced.code == "x = 1\nfinal_answer = x" and fenced.plan == "p"
    repeated = parse_reply("<plan>a</plan><answer>final_answer = 1</answer><plan>b</plan><answer>final_answer = 2</answer>")
    assert repeated.code == "final_answer = 2" and repeated.plan == "b" and any("2 <answer>" in n for n in repeated.notes)
    unclosed = parse_reply("<plan>p\n<answer>\nfinal_answer = 3\n")
    assert unclosed.plan == "p" and unclosed.code == "final_answer = 3"
    assert parse_reply("Here:\n```python\nfinal_answer = 4\n```").code == "final_answer = 4"
    thinking = parse_reply("<think>maybe <answer>wrong</answer></think><plan>p</plan><answer>final_answer = 5</answer>")
    assert thinking.code == "final_answer = 5"
    empty = parse_reply("<plan>only a plan</plan><answer>  </answer>")
    assert not empty.ok and any("no program" in n for n in empty.notes)
    indented = parse_reply("<answer>\n    a = 2\n    final_answer = a\n</answer>")
    assert indented.code == "a = 2\nfinal_answer = a"


@pytest.mark.parametrize("reply, answer_type, choices, expected", [
    ("Yes, it is.", AnswerType.YESNO, None, "yes"),
    ("The mug is left of it.\nAnswer: no", AnswerType.YESNO, None, "no"),
    ("<think>hmm</think><answer>3</answer>", AnswerType.INTEGER, None, 3),
    ("**Answer:** 2.50 m", AnswerType.FLOAT, None, 2.5),
    ("I see seven chairs.", AnswerType.INTEGER, None, 7),
    ("Answer: (B)", AnswerType.MULTIPLE_CHOICE, ["lamp", "sofa"], "sofa"),
    ("sofa", AnswerType.MULTIPLE_CHOICE, ["lamp", "sofa"], "sofa"),
    ("Answer: a red mug", AnswerType.WORD, None, "a red mug"),
    ("I cannot tell", AnswerType.INTEGER, None, "I cannot tell"),
])
def test_direct_answers_are_read_like_the_scorers_read_them(reply, answer_type, choices, expected):
    assert extract_answer(reply, answer_type, choices) == expected


def test_final_text_prefers_tags_then_answer_lines():
    assert final_text("x <answer>a</answer> y <answer>b</answer>") == "b"
    assert final_text("boxes: [1, 2, 3, 4]\nFinal answer: 4") == "4"
    assert final_text("  plain  ") == "plain"


# --------------------------------------------------------------------------- scripted end-to-end runs

@pytest.fixture
def small_synthetic(tmp_path, monkeypatch):
    from harness.tasks import TaskRegistry

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    include = tmp_path / "include"
    include.mkdir()
    (include / "synthetic_small.yaml").write_text(SMALL_SYNTHETIC_TASK)
    samples = list(TaskRegistry([include]).task("synthetic_small").samples(limit=12))
    return include, samples


def write_system(include: Path, name: str, body: dict) -> None:
    (include / f"{name}.yaml").write_text(json.dumps({"system": name, **body}))


def test_llm_program_system_end_to_end_with_scripted_replies(small_synthetic, tmp_path):
    """Generation, parsing, sandboxed execution with oracle tools, scoring and records."""
    include, samples = small_synthetic
    system = SystemRegistry().build("llm-tools-qwen3-8b", seed=1234, protocol="harness")
    replies = tmp_path / "replies.jsonl"
    with replies.open("w") as f:
        for index, sample in enumerate(samples):
            program = sample.meta["reference_program"]
            reply = f"<plan>Use the tools.</plan>\n<answer>\n{program}\n</answer>"
            if index == 0:
                reply = "I would rather not write a program."  # a format error
            elif index == 1:
                reply = "<plan>p</plan><answer>final_answer = 1 / 0</answer>"  # a crash
            f.write(json.dumps(script_entry(system.messages_for(sample), reply)) + "\n")
    write_system(include, "scripted-writer", {"kind": "llm_program", "params": {
        "llm": {"backend": "scripted", "path": str(replies)}, "tools": "oracle", "concurrency": 2,
        "sampling": system.params["sampling"]}})
    out = tmp_path / "run"
    assert main(["run", "--system", "scripted-writer", "--tasks", "synthetic_small", "--limit", "12",
                 "--include-path", str(include), "--output-path", str(out), "--log-samples"]) == 0
    records = {r["id"]: r for r in map(json.loads, (out / "samples_synthetic_small.jsonl").read_text().splitlines())}
    first, second = samples[0].id, samples[1].id
    assert records[first]["status"] == "format_error" and "no program" in records[first]["detail"]
    assert records[second]["status"] == "exception" and "ZeroDivisionError" in records[second]["detail"]
    rest = [r for i, r in records.items() if i not in (first, second)]
    assert rest and all(r["status"] == "ok" and r["scores"]["strict"] == 1.0 for r in rest)
    assert all(r["plan"] == "Use the tools." and r["program"] and r["tool_calls"] for r in rest)
    assert rest[0]["extra"]["prompt"][0]["role"] == "user"  # --log-samples keeps the request
    results = json.loads((out / "results.json").read_text())["results"]["synthetic_small"]
    assert results["accuracy,strict"] == pytest.approx(10 / 12)
    assert results["status_counts"] == {"exception": 1, "format_error": 1, "ok": 10}


def test_direct_system_end_to_end_with_scripted_replies(small_synthetic, tmp_path):
    include, samples = small_synthetic
    replies = tmp_path / "replies.jsonl"
    with replies.open("w") as f:
        for sample in samples:
            f.write(json.dumps({"match": sample.question, "response": f"Let me look.\nAnswer: {sample.answer}"}) + "\n")
    write_system(include, "scripted-vlm", {"kind": "direct_vlm", "params": {
        "vlm": {"backend": "scripted", "path": str(replies)}, "sampling": {"temperature": 0.0}}})
    out = tmp_path / "run"
    assert main(["run", "--system", "scripted-vlm", "--tasks", "synthetic_small", "--limit", "12",
                 "--include-path", str(include), "--output-path", str(out)]) == 0
    records = [json.loads(line) for line in (out / "samples_synthetic_small.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" and r["scores"]["strict"] == 1.0 for r in records)
    assert all(r["raw"].startswith("Let me look.") for r in records)
