"""The checkpoint regression check: paired tests, decisions, refusals, the CLI and the CI example."""

from __future__ import annotations

import itertools
import json
import math
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import binomtest

from harness.cli import build_parser, main
from harness.compare import CheckOptions, CheckRefused, check_runs
from harness.records import RecordWriter
from harness.runner import summarize_run
from harness.stats import EXACT_MAX_DISCORDANT, clustered_mcnemar, holm, mcnemar, paired_bootstrap

sys.path.insert(0, str(Path(__file__).parent))
from toy import write_toy_task  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "checkpoint-gate.yml"


# --------------------------------------------------------------------------- run directories in the real layout


def write_run(run_dir: Path, tasks: dict[str, list[float | None]], clusters: dict[str, list[str]] | None = None,
              version: int = 1, fingerprint: str = "cfg", gold: str = "yes", ids: dict[str, list[str]] | None = None,
              compat: dict[str, list[float]] | None = None, protocol: str = "harness") -> Path:
    """A finished run: run.json, samples_<task>.jsonl and results.json, as the runner writes them."""
    clusters, ids, compat = clusters or {}, ids or {}, compat or {}
    run = {"system": "predictions", "tasks": list(tasks), "limit": None, "seed": 1234, "protocol": protocol,
           "task_configs": {t: {"version": version, "metric": "accuracy",
                                "fields": {"cluster": "image" if t in clusters else None}} for t in tasks},
           "task_meta": {t: {"size": len(s), "revision": "local", "fingerprint": fingerprint}
                         for t, s in tasks.items()},
           "errors": {}, "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:01:00+00:00"}
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps(run))
    for task, scores in tasks.items():
        task_ids = ids.get(task) or [str(i) for i in range(len(scores))]
        with RecordWriter(run_dir / f"samples_{task}.jsonl") as writer:
            for i, score in enumerate(scores):
                writer.append({"id": task_ids[i], "task": task, "question": f"question {task_ids[i]}?", "gold": gold,
                               "cluster": clusters[task][i] if task in clusters else None, "status": "ok",
                               "parse": "ok", "scores": {"strict": score,
                                                         "compat": compat[task][i] if task in compat else score}})
    summarize_run(run_dir, run)
    return run_dir


def binary_pair(n: int, lost: int, gained: int, base_right: float = 0.6) -> tuple[list[float], list[float]]:
    """Baseline and candidate 0/1 scores on n samples with the given discordant counts."""
    right = int(n * base_right)
    assert lost <= right and gained <= n - right
    base = [1.0] * right + [0.0] * (n - right)
    cand = list(base)
    for i in range(lost):
        cand[i] = 0.0
    for i in range(gained):
        cand[right + i] = 1.0
    return base, cand


def check(*args) -> int:
    return main(["check", *map(str, args)])


# --------------------------------------------------------------------------- the statistics


def test_mcnemar_matches_scipy_binomtest():
    for b, c in itertools.product([0, 1, 3, 8, 20, 45], [0, 2, 7, 30, 55]):
        expected = binomtest(b, b + c, 0.5, alternative="greater").pvalue if b + c else 1.0
        assert mcnemar(b, c).p_value == pytest.approx(expected, rel=1e-12), (b, c)
        assert mcnemar(b, c).method == "McNemar exact"


def test_mcnemar_normal_form_above_the_exact_limit_is_close_to_exact():
    for b, c in [(70, 50), (200, 160), (90, 90), (300, 240)]:
        assert b + c > EXACT_MAX_DISCORDANT
        test = mcnemar(b, c)
        exact = binomtest(b, b + c, 0.5, alternative="greater").pvalue
        assert test.method == "McNemar normal"
        assert test.p_value == pytest.approx(exact, rel=0.05, abs=1e-4)


def test_clustered_mcnemar_is_mcnemar_for_clusters_of_one():
    for b, c in [(0, 0), (5, 1), (30, 12), (80, 60)]:
        plain, clustered = mcnemar(b, c), clustered_mcnemar([1] * b + [-1] * c + [0] * 7)
        assert clustered.p_value == pytest.approx(plain.p_value, rel=1e-12)
        assert clustered.z == pytest.approx(plain.z)


