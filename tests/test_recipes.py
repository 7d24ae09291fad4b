"""Training recipes end to end on a CPU: GRPO (TRL), the SFT baseline, verl's entry points, the ablation.

The GRPO and SFT recipes run their real entry points on a tiny random Qwen3
taught to reply with one well-formed plan and program (so the sampled replies
reach every part of the reward), with the real reward: the format gate, the
syntax check in the sandbox, and the four judgements from an ``openai`` chat
backend talking to a scripted OpenAI-compatible server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import stat
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from fake_openai import Reply, running_chat_server
from harness.training.data import QueryRow, TrainingData, write_trl_jsonl, write_verl_parquet
from harness.training.reward import PARTS
from harness.training.verifier import RUBRICS, VERIFIED_PARTS
from tiny_models import save_tiny_qwen3

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"

SYSTEM = "Write a plan in <plan> tags and a program in <answer> tags."
QUESTIONS = ["How many cups are on the table?", "How many red chairs are there?",
             "Is the mug left of the laptop?", "How tall is the blue cube?"]
GOOD = ('<plan>Find the cups with the detector and count them; none found means 0.</plan>\n'
        '<answer>\ncups = gd_detect(image, "cup")\nfinal_answer = len(cups)\n</answer>')
CRASHES = "<plan>Divide.</plan><answer>final_answer = 1 / 0</answer>"


def load_entry(relative: str) -> ModuleType:
    """A recipe's entry point, imported from its file (recipes are scripts, not a package)."""
    path = RECIPES / relative
    name = "recipe_" + relative.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def judge(body: dict) -> Reply:
    """The scripted verifier: every criterion met, except a spatial relation in a question about 'left'."""
    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    part = next(p for p in VERIFIED_PARTS if system.endswith(RUBRICS[p]))
    score = 0 if part == "spatial" and "left of" in user else 1
    return Reply(content=json.dumps({"reason": f"{part} judged", "score": score}))


def write_reward_yaml(folder: Path, url: str, cache: bool = True) -> Path:
    path = folder / "reward.yaml"
    path.write_text(yaml.safe_dump({
        "protocol": "harness",
        "verifier": {"backend": "openai", "model": "judge", "base_url": url, "max_concurrency": 8,
                     "max_retries": 0, "timeout_s": 30},
        "cache": cache, "syntax_workers": 2}))
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random tiny Qwen3, briefly trained to answer every prompt with GOOD (thinking off).

    Sampled at temperature 1 it mostly reproduces GOOD and sometimes drifts, so
    GRPO groups see well-formed, working programs (and now and then broken ones).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = save_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    heads = [tokenizer.apply_chat_template(messages(q), tokenize=False, add_generation_prompt=True,
                                           enable_thinking=False) for q in QUESTIONS]
    sequences = [tokenizer(h + GOOD + "<|im_end|>", add_special_tokens=False)["input_ids"] for h in heads]
    starts = [len(tokenizer(h, add_special_tokens=False)["input_ids"]) for h in heads]
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), tokenizer.pad_token_id)
    labels = torch.full((len(sequences), width), -100)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (sequence, start) in enumerate(zip(sequences, starts)):
        ids[row, :len(sequence)] = torch.tensor(sequence)
        mask[row, :len(sequence)] = 1
        labels[row, start:len(sequence)] = torch.tensor(sequence[start:])
    model = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(80):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """Training rows written by harness.training.data's own writers (TRL JSONL and verl parquet)."""
    folder = tmp_path_factory.mktemp("tiny-data")
    rows = [QueryRow(q, "omni3d_bench_train" if i % 2 else "generated", "test", f"q{i}", None)
            for i, q in enumerate(QUESTIONS)]
    data = TrainingData(rows, [messages(q) for q in QUESTIONS])
    write_trl_jsonl(data, folder / "train.jsonl")
    write_verl_parquet(data, folder / "train.parquet")
    return folder


# ----------------------------------------------------------------------------- GRPO with TRL


