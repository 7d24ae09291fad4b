"""Our tasks out to lm-evaluation-harness (and lmms-eval), and lm-eval's own output back in.

lm-eval (in the dev extra) is used as it is: its TaskManager loads the exported
YAMLs, its evaluator runs them with a model object of ours, and its
EvaluationTracker writes the samples file that the predictions system scores.
The datasets are the offline fixtures in the real schemas.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dataset_fixtures as fx  # noqa: E402

from harness.cli import main  # noqa: E402
from harness.export import task_utils  # noqa: E402
from harness.export.tasks import MANIFEST  # noqa: E402
from harness.interop.gold import answer_text  # noqa: E402
from harness.records import read_records  # noqa: E402
from harness.systems import SystemRegistry  # noqa: E402
from harness.tasks import TaskRegistry  # noqa: E402

PAPER_TASKS = ["blink", "countbenchqa", "gqa", "omni3d_bench", "realworldqa", "robospatial", "tallyqa", "vsr"]
PROMPT_SYSTEM = "direct-qwen2.5-vl-7b"


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    fx.build_all(root)
    return root


@pytest.fixture(scope="module")
def lm_eval_export(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "lm-eval"
    assert cli("export", "lm-eval", "--tasks", "all", "--out", out, "--data-dir", data_dir) == 0
    return out


def our_prompts(name: str, data_dir: Path) -> dict[str, tuple[str, object]]:
    """Sample id -> (the prompt our direct-VLM system sends, the sample)."""
    system = SystemRegistry().build(PROMPT_SYSTEM)
    samples = TaskRegistry().task(name, data_dir).samples()
    return {s.id: (system.instructions(s, s.image.size()), s) for s in samples if not s.error}


def load_lm_eval_tasks(folder: Path, names: list[str]) -> dict:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(folder), include_defaults=False).load(names)["tasks"]


def test_lm_eval_builds_our_prompts_and_images_for_every_sample(lm_eval_export, data_dir):
    manifest = json.loads((lm_eval_export / MANIFEST).read_text())
    assert [t["task"] for t in manifest["tasks"]] == PAPER_TASKS
    loaded = load_lm_eval_tasks(lm_eval_export, [f"valor_{name}" for name in PAPER_TASKS])
    for name in PAPER_TASKS:
        task = loaded[f"valor_{name}"]
        ours = our_prompts(name, data_dir)
        task.build_all_requests(rank=0, world_size=1)
        assert len(task.instances) == len(ours) > 0, name
        for instance in task.instances:
            doc = instance.doc
            prompt, sample = ours[doc["id"]]
            assert instance.arguments[0] == "<image>" + prompt, (name, doc["id"])
            assert instance.arguments[1]["until"] == [] and instance.arguments[1]["do_sample"] is False
            [image] = instance.arguments[2]["visual"]
            assert image.convert("RGB").tobytes() == sample.image.load().tobytes(), (name, doc["id"])
            assert task.doc_to_target(doc) == answer_text(sample.answer)
            assert doc["question"] == sample.question and doc["answer_type"] == sample.answer_type
            assert list(doc["choices"]) == list(sample.choices or [])
    # The prompt is the question followed by the answer-format rules, as the direct systems ask.
    count = loaded["valor_countbenchqa"].instances[0].arguments[0]
    assert count.startswith("<image>" + fx._COUNTBENCH_ROWS[0][1] + "\nAnswer with a single whole number.")


def test_exported_files_name_their_source_and_generation(lm_eval_export):
    text = (lm_eval_export / "valor_blink.yaml").read_text()
    assert "doc_to_text: !function utils.doc_to_text" in text
    config = yaml.safe_load(text.replace("!function", ""))  # the plain part, tag aside
    assert config["dataset_path"] == str((lm_eval_export / "data" / "valor_blink").resolve())
    assert config["metadata"]["harness_task"] == "blink"
    assert config["metadata"]["harness_fingerprint"] == TaskRegistry().config("blink").fingerprint()
    assert config["metadata"]["prompt_system"] == PROMPT_SYSTEM
    assert config["generation_kwargs"]["max_gen_toks"] == 512  # the system's max_new_tokens
    assert config["tag"] == ["valor_harness"]
    assert (lm_eval_export / "utils.py").read_text() == Path(task_utils.__file__).read_text()


def test_lmms_eval_export_uses_its_function_signatures(data_dir, tmp_path):
    out = tmp_path / "lmms"
    assert cli("export", "lmms-eval", "--tasks", "countbenchqa", "--out", out, "--data-dir", data_dir) == 0
    text = (out / "valor_countbenchqa.yaml").read_text()
    assert "doc_to_visual: !function utils.lmms_doc_to_visual" in text
    assert "doc_to_text: !function utils.lmms_doc_to_text" in text
    config = yaml.safe_load(text.replace("!function", ""))
    assert config["generation_kwargs"] == {"max_new_tokens": 512, "temperature": 0, "do_sample": False,
                                            "until": []}
    import datasets

    rows = datasets.load_dataset(config["dataset_path"], split="test")
    ours = our_prompts("countbenchqa", data_dir)
    assert len(rows) == len(ours)
    for row in rows:
        assert task_utils.lmms_doc_to_text(row, None) == ours[row["id"]][0]
        assert task_utils.lmms_doc_to_text(row, {"pre_prompt": "", "post_prompt": ""}) == ours[row["id"]][0]
        assert task_utils.lmms_doc_to_visual(row)[0].mode == "RGB"  # one fixture image is grayscale


def test_export_refuses_a_foreign_folder_and_training_tasks(data_dir, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert cli("export", "lm-eval", "--tasks", "countbenchqa", "--out", tmp_path / "busy", "--data-dir", data_dir) == 2
    assert "is not empty" in capsys.readouterr().err
    assert cli("export", "lm-eval", "--tasks", "gqa_train", "--out", tmp_path / "t", "--data-dir", data_dir) == 2
    assert "training questions" in capsys.readouterr().err
    assert cli("export", "lm-eval", "--tasks", "countbenchqa", "--out", tmp_path / "p", "--system", "reference",
               "--data-dir", data_dir) == 2
    assert "does not ask a VLM directly" in capsys.readouterr().err


def test_export_again_replaces_one_task_and_keeps_the_others(data_dir, tmp_path):
    out = tmp_path / "x"
    assert cli("export", "lm-eval", "--tasks", "countbenchqa,vsr", "--out", out, "--data-dir", data_dir) == 0
    assert cli("export", "lm-eval", "--tasks", "vsr", "--out", out, "--data-dir", data_dir, "--limit", "2") == 0
    tasks = {t["task"]: t for t in json.loads((out / MANIFEST).read_text())["tasks"]}
    assert set(tasks) == {"countbenchqa", "vsr"} and tasks["vsr"]["rows"] == 2 and tasks["vsr"]["limit"] == 2
    assert cli("export", "lmms-eval", "--tasks", "vsr", "--out", out, "--data-dir", data_dir) == 2


class ScriptedVLM:
    """A multimodal model for lm-eval: answers even rows right (with reasoning before the
    answer line), odd rows with a wrong or unreadable reply."""

    def __new__(cls):
        from lm_eval.api.model import LM

        class Model(LM):
            MULTIMODAL = True

            def loglikelihood(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def generate_until(self, requests, disable_tqdm=False):
                replies = []
                for request in requests:
                    assert request.arguments[2]["visual"], "the image reaches the model"
                    doc = request.doc
                    if request.doc_id % 2 == 0:
                        replies.append(f"Looking at the picture.\nAnswer: {doc['answer']}")
                    else:
                        replies.append("I cannot tell from this image.")
                return replies

        return Model()


def run_lm_eval(folder: Path, names: list[str], out: Path) -> Path:
    """lm-eval's evaluator and its own writer: results and samples files under ``out``."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(folder), include_defaults=False)
    results = lm_eval.simple_evaluate(model=ScriptedVLM(), tasks=names, task_manager=manager, log_samples=True)
    samples = results.pop("samples")
    tracker = EvaluationTracker(output_path=str(out))
    tracker.save_results_aggregated(results=results, samples=samples)
    for name in names:
        tracker.save_results_samples(task_name=name, samples=samples[name])
    return out