def test_clustered_mcnemar_exact_is_the_sign_flip_distribution():
    diffs = [3, -1, 2, 2, -4, 1, 5]
    observed = sum(diffs)
    flips = [sum(s * d for s, d in zip(signs, diffs)) for signs in itertools.product([1, -1], repeat=len(diffs))]
    expected = sum(f >= observed for f in flips) / len(flips)
    assert clustered_mcnemar(diffs).p_value == pytest.approx(expected, rel=1e-12)


def test_clustered_mcnemar_normal_form_for_many_clusters():
    rng = np.random.default_rng(3)
    diffs = rng.integers(-3, 5, size=400)
    diffs = diffs[diffs != 0]
    test = clustered_mcnemar(diffs)
    z = (diffs.sum() - 1) / np.sqrt((diffs ** 2).sum())
    assert test.method == "clustered McNemar normal"
    assert test.p_value == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2, 0.6]) == pytest.approx([0.4, 0.6])
    assert holm([]) == []


def test_paired_bootstrap_identical_runs_no_drop_and_seeded():
    scores = np.random.default_rng(0).random(300)
    result = paired_bootstrap(scores, scores, n_resamples=2000, seed=5)
    assert result.p_value == 1.0 and result.drop == 0.0 and result.ci95 == (0.0, 0.0)
    cand = scores - 0.01 + np.random.default_rng(1).normal(0, 0.2, 300)
    assert paired_bootstrap(scores, cand, seed=5) == paired_bootstrap(scores, cand, seed=5)
    assert paired_bootstrap(scores, cand, seed=5).ci95 != paired_bootstrap(scores, cand, seed=6).ci95


def test_paired_bootstrap_is_vectorised_and_fast():
    rng = np.random.default_rng(2)
    base = rng.random(800)
    start = time.perf_counter()
    result = paired_bootstrap(base, base - 0.05, clusters=[f"img{i // 3}" for i in range(800)])
    assert time.perf_counter() - start < 1.0
    assert result.method == "cluster bootstrap"
    assert result.drop == pytest.approx(0.05)
    assert result.p_value == pytest.approx(1 / 10_001)


# --------------------------------------------------------------------------- decisions through the CLI


def test_identical_runs_pass_with_p_one(tmp_path, capsys):
    base, _ = binary_pair(200, 0, 0)
    write_run(tmp_path / "a", {"vsr": base})
    write_run(tmp_path / "b", {"vsr": base})
    out = tmp_path / "check.json"
    assert check("--baseline", tmp_path / "a", "--candidate", tmp_path / "b", "--output-path", out) == 0
    report = json.loads(out.read_text())
    assert report["passed"] is True
    task = report["tasks"][0]
    assert task["p_value"] == 1.0 and task["p_adjusted"] == 1.0
    assert task["reason"] == "no change" and task["ci95"] == [0.0, 0.0] and task["discordant"] == [0, 0]
    assert "PASS" in capsys.readouterr().out


def test_real_drop_fails_with_mcnemar_p(tmp_path, capsys):
    base, cand = binary_pair(200, lost=30, gained=0)
    write_run(tmp_path / "a", {"vsr": base})
    write_run(tmp_path / "b", {"vsr": cand})
    out = tmp_path / "check.json"
    assert check("--baseline", tmp_path / "a", "--candidate", tmp_path / "b", "--output-path", out) == 1
    task = json.loads(out.read_text())["tasks"][0]
    assert task["decision"] == "fail" and task["test"] == "McNemar exact"
    assert task["p_value"] == pytest.approx(binomtest(30, 30, 0.5, alternative="greater").pvalue)
    assert task["delta"] == pytest.approx(-15.0) and task["baseline"] == pytest.approx(60.0)
    assert task["ci95"][1] < 0
    assert task["reason"].startswith("drop 15.0 pts > 1.0 and significant (p=")
    printed = capsys.readouterr().out
    assert "FAIL: 1 task(s) regressed: vsr" in printed and "drop 15.0 pts > 1.0 and significant" in printed