def test_grpo_config_maps_the_papers_hyperparameters():
    from harness.training.trl_recipes import grpo_arguments, load_grpo_recipe

    recipe = load_grpo_recipe(RECIPES / "reasoning_grpo_trl/config.yaml",
                              ["grpo.use_cpu=true", "grpo.bf16=false", "grpo.use_vllm=false"])
    args = grpo_arguments(recipe)
    assert recipe.model == "Qwen/Qwen3-8B" and recipe.max_prompt_tokens == 6000 and recipe.peft is None
    assert (args.num_generations, args.generation_batch_size, args.max_completion_length) == (5, 320, 2000)
    assert (args.beta, args.epsilon, args.loss_type, args.num_iterations) == (0.01, 0.2, "grpo", 1)
    assert (args.learning_rate, args.weight_decay, args.max_grad_norm, args.num_train_epochs) == (1e-6, 0.01, 1.0, 4)
    assert (args.temperature, args.top_p) == (1.0, 1.0)
    # The paper protocol trains with thinking on, as the original did; ours turns it off.
    assert recipe.protocol == "paper" and not args.chat_template_kwargs
    harness = grpo_arguments(load_grpo_recipe(RECIPES / "reasoning_grpo_trl/config.yaml", [
        "protocol=harness", "grpo.use_cpu=true", "grpo.bf16=false", "grpo.use_vllm=false"]))
    assert harness.chat_template_kwargs == {"enable_thinking": False}
    with pytest.raises(ValueError, match="unknown protocol"):
        load_grpo_recipe(RECIPES / "reasoning_grpo_trl/config.yaml", ["protocol=mine"])
    # One optimizer update per 64-prompt generation batch: all its micro-batches accumulate.
    assert args.steps_per_generation == args.gradient_accumulation_steps == 320
    with pytest.raises(ValueError, match="reward YAML"):
        load_grpo_recipe(RECIPES / "reasoning_grpo_trl/config.yaml", ["grpo.reward_weights=[1, 1]"])
    with pytest.raises(ValueError, match="unknown settings"):
        load_grpo_recipe(RECIPES / "reasoning_grpo_trl/config.yaml", ["learning_rate=1e-5"])


def test_every_recipe_config_loads():
    """The configs not run here still build their trainer settings (a misspelt key fails)."""
    from trl import SFTConfig

    from harness.training.ablation import load_plan
    from harness.training.reward import RewardConfig
    from harness.training.sft_sampling import load_sampling_recipe
    from harness.training.trl_recipes import grpo_arguments, load_grpo_recipe, load_sft_recipe, peft_config

    lora = load_grpo_recipe(RECIPES / "reasoning_grpo_trl/config_lora_1gpu.yaml",
                            ["grpo.use_cpu=true", "grpo.bf16=false", "grpo.use_vllm=false"])
    assert grpo_arguments(lora).gradient_accumulation_steps == 160 and peft_config(lora.peft).r == 64
    sft = load_sft_recipe(RECIPES / "reasoning_sft/train.yaml", ["sft.use_cpu=true", "sft.bf16=false"])
    assert SFTConfig(output_dir="unused", **sft.sft).completion_only_loss is True
    sampling = load_sampling_recipe(RECIPES / "reasoning_sft/sample.yaml")
    assert (sampling.samples_per_query, sampling.min_reward, sampling.backend["kind"]) == (8, 0.7, "vllm")
    assert load_plan(RECIPES / "ablation_data_size/config.yaml").sizes == [40, 160, 400, 800]
    for name, protocol in (("gemini.yaml", "paper"), ("local_vllm.yaml", "harness")):
        config = RewardConfig.from_yaml(RECIPES / "reward_configs" / name)
        assert (config.weights.syntax, config.weights.logic, config.weights.attribute) == (0.1, 0.3, 0.2)
        assert config.protocol == protocol


def test_prompts_over_the_limit_are_dropped_before_training(tiny_model):
    import datasets
    from transformers import AutoTokenizer

    from harness.training.trl_recipes import drop_long_prompts, prompt_tokens

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = datasets.Dataset.from_list([{"prompt": messages(QUESTIONS[0]), "question": QUESTIONS[0]},
                                       {"prompt": messages("cube " * 300), "question": "cube " * 300}])
    limit = prompt_tokens(tokenizer, messages(QUESTIONS[0]), {"enable_thinking": False})
    kept = drop_long_prompts(rows, tokenizer, limit, {"enable_thinking": False})
    assert kept["question"] == [QUESTIONS[0]]
    with pytest.raises(ValueError, match="every prompt"):
        drop_long_prompts(rows, tokenizer, limit - 1, {"enable_thinking": False})