def test_lm_eval_samples_file_is_scored_here(lm_eval_export, data_dir, tmp_path, capsys):
    logs = run_lm_eval(lm_eval_export, ["valor_blink", "valor_countbenchqa", "valor_omni3d_bench"], tmp_path / "lm")
    assert len(list(logs.rglob("samples_valor_*.jsonl"))) == 3
    run = tmp_path / "run"
    assert cli("run", "--system", "predictions", "--predictions", logs, "--predictions-format", "lm-eval",
               "--tasks", "blink,countbenchqa,omni3d_bench", "--data-dir", data_dir, "--output-path", run) == 0
    results = json.loads((run / "results.json").read_text())
    for task in ("blink", "countbenchqa", "omni3d_bench"):
        records = {r["id"]: r for r in read_records(run / f"samples_{task}.jsonl")}
        ours = our_prompts(task, data_dir)
        assert set(records) == set(ours)
        ordered = list(ours)  # lm-eval's doc_id is the row of the export, whose order is ours
        for position, sample_id in enumerate(ordered):
            record = records[sample_id]
            assert record["status"] == "ok"
            if position % 2 == 0:
                assert record["scores"]["strict"] == 1.0, (task, sample_id, record["raw"])
            else:
                assert record["scores"]["strict"] == 0.0 and record["raw"] == "I cannot tell from this image."
        expected = sum(1 for i in range(len(ordered)) if i % 2 == 0) / len(ordered)
        assert results["results"][task]["accuracy,strict"] == pytest.approx(expected)
    described = json.loads((run / "run.json").read_text())["system_config"]["source"]
    assert described["format"] == "lm-eval" and len(described["files"]) == 3
    first = described["files"][0]
    assert first["results_file"] and len(first["sha256"]) == 64 and first["dataset"]["test_split"] == "test"
    # The imported run is a run like any other: the leaderboard-style checks read it.
    assert cli("check", "--baseline", run, "--candidate", run) == 0


def test_lm_eval_file_of_another_task_is_refused(lm_eval_export, data_dir, tmp_path, capsys):
    logs = run_lm_eval(lm_eval_export, ["valor_countbenchqa"], tmp_path / "lm")
    capsys.readouterr()
    code = cli("run", "--system", "predictions", "--predictions", logs, "--predictions-format", "lm-eval",
               "--tasks", "vsr", "--data-dir", data_dir, "--output-path", tmp_path / "r1")
    err = capsys.readouterr().err
    assert code == 2 and "no lm-eval file holds task 'vsr'" in err and "valor_countbenchqa" in err
    code = cli("run", "--system", "predictions", "--predictions", logs, "--predictions-format", "lm-eval",
               "--tasks", "vsr", "--system-args", "task=vsr", "--data-dir", data_dir, "--output-path", tmp_path / "r2")
    err = capsys.readouterr().err
    assert code == 2 and "does not match task 'vsr'" in err and "exported from task 'countbenchqa'" in err
    assert len(err.strip().splitlines()) == 1