def test_noise_level_drop_passes(tmp_path):
    base, cand = binary_pair(200, lost=6, gained=3)
    write_run(tmp_path / "a", {"vsr": base})
    write_run(tmp_path / "b", {"vsr": cand})
    report = check_runs(tmp_path / "a", tmp_path / "b")
    (task,) = report.comparisons
    assert task.decision == "pass" and not report.failed
    assert task.p_value == pytest.approx(binomtest(6, 9, 0.5, alternative="greater").pvalue)
    assert task.reason == f"drop 1.5 pts not significant (p={task.p_value:.2g})"


def test_significant_drop_within_tolerance_passes(tmp_path):
    base, cand = binary_pair(5000, lost=40, gained=0)
    write_run(tmp_path / "a", {"vsr": base})
    write_run(tmp_path / "b", {"vsr": cand})
    assert check("--baseline", tmp_path / "a", "--candidate", tmp_path / "b") == 0
    (task,) = check_runs(tmp_path / "a", tmp_path / "b").comparisons
    assert task.p_value < 1e-10
    assert task.reason == "drop 0.8 pts within tolerance 1.0"
    # The same drop fails once the tolerance is tighter.
    assert check("--baseline", tmp_path / "a", "--candidate", tmp_path / "b", "--max-drop", "0.5") == 1


def test_improvement_passes(tmp_path):
    base, cand = binary_pair(200, lost=0, gained=40)
    write_run(tmp_path / "a", {"vsr": base})
    write_run(tmp_path / "b", {"vsr": cand})
    (task,) = check_runs(tmp_path / "a", tmp_path / "b").comparisons
    assert task.decision == "pass" and task.reason == "improved" and task.delta == pytest.approx(20.0)


def test_clustered_questions_need_the_clustered_test(tmp_path):
    """5 questions per image that flip together: 4 images lost, 1 gained."""
    images = [f"img{i // 5}" for i in range(200)]
    base = [1.0 if i < 120 else 0.0 for i in range(200)]
    cand = list(base)
    for i in range(20):  # every question of images 0-3
        cand[i] = 0.0
    for i in range(120, 125):  # every question of image 24
        cand[i] = 1.0
    assert mcnemar(20, 5).p_value < 0.01  # counted as 25 independent flips it looks like a regression

    write_run(tmp_path / "a", {"robospatial": base}, clusters={"robospatial": images})
    write_run(tmp_path / "b", {"robospatial": cand}, clusters={"robospatial": images})
    (task,) = check_runs(tmp_path / "a", tmp_path / "b").comparisons
    assert task.test == "clustered McNemar exact" and task.n_clusters == 40
    assert task.p_value == pytest.approx(6 / 32)  # at least 4 of 5 image signs positive
    assert task.decision == "pass" and "not significant" in task.reason
    assert check("--baseline", tmp_path / "a", "--candidate", tmp_path / "b") == 0

    write_run(tmp_path / "c", {"robospatial": base})
    write_run(tmp_path / "d", {"robospatial": cand})
    assert check("--baseline", tmp_path / "c", "--candidate", tmp_path / "d") == 1


def test_float_scores_use_a_seeded_cluster_bootstrap(tmp_path):
    rng = np.random.default_rng(4)
    base = rng.random(300).round(3)
    cand = np.clip(base - 0.10 + rng.normal(0, 0.05, 300), 0, 1).round(3)
    images = [f"img{i // 3}" for i in range(300)]
    write_run(tmp_path / "a", {"omni3d_bench": base.tolist()}, clusters={"omni3d_bench": images})
    write_run(tmp_path / "b", {"omni3d_bench": cand.tolist()}, clusters={"omni3d_bench": images})
    out1, out2 = tmp_path / "one.json", tmp_path / "two.json"
    assert check("--baseline", tmp_path / "a", "--candidate", tmp_path / "b", "--output-path", out1) == 1
    assert check("--baseline", tmp_path / "a", "--candidate", tmp_path / "b", "--output-path", out2) == 1
    one, two = json.loads(out1.read_text())["tasks"][0], json.loads(out2.read_text())["tasks"][0]
    assert one["test"] == "cluster bootstrap" and one["discordant"] is None
    assert one == two  # same seed, same interval
    assert one["ci95"][0] < one["delta"] < one["ci95"][1] < 0
    assert one["delta"] == pytest.approx(100 * (cand.mean() - base.mean()))
    out3 = tmp_path / "three.json"
    check("--baseline", tmp_path / "a", "--candidate", tmp_path / "b", "--seed", 7, "--output-path", out3)
    assert json.loads(out3.read_text())["tasks"][0]["ci95"] != one["ci95"]

    write_run(tmp_path / "c", {"omni3d_bench": base.tolist()})
    write_run(tmp_path / "d", {"omni3d_bench": base.tolist()})
    (task,) = check_runs(tmp_path / "c", tmp_path / "d").comparisons
    assert task.test == "paired bootstrap" and task.p_value == 1.0 and task.decision == "pass"


