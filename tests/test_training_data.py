"""Training data, query generation and verifier agreement, offline with scripted backends."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataset_fixtures import OMNI3D, OMNI3D_FEATURES, arrow_image, build_omni3d, colour, write_parquet
from harness.backends import make_chat_backend
from harness.backends.digest import request_digest
from harness.backends.scripted import script_entry
from harness.cli import main as cli_main
from harness.systems.llm_program import LLMProgramSystem
from harness.training.agreement import LabelledOutput, LabelsError, measure_agreement, read_labels
from harness.training.data import (
    DataOptions,
    TrainingDataError,
    build_training_data,
    load_trl_dataset,
    write_training_data,
)
from harness.training.prompts import TrainingPrompt
from harness.training.querygen import (
    QueryGenConfig,
    QueryGenerator,
    ReplyError,
    load_image,
    pick_query,
    queries_request,
    read_queries,
    read_suitability,
    status_path,
    suitability_request,
)
from harness.training.verifier import VERIFIED_PARTS, verifier_request
from harness.types import Sample

RECIPE_CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "query_generation" / "config.yaml"
SENTINEL = "SENTINEL-ANSWER"  # every answer of the test data holds it; no output may


# ----------------------------------------------------------------------------- data fixtures


def build_unique_omni3d(data_dir: Path, n_rows: int = 140) -> list[str]:
    """Omni3D-Bench's layout with a distinct question per row; the training rows (100 and
    up) have sentinel answers. Returns the training rows' questions."""
    columns: dict[str, list] = {name: [] for name in OMNI3D_FEATURES}
    for row in range(n_rows):
        columns["image"].append(arrow_image(colour(row // 2)))
        columns["image_index"].append(row // 2)
        columns["q_index"].append(row)
        columns["question"].append(f"How many chairs are left of table number {row}?")
        columns["answer"].append(f"{SENTINEL}-{row}" if row >= 100 else str(row % 7))
        columns["answer_type"].append("int")
    write_parquet(Path(data_dir) / OMNI3D, "data/train-00000-of-00001.parquet", columns, OMNI3D_FEATURES)
    return columns["question"][100:]


def write_generated(path: Path, n: int, extra: list[dict] | None = None) -> list[str]:
    rows = [{"image": f"images/{i}.jpg", "query": f"How far is the red lamp {i} from the sofa in meters?",
             "source": "generated", "answer": f"{SENTINEL}-gen-{i}"} for i in range(n)]
    rows += extra or []
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return [r["query"] for r in rows]


@pytest.fixture
def sources(tmp_path):
    data_dir = tmp_path / "data"
    omni = build_unique_omni3d(data_dir)
    generated = tmp_path / "generated.jsonl"
    gen = write_generated(generated, 30)
    return {"data_dir": str(data_dir), "omni": omni, "generated": str(generated), "gen": gen}


def build(sources: dict, **options: Any):
    return build_training_data(["omni3d_bench_train", sources["generated"]],
                               DataOptions(protocol="harness", data_dir=sources["data_dir"], **options))


def by_source(data) -> Counter:
    return Counter(row.source for row in data.rows)


# ----------------------------------------------------------------------------- training data


def test_balanced_sizes_take_half_from_each_source(sources):
    for size in (4, 10, 40):
        data = build(sources, size=size)
        assert by_source(data) == {"omni3d_bench_train": size // 2, "generated": size // 2}
        assert len(data.rows) == len(data.messages) == size
    data = build(sources, size=11)  # the odd row goes to the first source
    assert by_source(data) == {"omni3d_bench_train": 6, "generated": 5}
    every = build(sources)
    assert by_source(every) == {"omni3d_bench_train": 40, "generated": 30}
    assert every.counts["omni3d_bench_train"].read == 40


def test_a_short_source_gives_all_it_has_and_the_other_fills(sources):
    data = build(sources, size=66)
    assert by_source(data) == {"omni3d_bench_train": 36, "generated": 30}
    with pytest.raises(TrainingDataError, match="only 70 unique"):
        build(sources, size=71)


def test_selection_is_seeded_nested_and_mixed(sources):
    small, large = build(sources, size=8, seed=3), build(sources, size=40, seed=3)
    assert {r.id for r in small.rows} <= {r.id for r in large.rows}  # the ablation's sizes nest
    assert [r.id for r in build(sources, size=8, seed=3).rows] == [r.id for r in small.rows]
    assert {r.id for r in build(sources, size=8, seed=4).rows} != {r.id for r in small.rows}
    # The two sources are interleaved, not one block after the other.
    assert len({row.source for row in large.rows[:10]}) == 2
    uniform = build(sources, size=20, balanced=False)
    assert len(uniform.rows) == 20 and set(by_source(uniform)) <= {"omni3d_bench_train", "generated"}
    assert {r.id for r in build(sources, size=5, balanced=False).rows} <= {r.id for r in uniform.rows}


def test_identical_questions_are_dropped_within_and_across_sources(tmp_path):
    data_dir = tmp_path / "data"
    build_omni3d(data_dir, n_rows=130)  # rows 100-129 repeat seven questions
    generated = tmp_path / "generated.jsonl"
    write_generated(generated, 3, extra=[
        {"image": "x.jpg", "query": "  how many CHAIRS are in the image?", "source": "generated"},  # as Omni3D's
        {"image": "y.jpg", "query": "How far is the red lamp 0 from the sofa  in meters?"},  # as line 1
    ])
    sources = ["omni3d_bench_train", str(generated)]
    data = build_training_data(sources, DataOptions(protocol="harness", data_dir=str(data_dir)))
    assert data.counts["omni3d_bench_train"].read == 30 and data.counts["omni3d_bench_train"].unique == 7
    assert data.counts[str(generated)].read == 5 and data.counts[str(generated)].unique == 3
    questions = [r.question.lower().split() for r in data.rows]
    assert len(questions) == len({tuple(q) for q in questions}) == 10
    kept = build_training_data(sources, DataOptions(protocol="harness", data_dir=str(data_dir), dedup=False))
    assert len(kept.rows) == 35


def test_prompts_are_the_evaluation_systems_own(sources):
    def evaluation_messages(layout: str, question: str) -> list[dict]:
        system = LLMProgramSystem("eval", {"llm": {"backend": "scripted"}, "prompt_layout": layout,
                                           "question_template": "{question}"})
        return system.messages_for(Sample("1", "t", question, None, "none"))

    data = build(sources, size=6)
    for row, messages in zip(data.rows, data.messages):
        assert messages == evaluation_messages("system", row.question)
        assert [m["role"] for m in messages] == ["system", "user"] and messages[1]["content"] == row.question
        assert "{api}" not in messages[0]["content"] and "gd_detect" in messages[0]["content"]
    user = build(sources, size=6, layout="user")
    for row, messages in zip(user.rows, user.messages):
        assert messages == evaluation_messages("user", row.question) and len(messages) == 1
    with pytest.raises(TrainingDataError, match="layout"):
        DataOptions(protocol="harness", layout="both")
    assert TrainingPrompt(question_template="Question: {question}").messages("Q?")[1]["content"] == "Question: Q?"


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_both_formats_read_back_and_carry_no_answer(sources, tmp_path):
    out = tmp_path / "out"
    info = write_training_data(["omni3d_bench_train", sources["generated"]], out,
                               DataOptions(protocol="harness", size=20, seed=1, data_dir=sources["data_dir"]))
    assert info["rows"] == 20 and info["rows_per_data_source"] == {"omni3d_bench_train": 10, "generated": 10}
    assert info["counts"]["omni3d_bench_train"]["selected"] == 10
    assert json.loads((out / "manifest.json").read_text()) == info

    verl = pq.read_table(out / "train.parquet").to_pylist()
    assert verl == datasets.load_dataset("parquet", data_files=str(out / "train.parquet"), split="train").to_list()
    trl = load_trl_dataset(out / "train.jsonl").to_list()
    assert len(verl) == len(trl) == 20
    for index, (v, t) in enumerate(zip(verl, trl)):
        assert v["prompt"] == t["prompt"] and v["prompt"][1]["content"] == t["question"]
        assert v["ability"] == "spatial_reasoning" and v["reward_model"] == {"style": "model", "ground_truth": ""}
        extra = v["extra_info"]
        assert extra["question"] == t["question"] and extra["source"] == v["data_source"] == t["source"]
        assert extra["index"] == t["index"] == index and extra["image"] == t["image_ref"]
        assert t["question"] in sources["omni"] + sources["gen"]
        if v["data_source"] == "generated":
            assert extra["image"] == str((Path(sources["generated"]).parent / "images").resolve()
                                         / Path(extra["image"]).name)
        else:
            assert extra["image"].startswith(OMNI3D) and extra["id"].startswith("omni3d_bench_train/")
        assert "image" not in t  # TRL would read an 'image' column as pixels
        assert "answer" not in _keys(v) | _keys(t)
    for name in ("train.parquet", "train.jsonl", "manifest.json"):
        assert SENTINEL.encode() not in (out / name).read_bytes()


def test_evaluation_tasks_are_refused_unless_asked_for(sources):
    options = DataOptions(protocol="harness", data_dir=sources["data_dir"])
    with pytest.raises(TrainingDataError, match="evaluation task"):
        build_training_data(["omni3d_bench"], options)
    allowed = build_training_data(["omni3d_bench"], DataOptions(protocol="harness", data_dir=sources["data_dir"],
                                                                allow_eval_tasks=True))
    assert len(allowed.rows) == 100


def test_malformed_query_files_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "Is the cup left of the plate?"}\n{"image": "a.jpg"}\n')
    with pytest.raises(TrainingDataError, match=r"bad.jsonl:2: needs a non-empty string 'query'"):
        build_training_data([str(bad)], DataOptions(protocol="harness"))
    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"query": "Is the cup left of the plate?"}\n{"query": "How ma')
    data = build_training_data([str(torn)], DataOptions(protocol="harness"))
    assert [r.question for r in data.rows] == ["Is the cup left of the plate?"] and data.rows[0].source == "torn"


def test_training_data_cli(sources, tmp_path, capsys):
    out = tmp_path / "cli-out"
    code = cli_main(["training-data", "--sources", f"omni3d_bench_train,{sources['generated']}", "--out", str(out),
                     "--size", "8", "--seed", "2", "--data-dir", sources["data_dir"], "--protocol", "harness"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "omni3d_bench_train" in printed and "8 rows written" in printed
    assert {p.name for p in out.iterdir()} == {"train.parquet", "train.jsonl", "manifest.json"}
    assert cli_main(["training-data", "--sources", "omni3d_bench_train", "--out", str(out), "--size", "999",
                     "--data-dir", sources["data_dir"], "--protocol", "harness"]) == 2


def test_paper_protocol_data_from_the_pinned_queries_and_prompt(tmp_path, monkeypatch, capsys):
    """The original's 816 queries and system prompt come from the pinned upstream files (here the
    fixture's): the system prompt verbatim as the system turn, the bare question as the user turn."""
    from harness.training import protocol
    from upstream_fixtures import QUERIES, SYSTEM_PROMPT, write_upstream

    texts = write_upstream(tmp_path / "upstream")
    monkeypatch.setattr(protocol, "paper_texts", lambda data_dir=None: texts)
    out = tmp_path / "paper"
    assert cli_main(["training-data", "--sources", "valor_queries", "--keep-duplicates", "--out", str(out)]) == 0
    rows = load_trl_dataset(out / "train.jsonl")
    assert sorted(rows["question"]) == sorted(QUERIES)  # every row, the repeated one too
    for row in rows:
        assert row["prompt"] == [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": row["question"]}]
        assert "\\n" in row["prompt"][0]["content"]  # the original's literal backslash-n, not line breaks
    assert sorted(set(rows["source"])) == ["omni3d-bench", "web-images"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["protocol"] == "paper" and manifest["rows"] == 4
    capsys.readouterr()
    assert cli_main(["training-data", "--sources", "valor_queries", "--layout", "user", "--out", str(out)]) == 2
    assert "the paper protocol lays prompts out" in capsys.readouterr().err
    deduplicated = build_training_data(["valor_queries"], DataOptions())
    assert len(deduplicated.rows) == 3


# ----------------------------------------------------------------------------- query generation

CANDIDATES = [f"If the red chair is 0.8 meters tall, how tall is lamp {i} in meters?" for i in range(5)]


def suitable(objects: list[str] | None = None) -> str:
    return json.dumps({"suitable": True, "reason": "a room", "objects": objects or ["chair", "lamp"]})


def make_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for index, name in enumerate(["a_suitable", "b_unsuitable", "c_bad_json", "d_bad_queries"]):
        paths[name] = folder / f"{name}.png"
        Image.new("RGB", (20, 10), colour(index + 1)).save(paths[name])
    paths["e_unreadable"] = folder / "e_unreadable.jpg"
    paths["e_unreadable"].write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image either, and not an image file")
    return paths


def script(path: Path, entries: list[tuple[Path, str, str]]) -> Path:
    """A scripted VLM: (image, stage, reply) -> a line for the exact request."""
    lines = []
    for image_path, stage, reply in entries:
        image = load_image(image_path)
        request = suitability_request(image) if stage == "suitability" else queries_request(image, 5)
        lines.append(script_entry(request, reply))
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def generator(script_path: Path, **config: Any) -> QueryGenerator:
    vlm = make_chat_backend("scripted", path=script_path)
    return QueryGenerator(QueryGenConfig(vlm={"backend": "scripted"}, **config), backend=vlm)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_query_generation_records_every_outcome_and_resumes(tmp_path):
    images = make_images(tmp_path / "images")
    out = tmp_path / "gen" / "queries.jsonl"
    first = script(tmp_path / "first.jsonl", [
        (images["a_suitable"], "suitability", suitable()),
        (images["a_suitable"], "queries", "```json\n" + json.dumps(CANDIDATES) + "\n```"),
        (images["b_unsuitable"], "suitability", '{"suitable": false, "reason": "a blank wall", "objects": []}'),
        (images["c_bad_json"], "suitability", '{"suitable": true, "reason": '),
        (images["d_bad_queries"], "suitability", suitable()),
        (images["d_bad_queries"], "queries", "Here are some questions: how tall is it?"),
    ])
    stats = generator(first, seed=7).run(tmp_path / "images", out, progress=False)
    assert (stats.images, stats.processed, stats.ok, stats.unsuitable, stats.failed) == (5, 5, 1, 1, 3)
    assert stats.failed_by_stage == {"suitability": 1, "queries": 1, "image": 1}

    [record] = read_jsonl(out)
    assert record["image"] == "../images/a_suitable.png" and record["source"] == "generated"
    assert record["candidates"] == CANDIDATES and record["query"] == pick_query(CANDIDATES, 7, record["image"])
    statuses = {Path(s["image"]).stem: s for s in read_jsonl(status_path(out))}
    assert {k: s["status"] for k, s in statuses.items()} == {
        "a_suitable": "ok", "b_unsuitable": "unsuitable", "c_bad_json": "failed", "d_bad_queries": "failed",
        "e_unreadable": "failed"}
    assert statuses["b_unsuitable"]["reason"] == "a blank wall"
    assert statuses["c_bad_json"]["stage"] == "suitability" and "no JSON" in statuses["c_bad_json"]["error"]
    assert statuses["c_bad_json"]["reply"].startswith('{"suitable"')
    assert statuses["d_bad_queries"]["stage"] == "queries" and statuses["e_unreadable"]["stage"] == "image"

    # A killed writer leaves a torn line; the next run cuts it off. Done images are not asked
    # again (the script has no line for them: asking would fail), failed ones are retried.
    with out.open("a") as handle:
        handle.write('{"image": "../images/zz')
    second = script(tmp_path / "second.jsonl", [
        (images["c_bad_json"], "suitability", '{"suitable": "yes", "reason": "shelves"}'),
        (images["c_bad_json"], "queries", json.dumps({"queries": [{"query": q} for q in CANDIDATES[:3]]})),
        (images["d_bad_queries"], "suitability", suitable()),
        (images["d_bad_queries"], "queries", json.dumps(CANDIDATES + ["One more?"])),
    ])
    stats = generator(second, seed=7).run(tmp_path / "images", out, progress=False)
    assert (stats.already_done, stats.processed, stats.ok, stats.failed) == (2, 3, 2, 1)
    assert stats.failed_by_stage == {"image": 1} and stats.queries_in_file == 3
    records = read_jsonl(out)  # the torn line is gone
    assert [Path(r["image"]).stem for r in records] == ["a_suitable", "c_bad_json", "d_bad_queries"]
    assert records[1]["candidates"] == CANDIDATES[:3] and records[2]["candidates"] == CANDIDATES
    assert len(read_jsonl(status_path(out))) == 8

    # Nothing left but the unreadable file; without retries nothing is sent at all.
    stats = generator(second, retry_failed=False).run(tmp_path / "images", out, progress=False)
    assert (stats.already_done, stats.processed) == (5, 0)


def test_query_generation_stops_at_max_queries_and_honours_limit(tmp_path):
    images = make_images(tmp_path / "images")
    entries = [(images[name], "suitability", suitable()) for name in ("a_suitable", "b_unsuitable", "c_bad_json")]
    entries += [(images[name], "queries", json.dumps(CANDIDATES)) for name in ("a_suitable", "b_unsuitable",
                                                                                "c_bad_json")]
    path = script(tmp_path / "script.jsonl", entries)
    out = tmp_path / "queries.jsonl"
    stats = generator(path, batch_size=1, max_queries=2).run(tmp_path / "images", out, progress=False)
    assert stats.ok == 2 and stats.stopped_early and len(read_jsonl(out)) == 2
    stats = generator(path, limit=3).run(tmp_path / "images", tmp_path / "other.jsonl", progress=False)
    assert (stats.images, stats.ok) == (3, 3)


def test_the_draw_among_candidates_is_uniform_and_seeded():
    keys = [f"img_{i}.jpg" for i in range(2000)]
    draws = Counter(pick_query(CANDIDATES, 0, key) for key in keys)
    assert set(draws) == set(CANDIDATES) and all(330 < n < 470 for n in draws.values())
    assert [pick_query(CANDIDATES, 0, k) for k in keys[:50]] == [pick_query(CANDIDATES, 0, k) for k in keys[:50]]
    assert [pick_query(CANDIDATES, 0, k) for k in keys[:50]] != [pick_query(CANDIDATES, 1, k) for k in keys[:50]]


def test_replies_are_read_strictly():
    assert read_suitability('Sure! {"suitable": false, "reason": "blurry"}').suitable is False
    for reply in ('{"reason": "no verdict"}', '{"suitable": "maybe"}', "yes"):
        with pytest.raises(ReplyError):
            read_suitability(reply)
    assert read_queries('["Is  the cup\\nleft of the plate?", "is the cup left of the plate?", "", 3]') == [
        "Is the cup left of the plate?"]
    for reply in ("[]", '{"other": 1}', "no json"):
        with pytest.raises(ReplyError):
            read_queries(reply)


def test_generate_queries_cli_with_the_recipe_config(tmp_path, capsys):
    images = make_images(tmp_path / "images")
    path = script(tmp_path / "script.jsonl", [
        (images["a_suitable"], "suitability", suitable()),
        (images["a_suitable"], "queries", json.dumps(CANDIDATES)),
    ])
    out = tmp_path / "queries.jsonl"
    code = cli_main(["generate-queries", str(tmp_path / "images"), "--out", str(out), "--config",
                     str(RECIPE_CONFIG), "--vlm", f"scripted:{path}", "--limit", "1", "--seed", "3",
                     "--no-progress"])
    assert code == 0 and read_jsonl(out)[0]["query"] == pick_query(CANDIDATES, 3, "images/a_suitable.png")
    # Every image but the first fails here (nothing scripted): counted, pointed at, exit code 1.
    assert cli_main(["generate-queries", str(tmp_path / "images"), "--out", str(out), "--vlm",
                     f"scripted:{path}", "--no-progress"]) == 1
    assert "4 images failed" in capsys.readouterr().err


# ----------------------------------------------------------------------------- verifier agreement

PLAN = "Detect the cups and count them; if none are found the answer is 0."
CODE = 'cups = gd_detect(image, "cup")\nfinal_answer = len(cups)'


def labelled(n: int) -> list[dict]:
    return [{"query": f"How many cups are on table {i}?", "plan": f"{PLAN} ({i})", "code": CODE,
             "labels": {"logic": 1, "attribute": i % 2, "spatial": 1, "adherence": 0 if i == 0 else 1}}
            for i in range(n)]


def verifier_script(path: Path, items: list[dict], verdicts: dict[tuple[int, str], Any]) -> Path:
    """A scripted verifier: (item, part) -> 0/1 (a JSON verdict), a string (the reply) or an exception
    message (wrapped in a dict: a failed call). Unlisted requests fail as unscripted."""
    lines = []
    for (index, part), verdict in verdicts.items():
        item = items[index]
        request = verifier_request(part, item["query"], item["plan"], item["code"])
        if isinstance(verdict, dict):
            lines.append({"prompt_sha256": request_digest(request), "error": verdict["error"]})
        else:
            reply = verdict if isinstance(verdict, str) else json.dumps({"reason": "checked", "score": verdict})
            lines.append(script_entry(request, reply))
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def write_labels(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


def test_agreement_with_a_scripted_verifier(tmp_path, capsys):
    items = labelled(4)
    del items[3]["labels"]["spatial"]  # not labelled: not asked
    items[2]["labels"]["syntax"] = 1  # labelled but judged by no verifier: left out
    verdicts = {}
    for index, item in enumerate(items):
        for part, label in item["labels"].items():
            if part in VERIFIED_PARTS:
                verdicts[(index, part)] = label
    verdicts[(0, "logic")] = 0  # under-rewards
    verdicts[(1, "attribute")] = 0  # under-rewards
    verdicts[(2, "adherence")] = 0  # under-rewards
    verdicts[(3, "attribute")] = "```json\n{\"reason\": \"measured\", \"score\": 0}\n```"  # under, fenced
    verdicts[(0, "adherence")] = 1  # over-rewards
    labels, script_path = write_labels(tmp_path / "labels.jsonl", items), verifier_script(
        tmp_path / "verifier.jsonl", items, verdicts)
    output = tmp_path / "report.json"
    reward = tmp_path / "reward.yaml"
    reward.write_text("protocol: harness\n")  # the scripted verifier answers our protocol's JSON
    code = cli_main(["verifier-agreement", str(labels), "--verifier", f"scripted:{script_path}", "--output-path",
                     str(output), "--reward-config", str(reward)])
    assert code == 0
    report = json.loads(output.read_text())
    parts = report["parts"]
    assert parts["logic"]["n"] == 4 and parts["logic"]["agreement"] == pytest.approx(3 / 4)
    assert parts["attribute"]["agreement"] == pytest.approx(2 / 4)
    assert parts["spatial"]["n"] == 3 and parts["spatial"]["agreement"] == 1.0
    assert parts["adherence"]["agreement"] == pytest.approx(2 / 4)
    assert parts["adherence"]["confusion"] == {"label_1_verdict_1": 2, "label_1_verdict_0": 1,
                                               "label_0_verdict_1": 1, "label_0_verdict_0": 0}
    overall = report["overall"]
    assert (overall["n"], overall["judged"], overall["failures"]) == (15, 15, 0)
    assert overall["agreement"] == pytest.approx(10 / 15)
    assert overall["confusion"]["label_1_verdict_0"] == 4 and overall["confusion"]["label_0_verdict_1"] == 1
    assert report["fully_agreeing"] == 0 and report["items"][0]["reasons"]["logic"] == "checked"
    printed = capsys.readouterr().out
    assert "| overall" in printed and "66.7" in printed and "verifier: scripted:" in printed


def test_verifier_failures_are_counted_not_scored(tmp_path):
    items = labelled(2)
    outputs = read_labels(write_labels(tmp_path / "labels.jsonl", items))
    verdicts = {(i, part): label for i, item in enumerate(items) for part, label in item["labels"].items()}
    verdicts[(0, "logic")] = {"error": "quota exceeded"}
    verdicts[(1, "logic")] = "I would say it is fine."  # unreadable
    del verdicts[(1, "spatial")]  # unscripted: the call fails
    verifier = make_chat_backend("scripted", path=verifier_script(tmp_path / "v.jsonl", items, verdicts))
    report = measure_agreement(outputs, verifier)
    logic, spatial = report.parts["logic"], report.parts["spatial"]
    assert (logic.n, logic.failures, logic.judged, logic.agreement) == (2, 2, 0, None)
    assert (spatial.failures, spatial.agreement) == (1, 1.0)
    assert (report.overall.n, report.overall.failures, report.overall.agreement) == (8, 3, 1.0)
    assert "quota exceeded" in report.items[0]["errors"]["logic"]
    assert "unreadable verdict" in report.items[1]["errors"]["logic"]
    assert report.items[1]["verdicts"]["logic"] is None

    down = tmp_path / "down.jsonl"
    down.write_text(json.dumps({"match": "Plan", "error": "service unavailable"}) + "\n")
    report = measure_agreement(outputs, make_chat_backend("scripted", path=down))
    assert report.overall.failures == report.overall.n == 8 and report.overall.agreement is None


def test_labels_are_checked(tmp_path):
    path = tmp_path / "labels.jsonl"
    for entry, message in (({"query": "q", "plan": "p", "labels": {"logic": 1}}, "string 'code'"),
                           ({"query": "q", "plan": "p", "code": "c", "labels": {"logic": 2}}, "0 or 1"),
                           ({"query": "q", "plan": "p", "code": "c", "labels": {"logik": 1}}, "unknown part")):
        path.write_text(json.dumps(entry) + "\n")
        with pytest.raises(LabelsError, match=message):
            read_labels(path)
    path.write_text(json.dumps({"query": "q", "plan": "p", "code": "c", "labels": {"logic": True, "spatial": None}})
                    + "\n")
    assert read_labels(path) == [LabelledOutput(1, "q", "p", "c", {"logic": 1})]
