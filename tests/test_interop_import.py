"""lmms-eval sample logs and VLMEvalKit prediction sheets in, as fixtures in their documented layouts.

lmms-eval (0.7) writes ``<date>_samples_<task>.jsonl`` beside ``<date>_results.json``
and drops each line's document, keeping ``doc_id``, ``target``, ``input`` (the
prompt) and the filtered reply; VLMEvalKit writes ``<model>_<dataset>.xlsx`` (or
.tsv) holding the dataset's columns without the image plus ``prediction``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dataset_fixtures as fx  # noqa: E402

from harness.cli import main  # noqa: E402
from harness.interop.gold import answer_text  # noqa: E402
from harness.records import read_records  # noqa: E402
from harness.systems import SystemRegistry  # noqa: E402
from harness.tasks import TaskRegistry  # noqa: E402

DATE = "20260105_101500"
COUNT_POST_PROMPT = "\nAnswer with a single number."  # what lmms-eval's own countbenchqa task appends


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    fx.build_countbench(root)
    fx.build_blink(root)
    return root


def write_lmms_eval(folder: Path, task: str, lines: list[dict], config: dict | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    samples = folder / f"{DATE}_samples_{task}.jsonl"
    with samples.open("w") as handle:
        for line in lines:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    if config is not None:
        results = {"results": {task: {"alias": task}}, "configs": {task: config},
                   "config": {"model": "qwen2_5_vl", "model_args": "pretrained=Qwen/Qwen2.5-VL-7B-Instruct"},
                   "model_name": "qwen2_5_vl"}
        (folder / f"{DATE}_results.json").write_text(json.dumps(results))
    return samples


def lmms_line(doc_id: int, prompt: str, target: str, reply: str) -> dict:
    return {"doc_id": doc_id, "target": target, "filtered_resps": reply, "token_counts": [None],
            "doc_hash": hashlib.sha256(str(doc_id).encode()).hexdigest(), "input": prompt,
            "acc": float(reply.strip() == target)}


COUNT_CONFIG = {"task": "countbenchqa", "dataset_path": "vikhyatk/CountBenchQA", "test_split": "test",
                "output_type": "generate_until", "metadata": {"version": 0.0}}


def countbench_lines(replies: list[str]) -> list[dict]:
    return [lmms_line(i, question + COUNT_POST_PROMPT, str(number), replies[i])
            for i, (_, question, number, _) in enumerate(fx._COUNTBENCH_ROWS)]


def test_lmms_eval_log_of_their_own_task_is_scored(data_dir, tmp_path):
    logs = tmp_path / "logs" / "qwen2_5_vl"
    write_lmms_eval(logs, "countbenchqa", countbench_lines(["3", "There are 5 sailors.", "7"]), COUNT_CONFIG)
    run = tmp_path / "run"
    assert cli("run", "--system", "predictions", "--predictions", tmp_path / "logs", "--predictions-format",
               "lmms-eval", "--tasks", "countbenchqa", "--data-dir", data_dir, "--output-path", run,
               "--log-samples") == 0
    records = {r["id"]: r for r in read_records(run / "samples_countbenchqa.jsonl")}
    assert [records[i]["scores"]["strict"] for i in ("0", "1", "2")] == [1.0, 0.0, 1.0]
    assert records["1"]["raw"] == "There are 5 sailors." and records["1"]["extracted"] == 5
    source = records["0"]["extra"]["source"]
    assert source["key"] == "dataset row test/0" and source["their_metrics"] == {"acc": 1.0}
    described = json.loads((run / "run.json").read_text())["system_config"]["source"]["files"][0]
    assert described["model"]["model"] == "qwen2_5_vl"
    assert described["dataset"]["dataset_path"] == "vikhyatk/CountBenchQA"
    assert described["task"] == "countbenchqa" and described["results_file"].endswith(f"{DATE}_results.json")


def test_lmms_eval_log_of_an_exported_task_is_scored(data_dir, tmp_path):
    """lmms-eval drops the document, so an exported row is found by its doc_id and checked by its prompt."""
    system = SystemRegistry().build("direct-qwen2.5-vl-7b")
    samples = [s for s in TaskRegistry().task("blink", data_dir).samples() if not s.error]
    lines = []
    for doc_id, sample in enumerate(samples):
        reply = f"Answer: {sample.answer}" if doc_id != 1 else "Answer: (A)"
        lines.append(lmms_line(doc_id, system.instructions(sample, sample.image.size()), answer_text(sample.answer),
                               reply))
    config = {"task": "valor_blink", "dataset_path": "/elsewhere/data/valor_blink", "test_split": "test",
              "metadata": {"harness_task": "blink", "harness_skipped": []}}
    write_lmms_eval(tmp_path / "logs", "valor_blink", lines, config)
    run = tmp_path / "run"
    assert cli("run", "--system", "predictions", "--predictions", tmp_path / "logs", "--predictions-format",
               "lmms-eval", "--tasks", "blink", "--data-dir", data_dir, "--output-path", run) == 0
    records = {r["id"]: r for r in read_records(run / "samples_blink.jsonl")}
    assert len(records) == len(samples) == 6
    wrong = samples[1]  # "(A)" names the first option, 2, where the gold is 3
    assert records[wrong.id]["prediction"] == wrong.choices[0] and records[wrong.id]["scores"]["strict"] == 0.0
    assert all(r["scores"]["strict"] == 1.0 for i, r in records.items() if i != wrong.id)


def test_changed_question_is_refused_naming_the_row(data_dir, tmp_path, capsys):
    lines = countbench_lines(["3", "2", "7"])
    lines[2]["input"] = "How many kites are in the image?" + COUNT_POST_PROMPT
    write_lmms_eval(tmp_path / "logs", "countbenchqa", lines, COUNT_CONFIG)
    code = cli("run", "--system", "predictions", "--predictions", tmp_path / "logs", "--predictions-format",
               "lmms-eval", "--tasks", "countbenchqa", "--data-dir", data_dir, "--output-path", tmp_path / "run")
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "does not match task 'countbenchqa'" in err and "1 of 3 rows differ" in err
    assert "doc_id 2 asks 'How many kites" in err and "'How many balloons are in the image?'" in err
    assert not (tmp_path / "run" / "samples_countbenchqa.jsonl").exists()


def test_other_split_and_other_task_are_refused(data_dir, tmp_path, capsys):
    train = {**COUNT_CONFIG, "test_split": "train"}
    write_lmms_eval(tmp_path / "a", "countbenchqa", countbench_lines(["3", "2", "7"]), train)
    assert cli("run", "--system", "predictions", "--predictions", tmp_path / "a", "--predictions-format", "lmms-eval",
               "--tasks", "countbenchqa", "--data-dir", data_dir, "--output-path", tmp_path / "r1") == 2
    assert "holds split 'train', which the task does not read" in capsys.readouterr().err

    # A countbenchqa log read as BLINK Counting: the task reads one part, the rows ask other questions.
    write_lmms_eval(tmp_path / "b", "countbenchqa", countbench_lines(["3", "2", "7"]), None)
    assert cli("run", "--system", "predictions", "--predictions", tmp_path / "b", "--predictions-format", "lmms-eval",
               "--tasks", "blink_counting", "--system-args", "task=blink_counting", "--data-dir", data_dir,
               "--output-path", tmp_path / "r2") == 2
    err = capsys.readouterr().err
    assert "does not match task 'blink_counting'" in err and "3 of 3 rows differ" in err

    # BLINK reads two configs; without the results file nothing says which one a log holds.
    write_lmms_eval(tmp_path / "c", "blink_counting", countbench_lines(["3", "2", "7"]), None)
    assert cli("run", "--system", "predictions", "--predictions", tmp_path / "c", "--predictions-format", "lmms-eval",
               "--tasks", "blink", "--system-args", "task=blink", "--data-dir", data_dir,
               "--output-path", tmp_path / "r3") == 2
    assert "reads several dataset parts" in capsys.readouterr().err


def test_their_task_with_our_name_of_another_task_needs_task_arg(data_dir, tmp_path, capsys):
    blink_rows = fx._BLINK_ROWS["Counting"]
    lines = [lmms_line(i, f"{q}\nSelect from the following choices.\n(A) {c[0]}", answer, "(B)")
             for i, (q, c, answer, _, _) in enumerate(blink_rows)]
    config = {"task": "blink_counting", "dataset_path": fx.BLINK, "dataset_name": "Counting", "test_split": "val"}
    write_lmms_eval(tmp_path / "logs", "blink_counting", lines, config)
    args = ("run", "--system", "predictions", "--predictions", tmp_path / "logs", "--predictions-format", "lmms-eval",
            "--tasks", "blink", "--data-dir", data_dir)
    assert cli(*args, "--output-path", tmp_path / "r1") == 2
    err = capsys.readouterr().err
    assert "no lmms-eval file holds task 'blink'" in err and "task=blink" in err
    assert cli(*args, "--system-args", "task=blink", "--output-path", tmp_path / "r2") == 0
    records = {r["id"]: r for r in read_records(tmp_path / "r2" / "samples_blink.jsonl")}
    counting = [r for r in records.values() if r["subset"] == "Counting"]
    assert [r["scores"]["strict"] for r in counting] == [1.0, 0.0, 0.0]  # "(B)" is right for the first row only
    assert sum(r["status"] == "missing" for r in records.values()) == 3  # Spatial_Relation was not in the log


def write_sheet(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".xlsx":
        import openpyxl

        book = openpyxl.Workbook()
        sheet = book.active
        sheet.append(header)
        for row in rows:
            sheet.append(row)
        book.save(path)
    else:
        path.write_text("\n".join("\t".join(str(c) for c in line) for line in [header, *rows]) + "\n")
    return path


def test_vlmevalkit_sheets_are_matched_by_question(data_dir, tmp_path):
    rows = fx._COUNTBENCH_ROWS
    sheet = write_sheet(tmp_path / "work" / "Qwen2.5-VL-7B" / "Qwen2.5-VL-7B_CountBenchQA.tsv",
                        ["index", "question", "answer", "prediction"],
                        [[10, rows[2][1], rows[2][2], "7"], [11, rows[0][1], rows[0][2], "three"],
                         [12, rows[1][1], rows[1][2], "Failed to obtain answer via API."]])
    run = tmp_path / "run"
    # its failed row is an infrastructure failure, counted apart: the run is incomplete (exit code 3)
    assert cli("run", "--system", "predictions", "--predictions", sheet.parent, "--predictions-format",
               "vlmevalkit", "--tasks", "countbenchqa", "--data-dir", data_dir, "--output-path", run) == 3
    records = {r["id"]: r for r in read_records(run / "samples_countbenchqa.jsonl")}
    assert records["0"]["scores"]["strict"] == 1.0 and records["2"]["scores"]["strict"] == 1.0
    assert records["1"]["status"] == "api_error"


def test_vlmevalkit_xlsx_with_letters_and_repeated_questions(data_dir, tmp_path):
    counting = fx._BLINK_ROWS["Counting"]
    spatial = fx._BLINK_ROWS["Spatial_Relation"]
    header = ["index", "question", "A", "B", "C", "D", "answer", "category", "prediction"]
    sheet_rows = [[i, q, *(c + [None] * (4 - len(c))), a.strip("()"), "Counting", "B"]
                  for i, (q, c, a, _, _) in enumerate(counting)]
    # Two Spatial_Relation rows ask different questions; VLMEvalKit lists them in its own order.
    sheet_rows += [[20 + i, q, *(c + [None, None]), a.strip("()"), "Spatial_Relation", "no"]
                   for i, (q, c, a, _, _) in enumerate(spatial)]
    sheet = write_sheet(tmp_path / "GPT4o_BLINK.xlsx", header, sheet_rows)
    run = tmp_path / "run"
    assert cli("run", "--system", "predictions", "--predictions", sheet, "--predictions-format", "vlmevalkit",
               "--tasks", "blink", "--data-dir", data_dir, "--output-path", run) == 0
    records = {r["id"]: r for r in read_records(run / "samples_blink.jsonl")}
    scores = {r["question"].split("?")[0]: r["scores"]["strict"] for r in records.values()}
    assert scores == {"How many blue floats are there": 1.0, "How many cars are parked on the street": 0.0,
                      "How many birds are in the image": 0.0, "Is the car beneath the cat": 0.0,
                      "Is the person on the left of the umbrella": 1.0, "Is the bowl touching the spoon": 1.0}


def test_vlmevalkit_repeated_question_is_told_apart_by_its_gold(tmp_path):
    from harness.interop.logs import read_vlmevalkit
    from harness.interop.matching import OurSample, TaskIndex, _match_by_question

    def ours(i: int, gold: str) -> OurSample:
        return OurSample(id=str(i), subset="test", split="test", config=None, row=i, question="Which is taller?",
                         raw_question="Which is taller?", raw_id=None, raw_answer=gold, gold=gold, choices=None,
                         error=False)

    sheet = write_sheet(tmp_path / "M_Omni3DBench.tsv", ["index", "question", "answer", "prediction"],
                        [[1, "Which is taller?", "lamp", "the lamp"], [2, "Which is taller?", "chair", "chair"]])
    index = TaskIndex(task=None, samples=[ours(0, "chair"), ours(1, "lamp")])  # type: ignore[arg-type]
    matched, problems = _match_by_question(read_vlmevalkit(sheet), index)
    assert not problems
    assert matched["1"].row.index == "1" and matched["0"].row.index == "2"


def test_vlmevalkit_question_we_do_not_ask_is_refused(data_dir, tmp_path, capsys):
    sheet = write_sheet(tmp_path / "M_CountBenchQA.tsv", ["index", "question", "answer", "prediction"],
                        [[1, fx._COUNTBENCH_ROWS[0][1], 3, "3"], [2, "How many zebras are in the image?", 4, "4"]])
    assert cli("run", "--system", "predictions", "--predictions", sheet, "--predictions-format", "vlmevalkit",
               "--tasks", "countbenchqa", "--data-dir", data_dir, "--output-path", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "1 of 2 rows differ" in err and "index 2 asks 'How many zebras are in the image?'" in err


def test_two_files_answering_one_sample_are_refused(data_dir, tmp_path, capsys):
    rows = fx._COUNTBENCH_ROWS
    for name in ("A_CountBenchQA.tsv", "B_CountBenchQA.tsv"):
        write_sheet(tmp_path / "work" / name, ["index", "question", "answer", "prediction"],
                    [[0, rows[0][1], rows[0][2], "3"]])
    assert cli("run", "--system", "predictions", "--predictions", tmp_path / "work", "--predictions-format",
               "vlmevalkit", "--tasks", "countbenchqa", "--data-dir", data_dir, "--output-path", tmp_path / "run") == 2
    assert "sample countbenchqa/0 is answered twice" in capsys.readouterr().err


def test_harness_log_without_format_gets_a_hint(data_dir, tmp_path, capsys):
    samples = write_lmms_eval(tmp_path / "logs", "countbenchqa", countbench_lines(["3", "2", "7"]), COUNT_CONFIG)
    assert cli("run", "--system", "predictions", "--predictions", samples, "--tasks", "countbenchqa",
               "--data-dir", data_dir, "--output-path", tmp_path / "run") == 2
    assert "pass --predictions-format lm-eval or lmms-eval" in capsys.readouterr().err
    assert cli("run", "--system", "predictions", "--predictions", tmp_path / "logs", "--predictions-format", "lm-eval",
               "--tasks", "countbenchqa", "--data-dir", data_dir, "--output-path", tmp_path / "run") == 2
    assert "no lm-eval samples files" in capsys.readouterr().err