def test_holm_across_tasks(tmp_path):
    base, cand = binary_pair(200, lost=8, gained=1)  # one-sided p = 10/512 = 0.0195, drop 3.5 pts
    same, _ = binary_pair(200, 0, 0)
    write_run(tmp_path / "a", {"vsr": base, "blink": same, "tallyqa": same})
    write_run(tmp_path / "b", {"vsr": cand, "blink": same, "tallyqa": same})
    plain = check_runs(tmp_path / "a", tmp_path / "b", CheckOptions(correction="none"))
    assert [c.task for c in plain.failed] == ["vsr"]
    assert plain.comparisons[0].p_adjusted == pytest.approx(10 / 512)
    adjusted = check_runs(tmp_path / "a", tmp_path / "b")
    assert not adjusted.failed
    assert adjusted.comparisons[0].p_adjusted == pytest.approx(3 * 10 / 512)
    assert "not significant (p=0.059)" in adjusted.comparisons[0].reason
    assert check("--baseline", tmp_path / "a", "--candidate", tmp_path / "b") == 0
    assert check("--baseline", tmp_path / "a", "--candidate", tmp_path / "b", "--correction", "none") == 1
    # --tasks restricts the family: vsr alone is not adjusted.
    assert check("--baseline", tmp_path / "a", "--candidate", tmp_path / "b", "--tasks", "vsr") == 1


def test_scoring_compat_and_unscored_samples_are_counted(tmp_path, capsys):
    base, cand = binary_pair(100, lost=0, gained=0)
    base_scores = [None if i < 4 else s for i, s in enumerate(base)]
    cand_scores = [None if i == 10 else s for i, s in enumerate(cand)]
    compat_cand = [0.0 if i < 40 else s for i, s in enumerate(cand)]
    write_run(tmp_path / "a", {"vsr": base_scores}, compat={"vsr": [s or 0.0 for s in base]})
    write_run(tmp_path / "b", {"vsr": cand_scores}, compat={"vsr": compat_cand})
    (strict,) = check_runs(tmp_path / "a", tmp_path / "b").comparisons
    assert strict.n == 95 and strict.n_unscored == 5
    assert check("--baseline", tmp_path / "a", "--candidate", tmp_path / "b") == 0
    assert "vsr: 5 shared samples without a strict score in one run or both were left out" in capsys.readouterr().out
    assert check("--baseline", tmp_path / "a", "--candidate", tmp_path / "b", "--scoring", "compat") == 1


def test_a_task_in_one_run_only_is_listed(tmp_path, capsys):
    base, _ = binary_pair(50, 0, 0)
    write_run(tmp_path / "a", {"vsr": base, "blink": base})
    write_run(tmp_path / "b", {"vsr": base, "tallyqa": base})
    out = tmp_path / "check.json"
    assert check("--baseline", tmp_path / "a", "--candidate", tmp_path / "b", "--output-path", out) == 0
    assert json.loads(out.read_text())["not_compared"] == {"blink": "only in the baseline",
                                                           "tallyqa": "only in the candidate"}
    assert "blink: not compared, only in the baseline" in capsys.readouterr().out


