"""The data path of large runs: the predictions file's index, ids kept in 16 bytes, records found
without reading the others, summaries kept as records are written and saved for a resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from harness.idset import IdSet, digest
from harness.records import RecordWriter, find_records
from harness.systems.predictions import PredictionsFileError, PredictionsSystem
from harness.types import Sample


class FakeTask:
    def __init__(self, name: str, ids: list[str]) -> None:
        self.name, self._ids = name, ids

    def iter_ids(self):
        return iter(self._ids)


def _system(path: Path, lines: list) -> PredictionsSystem:
    path.write_text("".join(line if isinstance(line, str) else json.dumps(line) + "\n" for line in lines))
    return PredictionsSystem("predictions", {"path": str(path)})


def _answer(system: PredictionsSystem, task: str, sample_id: str):
    prediction = system.predict_one(Sample(id=sample_id, task=task, question="", answer=None, answer_type="word"))
    return prediction.answer if prediction.status == "ok" else prediction.status


def test_every_sample_finds_its_line_in_any_order(tmp_path):
    a_ids, b_ids = [str(i) for i in range(300)], [str(i) for i in range(150, 450)]
    rows = ([{"task": "a", "id": i, "prediction": f"a{i}"} for i in a_ids]
            + [{"task": "b", "id": i, "prediction": f"b{i}"} for i in b_ids if int(i) < 300]
            + [{"id": i, "prediction": f"b{i}"} for i in b_ids if int(i) >= 300]  # only b has these ids
            + [{"task": "c", "id": "7", "prediction": "not selected"}])
    random.Random(0).shuffle(rows)
    system = _system(tmp_path / "p.jsonl", rows[:5] + ["\n"] + rows[5:])
    system.prepare([FakeTask("a", a_ids), FakeTask("b", b_ids + ["missing"])])
    order = [("a", i) for i in a_ids] + [("b", i) for i in b_ids]
    random.Random(1).shuffle(order)
    for task, sample_id in order + [(t, i) for t, i in sorted(order)]:
        assert _answer(system, task, sample_id) == f"{task}{sample_id}"
    assert _answer(system, "b", "missing") == "missing"
    system.close()


def test_a_file_in_sample_order_is_read_straight_through(tmp_path):
    ids = [str(i) for i in range(2000)]
    system = _system(tmp_path / "p.jsonl", [{"id": i, "prediction": int(i)} for i in ids])
    system.prepare([FakeTask("t", ids)])
    assert [_answer(system, "t", i) for i in ids] == list(range(2000))


@pytest.mark.parametrize("lines, message", [
    # The first problem in file order wins, as when lines were checked one at a time.
    ([{"id": "2", "prediction": 1}, {"id": "5", "prediction": 1}, {"id": "1", "prediction": 2},
      {"id": "2", "prediction": 1}], "line 3: id '1' exists in tasks a, b; add a 'task' key"),
    ([{"id": "2", "prediction": 1}, {"id": "2", "prediction": 1}, {"id": "1", "prediction": 2}],
     "line 2: a second prediction for a/2 (first on line 1)"),
    ([{"task": "b", "id": "1", "prediction": 1}, {"id": "2", "prediction": 1}, {"task": "b", "id": "1"},
      {"id": "2", "prediction": 1}], None),
    ([{"task": "b", "id": "1", "prediction": 1}, {"id": "2", "prediction": 1}, {"task": "b", "id": "1",
      "prediction": 3}, {"id": "2", "prediction": 1}], "line 3: a second prediction for b/1 (first on line 1)"),
    ([{"id": "9", "prediction": 1}, {"task": "b", "id": "2", "prediction": 1}, {"id": "8", "prediction": 1}],
     "3 predictions match no sample of the selected tasks (a, b): line 1: id '9'; line 2: id '2' (task b); "
     "line 3: id '8'"),
])
def test_problems_are_named_like_a_line_by_line_check(tmp_path, lines, message):
    system = _system(tmp_path / "p.jsonl", lines)
    tasks = [FakeTask("a", ["1", "2", "3"]), FakeTask("b", ["1", "4", "5"])]
    if message is None:  # a line without 'prediction' is refused before anything else
        with pytest.raises(PredictionsFileError, match="line 3 .* has no 'prediction'"):
            system.prepare(tasks)
        return
    with pytest.raises(PredictionsFileError) as error:
        system.prepare(tasks)
    assert message in str(error.value)


def test_many_unknown_ids_are_counted_and_the_first_ten_named(tmp_path):
    system = _system(tmp_path / "p.jsonl", [{"id": str(i), "prediction": 0} for i in range(30, 0, -1)])
    with pytest.raises(PredictionsFileError, match=r"27 predictions match no sample .*line 1: id '30'; line 2: "
                                                   r"id '29'.*line 10: id '21'; and 17 more"):
        system.prepare([FakeTask("a", ["1", "2", "3"])])


def test_id_sets_hold_every_id_and_no_other():
    ids = [f"id-{i}" for i in range(20_000)] + ["", "é", "a\u0000b", "\ud800"]
    kept = IdSet(ids)
    assert len(kept) == len(ids)
    assert all(sample_id in kept for sample_id in ids)
    assert not any(f"other-{i}" in kept for i in range(20_000))
    assert not kept.add("id-5") and kept.add("id-new") and 7 not in kept
    assert any(digest(sample_id).endswith(b"\0") for sample_id in ids)  # NumPy's padding is covered


def test_records_of_a_sample_are_found_without_reading_the_others(tmp_path):
    path = tmp_path / "samples_t.jsonl"
    ids = ["1", "10", 'say "hi"', "é", "7"]
    with RecordWriter(path) as writer:
        for sample_id in ids:
            writer.append({"id": sample_id, "tool_calls": [{"id": "1"}], "prediction": "7"})
    for sample_id in ids:
        assert [r["id"] for r in find_records(path, sample_id)] == [sample_id]
    assert find_records(path, "2") == []
    path.write_text(path.read_text() + json.dumps({"id": "2"}, separators=(",", ":")) + "\n" + '{"id": "3"')
    assert find_records(path, "2") == [{"id": "2"}]  # other JSON spacing: the file is read whole
    assert find_records(path, "3") == []  # a torn last line is no record


@pytest.mark.parametrize("chunk", [1, 5, 9, 23, 1 << 24])
def test_finding_a_record_does_not_depend_on_where_the_reads_cut_the_file(tmp_path, monkeypatch, chunk):
    import harness.records as records

    monkeypatch.setattr(records, "_SCAN_CHUNK", chunk)
    path = tmp_path / "samples_t.jsonl"
    ids = ["0", "1", "11", "1 1", "é", "x" * 30, "2"]
    with RecordWriter(path) as writer:
        for sample_id in ids:
            writer.append({"id": sample_id, "note": '{"id": "1"', "prediction": sample_id})
    for sample_id in ids:
        assert [r["prediction"] for r in find_records(path, sample_id)] == [sample_id]
    assert find_records(path, "3") == []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:2] + ['{"id": "1", "torn\n'] + lines[2:]), encoding="utf-8")
    with pytest.raises(records.RecordsError, match="line 3 is not valid JSON"):
        find_records(path, "1")
    path.write_text("".join(lines[:2] + ["[1]\n"] + lines[2:]), encoding="utf-8")
    with pytest.raises(records.RecordsError, match="line 3 is not a record"):
        find_records(path, "2")  # a line that is no record, though the sample's own lines are fine