def test_trl_grpo_recipe_runs_two_steps_with_the_real_reward(tiny_model, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "grpo"
    with running_chat_server(monkeypatch) as server:
        server.respond = judge
        reward_yaml = write_reward_yaml(tmp_path, server.url)
        code = load_entry("reasoning_grpo_trl/train.py").main([
            "--config", str(RECIPES / "reasoning_grpo_trl/config_cpu_tiny.yaml"),
            "--set", f"model={tiny_model}", "--set", f"train_data={tiny_data / 'train.jsonl'}",
            "--set", f"output_dir={out}", "--set", f"reward_config={reward_yaml}"])
        judged = list(server.requests)
    assert code == 0
    steps = [entry for entry in json.loads((out / "training_log.json").read_text()) if "reward" in entry]
    assert [entry["step"] for entry in steps] == [1, 2]
    for entry in steps:  # every part of the reward is logged on its own, with the verifier's counts
        assert {f"rewards/{part}/mean" for part in PARTS} <= set(entry)
        assert "verifier/judgements" in entry and entry["verifier/failed_judgements"] == 0
    # Replies got through the format gate, their programs ran in the sandbox, and the
    # verifier was asked over HTTP, each request being one of the four criteria.
    assert max(entry["rewards/format/mean"] for entry in steps) > 0
    assert max(entry["rewards/syntax/mean"] for entry in steps) > 0
    assert judged and all(r["path"].endswith("/chat/completions") for r in judged)
    asked = {next(p for p in VERIFIED_PARTS if r["body"]["messages"][0]["content"].endswith(RUBRICS[p]))
             for r in judged}
    assert asked == set(VERIFIED_PARTS)
    stats = json.loads((out / "reward_stats.json").read_text())
    assert stats["completions"] == 8 and stats["judgements"] > 0 and stats["judgements"] % 4 == 0
    assert stats["failed"] == stats["excluded"] == 0
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()


def test_trl_grpo_paper_protocol_leaves_failed_judgements_out(tiny_model, tiny_data, tmp_path, monkeypatch):
    """The paper protocol end to end on TRL: the pinned (here: fixture) prompts in one user turn,
    integer verdicts; a failed judgement makes every part None, so TRL leaves the completion out
    of its group and of the part means, and the count is logged."""
    from harness.training import protocol
    from upstream_fixtures import write_upstream

    texts = write_upstream(tmp_path / "upstream")
    monkeypatch.setattr(protocol, "paper_texts", lambda data_dir=None: texts)
    out = tmp_path / "grpo"

    def paper_judge(body: dict) -> Reply:
        prompt = body["messages"][-1]["content"]
        assert len(body["messages"]) == 1 and prompt.startswith("FIXTURE ")
        if "FIXTURE SPATIAL CHECK" in prompt and "left of" in prompt:
            return Reply(status=500)  # the verifier fails on these, every time
        return Reply(content="Looks right.\n<answer>1</answer>")

    with running_chat_server(monkeypatch) as server:
        server.respond = paper_judge
        reward_yaml = tmp_path / "paper.yaml"
        reward_yaml.write_text(yaml.safe_dump({"protocol": "paper", "cache": False, "syntax_workers": 2, "verifier": {
            "backend": "openai", "model": "judge", "base_url": server.url, "max_retries": 0, "timeout_s": 30}}))
        code = load_entry("reasoning_grpo_trl/train.py").main([
            "--config", str(RECIPES / "reasoning_grpo_trl/config_cpu_tiny.yaml"), "--set", "protocol=paper",
            "--set", "grpo.chat_template_kwargs={enable_thinking: false}",  # the tiny model learned that template
            "--set", f"model={tiny_model}", "--set", f"train_data={tiny_data / 'train.jsonl'}",
            "--set", f"output_dir={out}", "--set", f"reward_config={reward_yaml}", "--set", "grpo.max_steps=4"])
    assert code == 0
    steps = [e for e in json.loads((out / "training_log.json").read_text()) if "reward" in e]
    stats = json.loads((out / "reward_stats.json").read_text())
    assert stats["excluded"] > 0 and stats["failed"] == stats["excluded"]  # one part fails per excluded reply
    assert stats["excluded"] == sum(e["verifier/excluded_completions"] for e in steps)
    for entry in steps:
        # Every judged reply gets 1 on every part, so each part's mean is the format gate's: a failed
        # judgement left the completion out, where a 0 would have pulled the spatial mean below it.
        for part in ("logic", "attribute", "spatial", "adherence"):
            assert entry[f"rewards/{part}/mean"] == pytest.approx(entry["rewards/format/mean"])
    assert any(e["verifier/excluded_completions"] for e in steps)


def test_reward_counts_come_from_the_log_history_a_resume_keeps():
    """TRL restores the log history of the checkpoint it resumes from, so counts summed from it
    include every finished step once, whatever the killed run logged after its checkpoint."""
    from harness.training.trl_recipes import reward_totals

    history = [{"step": 1, "verifier/judgements": 8.0, "verifier/failed_judgements": 1.0,
                "verifier/excluded_completions": 1.0, "reward/completions": 4.0, "reward": 0.5},
               {"step": 3, "verifier/judgements": 6.0, "verifier/failed_judgements": 0.0,  # the mean of steps 2-3
                "verifier/excluded_completions": 0.5, "reward/completions": 4.0, "reward": 0.6},
               {"step": 3, "train_runtime": 10.0}]
    totals = reward_totals(history)
    assert totals == {"judgements": 20.0, "failed": 1.0, "unreadable": 0.0, "excluded": 2.0, "completions": 12.0}


# ----------------------------------------------------------------------------- SFT baseline


def test_sft_recipe_samples_filters_and_trains_two_steps(tiny_model, tiny_data, tmp_path, monkeypatch):
    samples = tmp_path / "samples"
    with running_chat_server(monkeypatch) as server:
        server.respond = judge
        reward_yaml = write_reward_yaml(tmp_path, server.url)
        sample_args = ["--config", str(RECIPES / "reasoning_sft/sample_cpu_tiny.yaml"),
                       "--set", f"train_data={tiny_data / 'train.jsonl'}", "--set", f"output_dir={samples}",
                       "--set", f"reward_config={reward_yaml}", "--set", f"backend.checkpoint={tiny_model}"]
        sample = load_entry("reasoning_sft/sample.py")
        assert sample.main(sample_args) == 0
        candidates = [json.loads(line) for line in (samples / "candidates.jsonl").read_text().splitlines()]
        first = (samples / "sft.jsonl").read_text()

        # A crash mid-write: the record loses its last reply and keeps half a line. The
        # rerun drops the torn line, samples only what is missing, and rebuilds sft.jsonl.
        lines = (samples / "candidates.jsonl").read_text().splitlines(keepends=True)
        (samples / "candidates.jsonl").write_text("".join(lines[:-1]) + lines[-1][:20])
        assert sample.main(sample_args) == 0
        resumed = [json.loads(line) for line in (samples / "candidates.jsonl").read_text().splitlines()]

    assert len(candidates) == len(QUESTIONS) * 2  # two replies per query
    assert sorted((c["query_id"], c["sample"]) for c in resumed) == sorted((c["query_id"], c["sample"])
                                                                           for c in candidates)
    assert (samples / "sft.jsonl").read_text() == first
    rows = [json.loads(line) for line in first.splitlines()]
    assert rows, "no sampled reply reached the threshold"
    assert all(row["reward"] >= 0.7 for row in rows)
    assert len(rows) == len({(r["query_id"], r["completion"][0]["content"].strip()) for r in rows})  # deduplicated
    kept_ids = {(c["query_id"], c["completion"].strip()) for c in candidates if c["reward"] >= 0.7}
    assert {(r["query_id"], r["completion"][0]["content"].strip()) for r in rows} == kept_ids
    row = rows[0]
    assert row["prompt"][0] == {"role": "system", "content": SYSTEM}
    assert row["completion"][0]["role"] == "assistant" and row["chat_template_kwargs"] == {"enable_thinking": False}
    # The verifier judged every well-formed reply; its spatial verdict was 0 exactly for the
    # 'left of' question (such replies still clear 0.7 when the rest holds: 0.8).
    gated = [c for c in candidates if c["parts"]["format"] == 1.0]
    assert gated and all((c["parts"]["spatial"] == 0.0) == ("left of" in c["question"]) for c in gated)

    model_out = tmp_path / "sft-model"
    code = load_entry("reasoning_sft/train.py").main([
        "--config", str(RECIPES / "reasoning_sft/train_cpu_tiny.yaml"), "--set", f"model={tiny_model}",
        "--set", f"train_data={samples / 'sft.jsonl'}", "--set", f"output_dir={model_out}"])
    assert code == 0
    losses = [e for e in json.loads((model_out / "training_log.json").read_text()) if "loss" in e]
    assert [e["step"] for e in losses] == [1, 2]
    assert (model_out / "config.json").is_file()


def test_sft_filter_threshold_and_duplicates(tmp_path):
    from harness.training.sft_sampling import SamplingRecipe, _Filter

    recipe = SamplingRecipe(train_data="x", output_dir=str(tmp_path), backend={"kind": "scripted"})
    prompts = {"a": messages("qa"), "b": messages("qb")}
    candidates = [{"query_id": "a", "question": "qa", "completion": GOOD, "reward": 0.9},
                  {"query_id": "a", "question": "qa", "completion": GOOD + "\n", "reward": 1.0},  # same reply
                  {"query_id": "b", "question": "qb", "completion": GOOD, "reward": 0.7},  # another query
                  {"query_id": "b", "question": "qb", "completion": CRASHES, "reward": 0.6}]
    rows = list(_Filter(recipe, prompts).rows(candidates))
    assert [(r["query_id"], r["reward"]) for r in rows] == [("a", 0.9), ("b", 0.7)]


# ----------------------------------------------------------------------------- verl


def test_verl_compute_score_in_a_running_event_loop(tiny_data, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from harness.training import verl_reward
    from harness.training.rollout_log import read_rollouts, summarize

    rows = pq.read_table(tiny_data / "train.parquet").to_pylist()
    logs, checkpoints = tmp_path / "reward_log", tmp_path / "checkpoints"
    with running_chat_server(monkeypatch) as server:
        server.respond = judge
        config = str(write_reward_yaml(tmp_path, server.url, cache=False))

        async def rollouts(run: str, replies: list[str]) -> list[dict]:
            # As verl's reward loop calls it: keyword arguments, many at once, reward_kwargs merged in.
            calls = [verl_reward.compute_score(data_source=row["data_source"], solution_str=reply,
                                               ground_truth=row["reward_model"]["ground_truth"],
                                               extra_info={**row["extra_info"], "num_turns": 2}, config=config,
                                               protocol="harness", processes=2, log_dir=str(logs), run=run,
                                               rollouts_per_step=2, checkpoint_dir=str(checkpoints))
                     for row, reply in zip(rows, replies)]
            return await asyncio.gather(*calls)

        try:
            results = asyncio.run(rollouts("first", [GOOD, GOOD, CRASHES, "no tags at all"]))
            judged = len(server.requests)
            # Killed during step 3 after a checkpoint at step 1: the next launch redoes steps 2 and 3.
            asyncio.run(rollouts("first", [GOOD]))
            checkpoints.mkdir()
            (checkpoints / "latest_checkpointed_iteration.txt").write_text("1\n")
            asyncio.run(rollouts("second", [CRASHES, CRASHES, GOOD]))
        finally:
            verl_reward.reward_model(config, "harness", 2).close()
            verl_reward.reward_model.cache_clear()
            verl_reward.rollout_log.cache_clear()
    assert all({"score", *PARTS, "verifier_failures", "excluded"} <= set(r) for r in results)
    assert results[0]["score"] == pytest.approx(1.0)
    assert rows[2]["extra_info"]["question"] == QUESTIONS[2]
    assert results[2]["syntax"] == 0.0 and results[2]["spatial"] == 0.0  # crashes; 'left of' judged 0
    assert results[2]["score"] == pytest.approx(0.7)
    assert results[3] == {**dict.fromkeys(PARTS, 0.0), "score": 0.0, "verifier_failures": 0.0, "excluded": 0.0,
                          "unreadable_verdicts": 0.0}
    assert judged == 3 * len(VERIFIED_PARTS)  # the unformatted reply was never sent
    # Every rollout is in the log with its step; the resumed launch replaced the unfinished steps.
    entries = read_rollouts(logs)
    assert [(e["run"], e["step"]) for e in entries] == [("first", 1), ("first", 1), ("second", 2), ("second", 2),
                                                        ("second", 3)]
    per_step = summarize(entries)
    assert [(r["step"], r["rollouts"]) for r in per_step] == [(1, 2), (2, 2), (3, 1)]
    assert per_step[1]["syntax"] == 0.0 and per_step[2]["score"] == pytest.approx(0.8)  # "left of": spatial 0
    from harness.leaderboard.rewardlog import read_reward_log

    curve = read_reward_log(logs / "rollouts.jsonl")  # plot-rewards reads it as it is
    assert curve.steps == [1.0, 2.0, 3.0] and curve.series["syntax"][1] == 0.0


def _train_sh_commands(tmp_path: Path, *extra: str, **env: str) -> list[list[str]]:
    """The commands train.sh runs, recorded by a stand-in for python (nothing is launched)."""
    log = tmp_path / "calls.jsonl"
    stub = tmp_path / "python"
    stub.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    import subprocess

    subprocess.run(["bash", str(RECIPES / "reasoning_grpo_verl/train.sh"), *extra], check=True,
                   env={**os.environ, "PYTHON": str(stub), **env}, capture_output=True, text=True)
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_verl_launch_script_checks_then_trains_with_the_papers_settings(tmp_path):
    check, launch = _train_sh_commands(tmp_path, "trainer.total_epochs=1")
    assert check[0].endswith("recipes/reasoning_grpo_verl/check_config.py")
    assert check[1:4] == ["--compose", "auto", "--"]
    overrides = check[4:]
    assert launch[:2] == ["-m", "verl.trainer.main_ppo"] and launch[2:] == overrides
    settings = dict(o.lstrip("+").split("=", 1) for o in overrides)
    for key, value in {"algorithm.adv_estimator": "grpo", "data.train_batch_size": "64",
                       "actor_rollout_ref.rollout.n": "5", "actor_rollout_ref.actor.optim.lr": "1e-6",
                       "actor_rollout_ref.actor.use_kl_loss": "True", "actor_rollout_ref.actor.kl_loss_coef": "0.01",
                       "actor_rollout_ref.actor.kl_loss_type": "low_var_kl", "actor_rollout_ref.actor.clip_ratio": "0.2",
                       "data.max_prompt_length": "6000", "data.max_response_length": "2000",
                       "actor_rollout_ref.rollout.temperature": "1.0", "actor_rollout_ref.rollout.name": "vllm",
                       "trainer.n_gpus_per_node": "8", "actor_rollout_ref.actor.fsdp_config.param_offload": "True",
                       "actor_rollout_ref.actor.fsdp_config.optimizer_offload": "True",
                       "reward.custom_reward_function.name": "compute_score",
                       "reward.reward_manager.name": "naive", "reward.num_workers": "8",
                       "reward.custom_reward_function.reward_kwargs.protocol": "paper",
                       "reward.custom_reward_function.reward_kwargs.processes": "8",
                       "reward.custom_reward_function.reward_kwargs.rollouts_per_step": "320"}.items():
        assert settings[key] == value, key
    assert overrides[-1] == "trainer.total_epochs=1"  # the caller's overrides come last and win
    assert Path(settings["reward.custom_reward_function.path"]) == REPO / "harness/training/verl_reward.py"
    # The paper protocol trains with thinking on, as the original did: nothing is passed.
    assert not any("enable_thinking" in o for o in overrides)
    assert settings["reward.custom_reward_function.reward_kwargs.log_dir"].endswith("/reward_log")
    assert Path(settings["reward.custom_reward_function.reward_kwargs.checkpoint_dir"]).is_absolute()

    (tmp_path / "limited").mkdir()
    _, limited = _train_sh_commands(tmp_path / "limited", REWARD_MANAGER="rate_limited", PROTOCOL="harness",
                                    TRAIN_BATCH_SIZE="40", REWARD_WORKERS="4")
    # REWARD_MAX_CONCURRENT (64) is the total over the 4 workers, each limiting itself.
    assert "reward.reward_manager.name=rate_limited" in limited and "+reward.max_concurrent=16" in limited
    assert "+data.apply_chat_template_kwargs.enable_thinking=False" in limited
    assert "data.train_batch_size=40" in limited and "actor_rollout_ref.actor.ppo_mini_batch_size=40" in limited
    assert "+reward.custom_reward_function.reward_kwargs.rollouts_per_step=200" in limited


def test_check_config_accepts_ours_and_refuses_legacy_keys_or_another_reward(tmp_path, capsys):
    check = load_entry("reasoning_grpo_verl/check_config.py")
    _, launch = _train_sh_commands(tmp_path)
    good = launch[2:]
    assert check.main(["--", *good]) == 0  # composed with verl's defaults where verl is installed
    assert check.main(["--compose", "never", "--", *good]) == 0

    legacy = [*good, "+custom_reward_function.path=" + str(REPO / "harness/training/verl_reward.py"),
              "+reward_model.reward_manager=batch"]
    assert check.main(["--compose", "never", "--", *legacy]) == 1
    assert "custom_reward_function.path is set, but verl 0.9 ignores it" in capsys.readouterr().err
    other = [o for o in good if not o.startswith("reward.custom_reward_function.path=")]
    for bad in ([*other, f"reward.custom_reward_function.path={tmp_path / 'my_reward.py'}"],  # another file
                other,  # none: verl's default scorer
                [*good, "reward.custom_reward_function.name=compute_score_batched"],
                [*good, "reward.reward_manager.name=dapo"],
                [o for o in good if "reward_kwargs" not in o],  # no reward YAML
                [*good, "+data.system_prompt=You are VALOR"],
                [*good, "+reward.custom_reward_function.reward_kwargs.protocol=harness"],  # the YAML says paper
                [*good, "+data.apply_chat_template_kwargs.enable_thinking=False"],  # paper trains with thinking on
                [*good, "data.train_batch_size=32"],  # the reward log would count 320 rollouts a step
                [*good, "+reward.custom_reward_function.reward_kwargs.sampling=1"]):  # not a parameter
        assert check.main(["--compose", "never", "--", *bad]) == 1, bad
    capsys.readouterr()
    import inspect

    from harness.training import verl_checks, verl_reward

    parameters = [p for p in inspect.signature(verl_reward.compute_score).parameters
                  if p not in verl_checks.VERL_CALL_KWARGS and p != "_"]
    assert tuple(parameters) == verl_checks.REWARD_KWARGS  # what the check accepts is what the function takes
    # Training data written for the other protocol is refused.
    data = tmp_path / "harness-data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"options": {"protocol": "harness"}}))
    assert check.main(["--compose", "never", "--", *good, f"data.train_files={data / 'train.parquet'}"]) == 1
    assert "written for protocol 'harness'" in capsys.readouterr().err

    # A final configuration as verl composes it: the legacy sections present, but empty.
    reward_yaml = next(o.split("=", 1)[1] for o in good if "reward_kwargs.config=" in o)
    final = {"custom_reward_function": {"path": None, "name": None},
             "reward_model": {"reward_manager": None, "enable": None},
             "reward": {"custom_reward_function": {"path": str(REPO / "harness/training/verl_reward.py"),
                                                   "name": "compute_score", "reward_kwargs": {"config": reward_yaml}},
                        "reward_manager": {"source": "register", "name": "rate_limited"}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(final))
    assert check.main(["--final-config", str(path)]) == 0
    final["custom_reward_function"]["path"] = "/elsewhere/reward.py"
    path.write_text(yaml.safe_dump(final))
    assert check.main(["--final-config", str(path)]) == 1


def test_verl_loads_our_reward_and_computes_grpo_advantages_on_it(tiny_data, tmp_path, monkeypatch):
    pytest.importorskip("verl")
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from omegaconf import OmegaConf
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
    from verl.trainer.ppo.reward import get_custom_reward_fn

    from harness.training import verl_reward

    rows = pq.read_table(tiny_data / "train.parquet").to_pylist()[:2]
    groups = [[GOOD, GOOD, CRASHES, "no tags"], [GOOD, CRASHES, CRASHES, GOOD]]
    with running_chat_server(monkeypatch) as server:
        server.respond = judge
        config = str(write_reward_yaml(tmp_path, server.url))
        function = get_custom_reward_fn(OmegaConf.create({"reward": {"custom_reward_function": {
            "path": str(REPO / "harness/training/verl_reward.py"), "name": "compute_score",
            "reward_kwargs": {"config": config}}}}))

        async def score() -> list[dict]:
            return await asyncio.gather(*[function(data_source=row["data_source"], solution_str=reply,
                                                   ground_truth="", extra_info=row["extra_info"])
                                          for row, replies in zip(rows, groups) for reply in replies])

        try:
            results = asyncio.run(score())
        finally:
            verl_reward.reward_model(config).close()
            verl_reward.reward_model.cache_clear()
    scores = torch.tensor([r["score"] for r in results])
    length = 6
    mask = torch.ones(len(scores), length)
    token_rewards = torch.zeros(len(scores), length)
    token_rewards[:, -1] = scores  # verl puts the outcome reward on the last response token
    index = np.array([row["extra_info"]["index"] for row, replies in zip(rows, groups) for _ in replies])
    advantages, _ = compute_grpo_outcome_advantage(token_rewards, mask, index)
    per_rollout = advantages[:, 0]
    for group in (slice(0, 4), slice(4, 8)):
        assert per_rollout[group].mean().abs() < 1e-5  # centred within each group
        expected = (scores[group] - scores[group].mean()) / (scores[group].std() + 1e-6)
        assert torch.allclose(per_rollout[group], expected, atol=1e-5)
    assert per_rollout[0] > 0 > per_rollout[3]  # the good program beats the unformatted reply


# ----------------------------------------------------------------------------- the data-size ablation


def _fixture_results(path: Path, compat: float, strict: float, n: int = 100) -> None:
    path.mkdir(parents=True)
    entry = {"alias": "omni3d_bench", "n": n, "n_scored": n, "accuracy,compat": compat, "accuracy,strict": strict,
             "accuracy_ci95,compat": [compat - 0.05, compat + 0.05]}
    (path / "results.json").write_text(json.dumps({"results": {"omni3d_bench": entry}}))


def test_ablation_table_from_fixture_results(tmp_path, capsys):
    from harness.training.ablation import load_plan, write_table

    work = tmp_path / "ablation"
    _fixture_results(work / "eval/n0", 0.371, 0.355)
    _fixture_results(work / "eval/n40", 0.398, 0.381)
    _fixture_results(work / "eval/n160", 0.4025, 0.39)
    plan = load_plan(RECIPES / "ablation_data_size/config.yaml", [f"work_dir={work}"])
    text = write_table(plan)
    assert (work / "table5.md").read_text() == text
    lines = text.splitlines()
    assert "| 0 | llm-tools-qwen3-8b | 37.5 | 37.1 | [32.1, 42.1] | 35.5 | 100 |" in lines
    assert "| 40 | valor-rl (n=40) | 40.0 | 39.8 | [34.8, 44.8] | 38.1 | 100 |" in lines
    assert "| 160 | valor-rl (n=160) | 39.2 | 40.2 | [35.2, 45.2] | 39.0 | 100 |" in lines
    assert "| 800 | valor-rl (n=800) | 43.9 | - | - | - | - |" in lines
    assert lines[-1] == "Not run yet: n = 400, 800."

    # The entry point's --table-only writes the same table, and runs nothing.
    assert load_entry("ablation_data_size/run.py").main(
        ["--config", str(RECIPES / "ablation_data_size/config.yaml"), "--table-only", "--set", f"work_dir={work}"]) == 0
    assert capsys.readouterr().out.strip() == text.strip()


@pytest.mark.parametrize("trainer", ["trl", "verl"])
def test_ablation_dry_run_lists_every_command(trainer, tmp_path, capsys):
    work = tmp_path / "ablation"
    code = load_entry("ablation_data_size/run.py").main(
        ["--config", str(RECIPES / "ablation_data_size/config.yaml"), "--dry-run", "--trainer", trainer,
         "--set", f"work_dir={work}", "--set", "python=python"])
    assert code == 0 and not work.exists()  # nothing ran
    commands = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert commands[0] == (f"python -m harness run --system llm-tools-qwen3-8b --tasks omni3d_bench --output-path "
                           f"{work}/eval/n0 --resume")
    for size in (40, 160, 400, 800):
        assert (f"python -m harness training-data --sources omni3d_bench_train,data/generated/queries.jsonl "
                f"--size {size} --seed 0 --protocol paper --out {work}/data/n{size}") in commands
        model = work / ("checkpoints" if trainer == "trl" else "models") / f"n{size}"
        assert (f"python -m harness run --system valor-rl --system-args llm.model={model.resolve()} "
                f"--label valor-rl-n{size} --tasks omni3d_bench --output-path {work}/eval/n{size} --resume") in commands
        batch = min(64, size)
        if trainer == "trl":
            train = next(c for c in commands if f"train_data={work}/data/n{size}/train.jsonl" in c)
            assert train.startswith("accelerate launch") and f"grpo.generation_batch_size={batch * 5}" in train
            assert "--set protocol=paper" in train
        else:
            train = next(c for c in commands if f"TRAIN_FILES={work}/data/n{size}/train.parquet" in c)
            assert "recipes/reasoning_grpo_verl/train.sh" in train and f"TRAIN_BATCH_SIZE={batch}" in train
            assert "PROTOCOL=paper" in train and "ROLLOUT_N=5" in train and "TOTAL_EPOCHS=4" in train
            assert f"bash recipes/reasoning_grpo_verl/merge.sh {work}/checkpoints/n{size} {model}" in commands
    assert len(commands) == 1 + 4 * (3 if trainer == "trl" else 4)


def _fake_steps(root: Path, crash: tuple[str, int] | None = None) -> list:
    """Data, train, merge and eval steps as small scripts writing their outputs the way the real
    ones do: the trainer writes its checkpoint marker at every save (as verl does) and continues
    from it; ``crash`` (step, point) kills one step at one point, once."""
    from harness.training.ablation import Step

    script = root / "step.py"
    script.write_text(
        "import json, os, sys\n"
        "from pathlib import Path\n"
        "name, out, crash_at = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])\n"
        "out.parent.mkdir(parents=True, exist_ok=True)\n"
        "flag = out.parent / f'.crashed-{name}'\n"
        "if name == 'train':\n"
        "    done = int(out.read_text()) if out.exists() else 0\n"
        "    for step in range(done + 1, 5):\n"
        "        out.write_text(str(step))  # the checkpoint marker, rewritten at every save\n"
        "        if step == crash_at and not flag.exists():\n"
        "            flag.write_text('1'); os._exit(9)\n"
        "else:\n"
        "    source = {'data': None, 'merge': 'ckpt', 'eval': 'model'}[name]\n"
        "    text = name + ':' + (out.parent.joinpath(source).read_text() if source else 'rows')\n"
        "    if crash_at and not flag.exists():\n"
        "        out.write_text(text[:3]); flag.write_text('1'); os._exit(9)\n"
        "    out.write_text(text)\n")
    outputs = {"data": "data", "train": "ckpt", "merge": "model", "eval": "results"}
    steps = []
    for name, output in outputs.items():
        point = crash[1] if crash and crash[0] == name else 0
        steps.append(Step(name, [sys.executable, str(script), name, str(root / output), str(point)], root / output))
    return steps


@pytest.mark.parametrize("crash", [None, ("data", 1), ("train", 1), ("train", 3), ("train", 4), ("merge", 1),
                                   ("eval", 1)])
def test_a_killed_ablation_resumes_to_the_same_outputs(tmp_path, crash):
    """Killed at any point, the same command run again finishes what an uninterrupted run does:
    a step counts as done only when its command ended well, whatever outputs it left."""
    import subprocess

    from harness.training.ablation import run_steps, step_finished

    markers = tmp_path / "done"
    steps = _fake_steps(tmp_path, crash)
    if crash:
        with pytest.raises(subprocess.CalledProcessError):
            run_steps(steps, markers)
        killed = next(s for s in steps if s.name == crash[0])
        assert killed.done.exists() and not step_finished(killed, markers)  # its output is there, unfinished
    run_steps(steps, markers)
    assert (tmp_path / "ckpt").read_text() == "4"  # trained to the end, never merged half way
    assert (tmp_path / "model").read_text() == "merge:4"
    assert (tmp_path / "results").read_text() == "eval:merge:4"
    assert all(step_finished(step, markers) for step in steps)
    # Finished steps are not run again; a step whose command changed is.
    (tmp_path / "results").write_text("kept")
    run_steps(steps, markers)
    assert (tmp_path / "results").read_text() == "kept"
    steps[-1].argv.append("--another-setting")
    assert not step_finished(steps[-1], markers)