def test_end_to_end_with_real_runs_of_the_toy_task(tmp_path):
    include, data = write_toy_task(tmp_path, n=30)
    golds = [i % 5 for i in range(30)]

    def run(name: str, answers: list[int]) -> Path:
        preds = tmp_path / f"{name}.jsonl"
        preds.write_text("".join(json.dumps({"id": str(i), "prediction": a}) + "\n" for i, a in enumerate(answers)))
        out = tmp_path / name
        assert main(["run", "--system", "predictions", "--predictions", str(preds), "--tasks", "toy_counting",
                     "--data-dir", str(data), "--include-path", str(include), "--output-path", str(out)]) == 0
        return out

    baseline = run("base", golds)
    candidate = run("cand", [g + 1 for g in golds])  # wrong everywhere: every image's 3 questions lost
    same = run("same", golds)
    assert check("--baseline", baseline, "--candidate", same) == 0
    report = check_runs(baseline, candidate)
    (task,) = report.comparisons
    assert task.test == "clustered McNemar exact" and task.n_clusters == 10
    assert task.p_value == pytest.approx(1 / 2 ** 10)
    assert check("--baseline", baseline, "--candidate", candidate) == 1


# --------------------------------------------------------------------------- refusals


def refused(tmp_path, capsys, *extra) -> str:
    out = tmp_path / "refused.json"
    assert check("--baseline", tmp_path / "a", "--candidate", tmp_path / "b", "--output-path", out, *extra) == 2
    assert json.loads(out.read_text())["passed"] is False
    return capsys.readouterr().err


def test_refuses_an_unfinished_run(tmp_path, capsys):
    base, _ = binary_pair(20, 0, 0)
    write_run(tmp_path / "a", {"vsr": base})
    write_run(tmp_path / "b", {"vsr": base})
    (tmp_path / "b" / "results.json").unlink()
    err = refused(tmp_path, capsys)
    assert "has no results.json: the run is still going, or it stopped before the end" in err

    results = tmp_path / "b" / "results.json"
    summarize_run(tmp_path / "b", json.loads((tmp_path / "b" / "run.json").read_text()))
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    run["resumed"] = ["2026-02-01T00:00:00+00:00"]
    (tmp_path / "b" / "run.json").write_text(json.dumps(run))
    assert results.is_file()
    assert "was resumed at 2026-02-01T00:00:00+00:00 and has not finished since" in refused(tmp_path, capsys)


def test_refuses_an_incomplete_run_unless_allowed(tmp_path, capsys):
    base, cand = binary_pair(20, 0, 0)
    write_run(tmp_path / "a", {"vsr": base})
    write_run(tmp_path / "b", {"vsr": cand})
    path = tmp_path / "b" / "samples_vsr.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[3].update(status="api_error", scores={"strict": None, "compat": None}, parse="infrastructure")
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    summarize_run(tmp_path / "b", json.loads((tmp_path / "b" / "run.json").read_text()))
    err = refused(tmp_path, capsys)
    assert "is incomplete (vsr: 1 infrastructure failures (api_error: 1))" in err and "--allow-incomplete" in err
    assert check("--baseline", tmp_path / "a", "--candidate", tmp_path / "b", "--allow-incomplete") == 0
    assert "1 shared samples without a strict score in one run or both were left out" in capsys.readouterr().out


def test_refuses_a_folder_that_is_no_run(tmp_path, capsys):
    base, _ = binary_pair(20, 0, 0)
    write_run(tmp_path / "a", {"vsr": base})
    (tmp_path / "b").mkdir()
    assert "is not a run directory" in refused(tmp_path, capsys)
    assert check("--baseline", tmp_path / "a", "--candidate", tmp_path / "missing") == 2
    assert "no such run directory" in capsys.readouterr().err


def test_refuses_different_task_versions_and_configs(tmp_path, capsys):
    base, _ = binary_pair(20, 0, 0)
    write_run(tmp_path / "a", {"vsr": base})
    write_run(tmp_path / "b", {"vsr": base}, version=2, fingerprint="other")
    err = refused(tmp_path, capsys)
    assert "vsr: task version 1 in the baseline, 2 in the candidate" in err
    assert "vsr: the task configuration differs (fingerprint cfg in the baseline, other in the candidate)" in err


