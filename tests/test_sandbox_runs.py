"""A run survives any one program: hostile programs among benign ones (at concurrency 3) leave every
benign record exactly as a clean run writes it, the run finishes and writes results.json; and the
isolation obtained is recorded in run.json and results.json and shown by `show` and the report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.backends.scripted import script_entry
from harness.cli import main
from harness.systems import SystemRegistry
from sandbox_support import CHANNEL, NAME_ITSELF, wait_until_gone
from toy import SMALL_SYNTHETIC_TASK

LIMIT = 16
# One program of each class of attack; each replaces a sample's reference program.
HOSTILE = {
    "reach": "import os, signal, resource\nfor pid in TARGETS:\n    for act in (lambda: os.kill(pid, signal.SIGKILL),\n"
             "                lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE, (3, 3))):\n"
             "        try:\n            act()\n        except Exception:\n            pass\nfinal_answer = 'yes'",
    "forged": CHANNEL + "send(b'{\"op\":\"result\",\"status\":\"ok\",\"answer\":' + b'[' * 100000 + b']' * 100000 + b'}')",
    "trickle": CHANNEL + "import time\nraw(b'\\x00\\x00\\x01\\x00')\nwhile True:\n    raw(b' ')\n    time.sleep(0.3)",
    "workspace": "import os\nfor i in range(3000):\n    try:\n        os.mkdir('d')\n        os.chdir('d')\n"
                 "    except OSError:\n        break\nos.chdir('/')\nf = open(os.environ['HOME'] + '/big', 'wb')\n"
                 "while True:\n    f.write(b'0' * 65536)",
    "lingering": "NAME = b'run-linger'\n" + NAME_ITSELF + CHANNEL
                 + "send(b'{\"op\":\"result\",\"status\":\"ok\",\"answer\":\"yes\"}')\nimport time\ntime.sleep(60)",
    "bombs": "import os\ntry:\n    os.fork()\nexcept OSError:\n    pass\nblocks = []\nwhile True:\n"
             "    blocks.append(bytearray(64 << 20))",
    "tool flood": "while True:\n    try:\n        gd_detect(image, 'x' * 5000)\n    except ToolError:\n        pass",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A clean run of the reference programs and the same run with hostile programs mixed in."""
    root = tmp_path_factory.mktemp("runs")
    include = root / "include"
    include.mkdir()
    (include / "synthetic_small.yaml").write_text(SMALL_SYNTHETIC_TASK)
    from harness.tasks import TaskRegistry

    samples = list(TaskRegistry([include]).task("synthetic_small").samples(limit=LIMIT))
    writer = SystemRegistry().build("llm-tools-qwen3-8b", seed=1234, protocol="harness")
    hostile_ids = {}
    targets = [os.getpid()]
    out = {}
    for name in ("clean", "hostile"):
        replies = root / f"{name}.jsonl"
        with replies.open("w") as f:
            for index, sample in enumerate(samples):
                program = sample.meta["reference_program"]
                if name == "hostile" and index % 2 == 1 and index // 2 < len(HOSTILE):
                    kind = list(HOSTILE)[index // 2]
                    program = HOSTILE[kind].replace("TARGETS", repr(targets))
                    hostile_ids[sample.id] = kind
                reply = f"<plan>Use the tools.</plan>\n<answer>\n{program}\n</answer>"
                f.write(json.dumps(script_entry(writer.messages_for(sample), reply)) + "\n")
        (include / f"writer-{name}.yaml").write_text(json.dumps({"system": f"writer-{name}", "kind": "llm_program",
            "params": {"llm": {"backend": "scripted", "path": str(replies)}, "tools": "oracle", "concurrency": 3,
                       "sampling": writer.params["sampling"],
                       "limits": {"wall_seconds": 3, "cpu_seconds": 2, "memory_mb": 512}}}))
        out[name] = root / name
        assert main(["run", "--system", f"writer-{name}", "--tasks", "synthetic_small", "--limit", str(LIMIT),
                     "--include-path", str(include), "--output-path", str(out[name])]) == 0
    assert len(hostile_ids) == len(HOSTILE)
    return out, hostile_ids


def records(run_dir: Path) -> dict[str, dict]:
    lines = (run_dir / "samples_synthetic_small.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def comparable(record: dict) -> dict:
    """A record without what differs between two identical runs (timings)."""
    kept = {k: v for k, v in record.items() if k not in ("timings", "system", "raw")}
    kept["tool_calls"] = [{k: v for k, v in call.items() if k != "seconds"} for call in record["tool_calls"] or []]
    return kept


def test_benign_records_are_exactly_those_of_a_clean_run(runs):
    out, hostile_ids = runs
    clean, hostile = out["clean"], out["hostile"]
    clean_records, hostile_records = records(clean), records(hostile)
    assert clean_records.keys() == hostile_records.keys() and len(clean_records) == LIMIT
    benign = [i for i in clean_records if i not in hostile_ids]
    assert benign and all(clean_records[i]["status"] == "ok" for i in benign)
    for sample_id in benign:
        assert comparable(hostile_records[sample_id]) == comparable(clean_records[sample_id]), sample_id
    for sample_id, kind in hostile_ids.items():
        record = hostile_records[sample_id]
        assert record["status"] in ("ok", "exception", "timeout", "memory", "killed", "tool_error"), kind
    assert hostile_records[next(i for i, k in hostile_ids.items() if k == "forged")]["status"] == "killed"
    assert hostile_records[next(i for i, k in hostile_ids.items() if k == "trickle")]["status"] == "timeout"
    assert wait_until_gone(b"run-linger") == []
    results = json.loads((hostile / "results.json").read_text())
    assert results["results"]["synthetic_small"]["n"] == LIMIT


def test_isolation_is_recorded_and_shown(runs, capsys):
    clean = runs[0]["clean"]
    run = json.loads((clean / "run.json").read_text())
    results = json.loads((clean / "results.json").read_text())
    layers = run["system_config"]["isolation"]
    assert layers and "seccomp" in layers and run["system_config"]["isolation_missing"] == {}
    assert results["config"]["system_config"]["isolation"] == layers
    sample_id = next(iter(records(clean)))
    assert main(["show", str(clean), sample_id]) == 0
    assert f"isolation:   {', '.join(layers)}" in capsys.readouterr().out
    report = clean / "report.html"
    assert main(["report", str(clean), "--out", str(report)]) == 0
    page = report.read_text()
    assert "Isolation" in page and layers[0] in page
