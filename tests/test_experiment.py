"""One experiment file per run: `run --config FILE`, the saved experiment.yaml, overrides."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

import harness.cli.evaluation as evaluation
import harness.runner as runner
from harness.cli import build_parser, main
from harness.cli.experiment import EXPERIMENT_FILE, resolve
from harness.records import read_records


def cli(*args) -> int:
    return main([str(a) for a in args])


def run_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def comparable(run_dir: Path) -> dict[str, dict]:
    """Records without what measures time (the only things a rerun may change)."""
    out = {}
    for record in read_records(run_dir / "samples_synthetic.jsonl"):
        record.pop("timings")
        for call in record.get("tool_calls") or []:
            call.pop("seconds", None)
        out[record["id"]] = record
    return out


def test_rerun_from_the_saved_file_gives_identical_records(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli("run", "--system", "reference", "--tasks", "synthetic", "--limit", "8", "--seed", "11",
               "--output-path", first) == 0
    saved = yaml.safe_load((first / EXPERIMENT_FILE).read_text())
    assert saved["system"] == "reference" and saved["tasks"] == "synthetic" and saved["limit"] == 8
    assert saved["seed"] == 11 and "output_path" not in saved and "resume" not in saved
    assert saved["recorded"]["overrides"] == {} and saved["recorded"]["config"] is None

    assert cli("run", "--config", first / EXPERIMENT_FILE, "--output-path", second) == 0
    assert comparable(first) == comparable(second)
    assert len(comparable(first)) == 8
    again = yaml.safe_load((second / EXPERIMENT_FILE).read_text())
    assert {k: v for k, v in again.items() if k != "recorded"} == {k: v for k, v in saved.items() if k != "recorded"}
    assert again["recorded"]["config"] == str(first / EXPERIMENT_FILE)
    run = json.loads((second / "run.json").read_text())
    assert run["seed"] == 11 and run["limit"] == 8


def test_command_line_overrides_the_file_and_is_recorded(tmp_path):
    config = tmp_path / "experiment.yaml"
    config.write_text("system: reference\ntasks: all\nlimit: 3\nseed: 5\nsystem-args: concurrency=1\n")
    tmp_tasks = "synthetic"
    assert cli("run", "--config", config, "--tasks", tmp_tasks, "--seed", "9", "--output-path", tmp_path / "r") == 0
    saved = yaml.safe_load((tmp_path / "r" / EXPERIMENT_FILE).read_text())
    assert saved["seed"] == 9 and saved["tasks"] == "synthetic" and saved["limit"] == 3
    assert saved["system_args"] == "concurrency=1"
    assert saved["recorded"]["overrides"] == {"seed": {"file": 5, "command_line": 9},
                                             "tasks": {"file": "all", "command_line": "synthetic"}}
    assert json.loads((tmp_path / "r" / "run.json").read_text())["seed"] == 9


def test_all_is_saved_as_the_tasks_it_selected(tmp_path, monkeypatch):
    captured = {}

    def fake_evaluate(options, tasks, systems):
        captured["tasks"] = options.tasks
        captured["files"] = options.extra_files  # written by the runner once the run directory is claimed
        return {"results": {}, "higher_is_better": {}, "errors": {}, "complete": True}

    monkeypatch.setattr(runner, "evaluate", fake_evaluate)  # the command imports it when it runs
    assert cli("run", "--system", "reference", "--tasks", "all", "--output-path", tmp_path / "r") == 0
    saved = yaml.safe_load(captured["files"][EXPERIMENT_FILE])
    assert saved["tasks"].split(",") == captured["tasks"] and len(captured["tasks"]) == 8


def sample_value(action: argparse.Action) -> tuple[object, list[str]]:
    """A value for an option as the file writes it, and the command-line tokens that give it."""
    flag = max(action.option_strings, key=len)
    if action.nargs == 0:
        return True, [flag]
    if action.choices:
        choice = list(action.choices)[-1]
        return choice, [flag, choice]
    if isinstance(action, argparse._AppendAction):
        return ["one", "two"], [flag, "one", flag, "two"]
    if action.type in (None, Path):
        return "some-value", [flag, "some-value"]
    for token in ("7", "3.5", "some-value"):  # the first text the option's own type accepts
        try:
            return action.type(token), [flag, token]
        except (argparse.ArgumentTypeError, TypeError, ValueError):
            continue
    raise AssertionError(f"no sample value for {flag}")


def test_every_run_option_is_a_key_of_the_experiment_file(tmp_path):
    """The property that lets options added to `run` later work in the file with no code:
    for each option, the file and the flag give the same resolved settings."""
    parser = build_parser()
    options = [a for a in run_parser(parser)._actions if a.option_strings and a.dest not in ("help", "config")]
    expected = {"system", "tasks", "limit", "seed", "data_dir", "judge", "tools", "system_args"}
    assert expected <= {a.dest for a in options}
    base = {"system": "reference", "tasks": "synthetic"}
    for action in options:
        value, tokens = sample_value(action)
        settings = {**base, action.dest: value}
        config = tmp_path / f"{action.dest}.yaml"
        config.write_text(yaml.safe_dump(settings))
        from_file, _ = resolve(parser.parse_args(["run", "--config", str(config)]))
        argv = ["run", *tokens] + [t for key, v in base.items() if key != action.dest for t in (f"--{key}", v)]
        from_flags, _ = resolve(parser.parse_args(argv))
        settings_of = lambda args: {k: v for k, v in vars(args).items() if k != "config"}  # noqa: E731
        assert settings_of(from_file) == settings_of(from_flags), action.dest
        assert getattr(from_file, action.dest) == (Path(value) if action.type is Path else value), action.dest


def test_an_option_added_to_run_later_works_in_the_file(tmp_path, monkeypatch):
    """Options added to `run` later need nothing here: two made-up ones stand for them."""
    original = evaluation.add_judge_args

    def with_more_options(p):
        original(p)
        p.add_argument("--mode-added-later", choices=["fast", "slow"], default="slow")
        p.add_argument("--number-added-later", type=float, default=60.0)

    monkeypatch.setattr(evaluation, "add_judge_args", with_more_options)
    parser = build_parser()
    config = tmp_path / "e.yaml"
    config.write_text("system: reference\ntasks: synthetic\nmode_added_later: fast\nnumber_added_later: 12.5\n")
    args, experiment = resolve(parser.parse_args(["run", "--config", str(config)]))
    assert args.mode_added_later == "fast" and args.number_added_later == 12.5
    args, experiment = resolve(parser.parse_args(["run", "--config", str(config), "--mode-added-later", "slow"]))
    assert args.mode_added_later == "slow"
    assert experiment.overrides == {"mode_added_later": {"file": "fast", "command_line": "slow"}}
    config.write_text("system: reference\ntasks: synthetic\nmode_added_later: fsat\n")
    with pytest.raises(ValueError, match=r"key 'mode_added_later': invalid choice: 'fsat'"):
        resolve(parser.parse_args(["run", "--config", str(config)]))


def test_the_protocol_is_a_key_of_the_file(tmp_path):
    config = tmp_path / "e.yaml"
    config.write_text("system: reference\ntasks: synthetic\nprotocol: paper\n")
    args, _ = resolve(build_parser().parse_args(["run", "--config", str(config)]))
    assert args.protocol == "paper"
    config.write_text("system: reference\ntasks: synthetic\nprotocol: papper\n")
    with pytest.raises(ValueError, match=r"key 'protocol': invalid choice: 'papper'"):
        resolve(build_parser().parse_args(["run", "--config", str(config)]))


@pytest.mark.parametrize("content, message", [
    ("system: reference\ntask: synthetic\n", "unknown key 'task' (did you mean 'tasks'?)"),
    ("system: reference\ntasks: synthetic\nlimit: -2\n", "key 'limit': must not be negative"),
    ("system: reference\ntasks: synthetic\nseed: many\n", "key 'seed': invalid int value: 'many'"),
    ("system: reference\ntasks: synthetic\nlog_samples: yes please\n", "key 'log_samples' is a switch"),
    ("system: reference\ntasks: synthetic\nseed: [1, 2]\n", "key 'seed' takes one value, got a list"),
    ("tasks: synthetic\n", "run needs --system (on the command line or in "),
    ("- system\n", "an experiment file is a mapping"),
    ("system: [reference\n", "not valid YAML"),
])
def test_bad_experiment_files_are_one_line_errors(tmp_path, capsys, content, message):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    assert cli("run", "--config", config, "--output-path", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert message in err and str(config) in err or message.startswith("run needs") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_run_help_still_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli("run", "--help")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config FILE" in out and "(default: OPENAI_API_KEY)" in out


def test_missing_file_and_missing_required_options(tmp_path, capsys):
    assert cli("run", "--config", tmp_path / "nope.yaml") == 2
    assert "cannot read experiment file" in capsys.readouterr().err
    assert cli("run", "--tasks", "synthetic") == 2
    assert "run needs --system (on the command line or in an experiment file (--config))" in capsys.readouterr().err


def test_an_existing_run_keeps_its_experiment_file(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli("run", "--system", "reference", "--tasks", "synthetic", "--limit", "2", "--output-path", out) == 0
    before = (out / EXPERIMENT_FILE).read_text()
    assert cli("run", "--system", "reference", "--tasks", "synthetic", "--limit", "3", "--output-path", out) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / EXPERIMENT_FILE).read_text() == before
