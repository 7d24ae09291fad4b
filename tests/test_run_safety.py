"""Runs against failing infrastructure: never a silent zero, never ranked, resumable.

A program writer and a judge behind the scripted OpenAI-compatible server
(tests/fake_openai.py), which fails, hangs or answers as each test says.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_openai import KEY_ENV, Reply, running_chat_server
from harness.cli import main
from harness.records import read_records
from harness.results import summarize_records
from harness.runlock import RunLock
from toy import SMALL_SYNTHETIC_TASK, write_system, write_toy_task

REPO = Path(__file__).resolve().parents[1]
PROGRAM = "<plan>Answer one.</plan><answer>final_answer = 1</answer>"


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    with running_chat_server(monkeypatch) as chat_server:
        yield chat_server


def dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def program_writer(include: Path, url: str, name: str = "writer", **llm) -> str:
    """An LLM program writer on ``url`` with oracle tools, no retries and no response cache."""
    (include / f"{name}.yaml").write_text(json.dumps({"system": name, "kind": "llm_program", "params": {
        "llm": {"backend": "openai", "model": "m", "base_url": url, "api_key_env": KEY_ENV, "max_retries": 0,
                "backoff_s": 0.01, **llm},
        "tools": "oracle", "cache": False, "concurrency": 2}}))
    return name


@pytest.fixture
def synthetic(tmp_path):
    include = tmp_path / "include"
    include.mkdir()
    (include / "synthetic_small.yaml").write_text(SMALL_SYNTHETIC_TASK)
    return include


def records(run_dir: Path, task: str) -> list[dict]:
    return list(read_records(run_dir / f"samples_{task}.jsonl"))


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


# --------------------------------------------------------------------------- judge


def open_task(tmp_path: Path, n: int = 6) -> tuple[Path, Path, Path]:
    include, data = tmp_path / "include", tmp_path / "data" / "toy" / "open"
    include.mkdir(exist_ok=True)
    data.mkdir(parents=True)
    (include / "toy_open.yaml").write_text(
        "task: toy_open\ndataset:\n  path: toy/open\n  parts:\n    - split: test\n      data_files: test.jsonl\n"
        "fields:\n  image: null\nanswer_type: open\ncompat: judge\n")
    (data / "test.jsonl").write_text("".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n"
                                             for i in range(n)))
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"id": str(i), "prediction": f"p{i}"}) + "\n" for i in range(n)))
    return include, tmp_path / "data", predictions


def judged_run(include, data, predictions, out, server, *extra) -> int:
    return main(["run", "--system", "predictions", "--predictions", str(predictions), "--tasks", "toy_open",
                 "--data-dir", str(data), "--include-path", str(include), "--output-path", str(out),
                 "--judge", "judge-model", "--judge-base-url", server.url, "--judge-api-key-env", KEY_ENV,
                 "--judge-retries", "0", "--judge-timeout", "5", *extra])


def test_judge_failures_are_never_a_zero_and_resume_judges_them_again(tmp_path, server, capsys):
    include, data, predictions = open_task(tmp_path)
    out = tmp_path / "run"
    server.default = Reply(503)
    assert judged_run(include, data, predictions, out, server) == 3
    for record in records(out, "toy_open"):
        assert record["parse"] == "judge_error" and record["scores"] == {"strict": None, "compat": None}
        assert "HTTP 503" in record["judge"]["error"]
    summary = results(out)
    assert summary["complete"] is False and summary["infrastructure_failures"] == 6
    task = summary["results"]["toy_open"]
    assert task["accuracy,strict"] is None and task["n_scored"] == 0
    assert task["infrastructure_counts"] == {"judge_error": 6}
    printed = capsys.readouterr()
    assert "INCOMPLETE" in printed.out and "6 (judge_error 6)" in printed.out
    assert "redoes what failed" in printed.err

    asked = len(server.requests)
    server.default = Reply(content="1")
    assert judged_run(include, data, predictions, out, server, "--resume") == 0
    judged = records(out, "toy_open")
    assert sorted(r["id"] for r in judged) == [str(i) for i in range(6)]  # once each, nothing predicted twice
    assert all(r["scores"]["strict"] == 1.0 and r["parse"] == "ok" for r in judged)
    assert len(server.requests) == asked + 6 and results(out)["complete"] is True


def test_records_are_judged_concurrently_within_the_bound(tmp_path, server):
    include, data, predictions = open_task(tmp_path, n=12)
    server.default = Reply(content="1", delay=0.2)
    assert judged_run(include, data, predictions, tmp_path / "run", server, "--judge-concurrency", "4") == 0
    assert 1 < server.max_in_flight <= 4
    assert len(records(tmp_path / "run", "toy_open")) == 12


def test_the_judge_settings_are_recorded_and_may_change_on_resume(tmp_path, server):
    include, data, predictions = open_task(tmp_path)
    out = tmp_path / "run"
    server.default = Reply(content="1")
    assert judged_run(include, data, predictions, out, server, "--limit", "3") == 0
    judge = json.loads((out / "run.json").read_text())["judge"]
    assert (judge["timeout_s"], judge["max_retries"], judge["max_concurrency"]) == (5.0, 0, 8)
    assert judged_run(include, data, predictions, out, server, "--limit", "3", "--resume",
                      "--judge-timeout", "9") == 0
    assert json.loads((out / "run.json").read_text())["judge"]["timeout_s"] == 9.0


# --------------------------------------------------------------------------- the system's endpoint


def test_a_dead_endpoint_is_refused_before_anything_starts(synthetic, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    url = f"http://127.0.0.1:{dead_port()}/v1"
    out = tmp_path / "run"
    start = time.monotonic()
    assert main(["run", "--system", program_writer(synthetic, url), "--tasks", "synthetic_small",
                 "--include-path", str(synthetic), "--output-path", str(out)]) == 2
    assert time.monotonic() - start < 30  # the generous bound of a check; retries would take minutes
    error = capsys.readouterr().err
    assert f"endpoint {url}" in error and "cannot connect" in error
    assert not out.exists()  # nothing blocks the corrected command


def test_without_preflight_a_dead_endpoint_trips_the_circuit_breaker(synthetic, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    url = f"http://127.0.0.1:{dead_port()}/v1"
    out = tmp_path / "run"
    assert main(["run", "--system", program_writer(synthetic, url), "--tasks", "synthetic_small", "--limit", "30",
                 "--include-path", str(synthetic), "--output-path", str(out), "--skip-preflight",
                 "--max-consecutive-failures", "3"]) == 3
    summary = results(out)
    stopped = [reason for reason in summary["incomplete"] if reason.startswith("stopped early")]
    assert stopped and "remote calls failed in a row" in stopped[0] and url in stopped[0]
    assert "connection failed" in stopped[0]
    assert len(records(out, "synthetic_small")) < 30 and not summary["complete"]


def test_failing_records_in_a_row_trip_the_circuit_breaker(synthetic, tmp_path, server):
    server.default = Reply(500)
    out = tmp_path / "run"
    assert main(["run", "--system", program_writer(synthetic, server.url, max_concurrency=1),
                 "--tasks", "synthetic_small", "--limit", "30", "--include-path", str(synthetic),
                 "--output-path", str(out), "--max-consecutive-failures", "4",
                 "--system-args", "generation_batch=1"]) == 3
    done = records(out, "synthetic_small")
    assert 1 <= len(done) < 30 and all(r["status"] == "api_error" for r in done)
    assert all(r["scores"] == {"strict": None, "compat": None} for r in done)
    reason = " ".join(results(out)["incomplete"])
    assert "HTTP 500" in reason and server.url in reason


def test_resume_redoes_infrastructure_failures_and_keeps_model_outcomes(synthetic, tmp_path, server):
    failing = {"on": True}
    seen = []

    def respond(body):
        question = body["messages"][-1]["content"]
        seen.append(question)
        if failing["on"] and len(seen) % 3 == 0:
            return Reply(500)
        return Reply(content=PROGRAM)

    server.respond = respond
    out = tmp_path / "run"
    command = ["run", "--system", program_writer(synthetic, server.url), "--tasks", "synthetic_small", "--limit", "12",
               "--include-path", str(synthetic), "--output-path", str(out)]
    assert main(command) == 3
    first = {r["id"]: r for r in records(out, "synthetic_small")}
    failed = {i for i, r in first.items() if r["status"] == "api_error"}
    assert len(first) == 12 and 0 < len(failed) < 12
    failing["on"] = False
    asked = len(seen)
    assert main([*command, "--resume"]) == 0
    second = {r["id"]: r for r in records(out, "synthetic_small")}
    assert len(records(out, "synthetic_small")) == 12 and set(second) == set(first)
    assert len(seen) - asked == len(failed)  # only the failed samples were asked again
    for sample_id, record in second.items():
        assert record["status"] == "ok"
        if sample_id not in failed:
            assert {k: v for k, v in record.items() if k != "timings"} == \
                {k: v for k, v in first[sample_id].items() if k != "timings"}
    assert results(out)["complete"] is True


# --------------------------------------------------------------------------- one writer, resume checks


@pytest.fixture
def toy(tmp_path):
    include, data = write_toy_task(tmp_path, n=12)
    write_system(include, "oracle", "toy:SlowOracle", delay=0.0, fail_on="")
    out = tmp_path / "run"
    command = ["run", "--system", "oracle", "--tasks", "toy_counting", "--data-dir", str(data),
               "--include-path", str(include), "--output-path", str(out)]
    return include, data, out, command


def test_one_writer_per_run_directory(toy, capsys):
    include, data, out, command = toy
    path = out / "samples_toy_counting.jsonl"
    assert main([*command, "--limit", "4"]) == 0
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))  # as if killed after two samples
    with RunLock(out):
        assert main([*command, "--limit", "4", "--resume"]) == 2
        assert f"pid {os.getpid()}" in capsys.readouterr().err
        assert main(["score", str(out)]) == 2
        assert len(records(out, "toy_counting")) == 2
    assert main([*command, "--limit", "4", "--resume"]) == 0
    assert len(records(out, "toy_counting")) == 4


def test_a_killed_writer_leaves_no_lock_behind(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from harness.runlock import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)",
                               str(tmp_path)], stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == b"held"
    with pytest.raises(Exception, match="is being written by pid"):
        RunLock(tmp_path).acquire()
    holder.kill()
    holder.wait(timeout=30)
    RunLock(tmp_path).acquire().release()


def test_resume_refuses_a_changed_task_or_data_dir_naming_it(toy, tmp_path, capsys):
    include, data, out, command = toy
    assert main(command) == 0
    task_file = include / "toy_counting.yaml"
    original = task_file.read_text()
    task_file.write_text(original.replace("answer_type: integer", "answer_type: integer\n"
                                                                   "question_template: 'Count: {question}'"))
    assert main([*command, "--resume"]) == 2
    error = capsys.readouterr().err
    assert "changed since the run started: the configuration of task toy_counting (question_template)" in error
    task_file.write_text(original)
    moved = tmp_path / "data-copy"
    shutil.copytree(data, moved)
    elsewhere = [str(moved) if part == str(data) else part for part in command]
    assert main([*elsewhere, "--resume"]) == 2
    assert f"changed since the run started: the data dir ({data.resolve()} before, {moved.resolve()} now)" \
        in capsys.readouterr().err
    assert main([*command, "--resume"]) == 0


def test_duplicate_records_are_never_counted(toy):
    include, data, out, command = toy
    assert main(command) == 0
    path = out / "samples_toy_counting.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines + [lines[0], lines[5]]))  # two processes wrote one file
    summary = summarize_records(read_records(path), clustered=True).to_dict()
    assert summary["n"] == 12 and summary["duplicate_records_ignored"] == 2
    assert main(["score", str(out)]) == 0  # keeps each sample once
    assert results(out)["results"]["toy_counting"]["n"] == 12 and len(path.read_text().splitlines()) == 12
    path.write_text("".join(lines + [lines[3]]))
    assert main([*command, "--resume"]) == 0
    assert len(path.read_text().splitlines()) == 12 and results(out)["results"]["toy_counting"]["n"] == 12


def test_ctrl_c_stops_at_once_with_one_line_and_the_run_resumes(tmp_path):
    include, data = write_toy_task(tmp_path, n=40)
    pid_file = tmp_path / "pid"
    write_system(include, "slow", "toy:PidReporter", delay=0.1, fail_on="", pid_file=str(pid_file))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(REPO)])}
    out = tmp_path / "run"
    command = [sys.executable, "-m", "harness", "run", "--system", "slow", "--tasks", "toy_counting",
               "--data-dir", str(data), "--include-path", str(include), "--output-path", str(out)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples = out / "samples_toy_counting.jsonl"
    deadline = time.monotonic() + 60
    while not (samples.exists() and samples.read_bytes().count(b"\n") >= 5) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 130
    lines = [line for line in proc.stderr.read().decode().splitlines() if line.strip() and "%|" not in line]
    assert lines[-1].startswith("interrupted: ") and "--resume" in lines[-1]
    assert not any("Traceback" in line for line in lines)
    assert "interrupted" in " ".join(results(out)["incomplete"])
    assert subprocess.run([*command, "--resume"], env=env, capture_output=True, timeout=120).returncode == 0
    assert sorted(int(r["id"]) for r in records(out, "toy_counting")) == list(range(40))


# --------------------------------------------------------------------------- one-line user errors


def test_missing_requirements_are_listed_at_once_and_leave_no_directory(synthetic, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("UNSET_KEY_VARIABLE", raising=False)
    name = program_writer(synthetic, "https://chat.invalid/v1", api_key_env="UNSET_KEY_VARIABLE")
    out = tmp_path / "run"
    assert main(["run", "--system", name, "--tasks", "synthetic_small", "--include-path", str(synthetic),
                 "--output-path", str(out)]) == 2
    error = capsys.readouterr().err
    assert "2 things missing" in error and "$UNSET_KEY_VARIABLE" in error and "export UNSET_KEY_VARIABLE=" in error
    assert "endpoint https://chat.invalid/v1" in error and "Traceback" not in error
    assert not out.exists()


def test_an_unwritable_output_path_is_one_line(toy, tmp_path, capsys):
    include, data, out, command = toy
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main([*command[:-1], str(blocker / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: cannot write the run directory") and "\n" not in error


def test_non_utf8_files_are_one_line_naming_the_file(toy, tmp_path, capsys):
    include, data, out, command = toy
    bad = include / "broken.yaml"
    bad.write_bytes("system: caf\xe9\nkind: reference\n".encode("latin-1"))
    assert main(command) == 2
    error = capsys.readouterr().err.strip()
    assert str(bad) in error and "not UTF-8" in error and "\n" not in error
    bad.unlink()
    predictions = tmp_path / "p.jsonl"
    predictions.write_bytes(b'{"id": "0", "prediction": "caf\xe9"}\n')
    assert main(["run", "--system", "predictions", "--predictions", str(predictions), "--tasks", "toy_counting",
                 "--data-dir", str(data), "--include-path", str(include), "--output-path", str(tmp_path / "p")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the datasets library's progress line
    assert error.startswith(f"error: {predictions}: line 1 is not UTF-8")
    assert not (tmp_path / "p").exists()


def test_a_corrupt_cache_file_is_named(tmp_path, server, capsys, monkeypatch):
    include, data, predictions = open_task(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "judge.sqlite").write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(cache))
    assert judged_run(include, data, predictions, tmp_path / "run", server) == 2
    error = capsys.readouterr().err.strip()
    assert f"cache file {cache / 'judge.sqlite'}" in error and "delete it" in error and "\n" not in error
    assert not (tmp_path / "run").exists()


def test_show_into_a_closed_pipe_is_quiet(toy):
    include, data, out, command = toy
    assert main(command) == 0
    shell = f"{sys.executable} -m harness show {out} 3 | head -1"
    done = subprocess.run(shell, shell=True, capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout.decode().startswith("protocol:") and done.stderr == b""


def test_a_damaged_records_file_is_one_line_everywhere(toy, capsys):
    include, data, out, command = toy
    assert main(command) == 0
    path = out / "samples_toy_counting.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3] + ["[1, 2]\n"] + lines[3:]))  # JSON, but no record
    for args in (["score", str(out)], ["show", str(out), "5"], [*command, "--resume"]):
        assert main(args) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error == f"error: {path}: line 4 is not a record (an object with an 'id')", args


def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path):
    include, data = write_toy_task(tmp_path, n=30)
    write_system(include, "slow", "toy:PidReporter", delay=0.1, fail_on="", pid_file=str(tmp_path / "pid"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(REPO)])}
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "--system", "slow", "--tasks", "toy_counting",
                             "--data-dir", str(data), "--include-path", str(include), "--output-path", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples = out / "samples_toy_counting.jsonl"
    deadline = time.monotonic() + 60
    while not (samples.exists() and samples.read_bytes().count(b"\n") >= 3) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.terminate()
    assert proc.wait(timeout=20) == 130
    assert "interrupted: " in proc.stderr.read().decode()
    assert results(out)["complete"] is False


def test_a_failed_start_in_an_existing_folder_leaves_it_as_it_was(toy, tmp_path, capsys):
    include, data, out, command = toy
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "999", "prediction": 1}\n')  # an id no sample has: refused before any record
    assert main(["run", "--system", "predictions", "--predictions", str(bad), "--tasks", "toy_counting",
                 "--data-dir", str(data), "--include-path", str(include), "--output-path", str(out)]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(command) == 0  # the corrected command runs in the same folder