def test_refuses_different_sample_sets_naming_ids(tmp_path, capsys):
    base, _ = binary_pair(20, 0, 0)
    write_run(tmp_path / "a", {"vsr": base})
    write_run(tmp_path / "b", {"vsr": base[:12] + [1.0]}, ids={"vsr": [str(i) for i in range(12)] + ["x9"]})
    err = refused(tmp_path, capsys)
    assert "vsr: the sample sets differ: 8 ids only in the baseline (12, 13, 14, 15, 16, ...), " \
           "1 only in the candidate (x9)" in err


def test_refuses_same_ids_with_other_gold(tmp_path, capsys):
    base, _ = binary_pair(20, 0, 0)
    write_run(tmp_path / "a", {"vsr": base})
    write_run(tmp_path / "b", {"vsr": base}, gold="no")
    assert "the same 20 sample ids, but their questions or gold answers differ" in refused(tmp_path, capsys)


def test_refuses_runs_without_a_shared_task(tmp_path, capsys):
    base, _ = binary_pair(20, 0, 0)
    write_run(tmp_path / "a", {"vsr": base})
    write_run(tmp_path / "b", {"blink": base})
    assert "the runs share no task (vsr only in the baseline; blink only in the candidate)" in refused(tmp_path, capsys)
    assert "task(s) gqa in neither run" in refused(tmp_path, capsys, "--tasks", "vsr,gqa")


def test_refuses_bad_options(tmp_path):
    with pytest.raises(CheckRefused, match="alpha must be between 0 and 1"):
        CheckOptions(alpha=1.5)
    with pytest.raises(CheckRefused, match="max-drop must not be negative"):
        CheckOptions(max_drop=-1)


# --------------------------------------------------------------------------- the CI example


def harness_commands(workflow: dict) -> list[list[str]]:
    """The `python -m harness ...` command lines of a workflow's run steps, with variables filled in."""
    commands = []
    for step in workflow["jobs"]["gate"]["steps"]:
        script = step.get("run", "").replace("\\\n", " ")
        for line in script.splitlines():
            line = line.strip()
            if line.startswith("python -m harness"):
                assert "${{" not in line, f"pass workflow expressions through env, not inline: {line}"
                tokens = shlex.split(re.sub(r"\$\{?\w+\}?", "1", line))
                commands.append(tokens[3:tokens.index("|")] if "|" in tokens else tokens[3:])
    return commands


def test_ci_example_is_valid_and_runs_only_by_hand():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(triggers) == {"workflow_dispatch"}
    assert "checkpoint" in triggers["workflow_dispatch"]["inputs"]
    job = workflow["jobs"]["gate"]
    assert "self-hosted" in job["runs-on"] and "gpu" in job["runs-on"]
    upload = [s for s in job["steps"] if "upload-artifact" in s.get("uses", "")]
    assert upload and upload[0]["if"] == "always()"
    assert "EXAMPLE" in WORKFLOW.read_text().splitlines()[0]


def test_ci_example_commands_parse_with_our_cli():
    commands = harness_commands(yaml.safe_load(WORKFLOW.read_text()))
    assert [c[0] for c in commands] == ["run", "check"]
    parser = build_parser()
    run, check_args = (parser.parse_args(c) for c in commands)
    assert run.system == "valor-rl" and run.system_args == "llm.model=1"
    assert run.limit is not None and run.seed is not None
    assert check_args.candidate == run.output_path
    assert check_args.output_path is not None


def test_refuses_runs_of_different_protocols(tmp_path, capsys):
    base = write_run(tmp_path / "base", {"t": [1.0, 0.0, 1.0]})
    cand = write_run(tmp_path / "cand", {"t": [1.0, 0.0, 1.0]}, protocol="paper")
    with pytest.raises(CheckRefused, match="harness protocol and the candidate .* the paper protocol"):
        check_runs(base, cand)
    assert main(["check", "--baseline", str(base), "--candidate", str(cand)]) == 2
    assert "--protocol harness" in capsys.readouterr().err
