"""Every checkpoint a training recipe writes evaluates with one command: `harness run --system valor-rl
--system-args llm.backend=...,llm.model=FOLDER` (LoRA adapters and verl checkpoints merged once, into the cache)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import upstream_fixtures

pytest.importorskip("peft")
torch = pytest.importorskip("torch")

from harness.cli import main  # noqa: E402
from harness.tools.checkpoints import CheckpointError, chat_model_options, local_model  # noqa: E402
from test_recipes import RECIPES, load_entry  # noqa: E402
from tiny_models import save_tiny_qwen3  # noqa: E402
from toy import SMALL_SYNTHETIC_TASK  # noqa: E402

PROMPT = [{"role": "system", "content": "Write a plan and a program."}, {"role": "user", "content": "How many cups?"}]
REPLY = '<plan>Count the cups.</plan><answer>final_answer = len(gd_detect(image, "cup"))</answer>'


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> dict[str, Path]:
    """The SFT recipe with LoRA (what config_lora_1gpu does for GRPO): its output_dir is an adapter folder."""
    root = tmp_path_factory.mktemp("lora")
    base = save_tiny_qwen3(root / "base")
    data = root / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": PROMPT, "completion": [{"role": "assistant", "content": REPLY}]})
                            + "\n" for _ in range(4)))
    out = root / "adapter"
    assert load_entry("reasoning_sft/train.py").main([
        "--config", str(RECIPES / "reasoning_sft/train_cpu_tiny.yaml"), "--set", f"model={base}",
        "--set", f"train_data={data}", "--set", f"output_dir={out}", "--set", "sft.learning_rate=0.05",
        "--set", "peft={r: 4, lora_alpha: 8, lora_dropout: 0.0, target_modules: [q_proj, v_proj]}"]) == 0
    return {"base": base, "adapter": out}


def logits(folder: str | Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("How many cups are there?", return_tensors="pt")
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder).eval()(**ids).logits


def test_a_lora_adapter_is_merged_once_into_an_equivalent_model(lora_run, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    adapter = lora_run["adapter"]
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()
    merged = local_model(str(adapter))
    assert Path(merged).is_relative_to(tmp_path / "cache") and (Path(merged) / "config.json").is_file()
    assert local_model(str(adapter)) == merged  # once
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    ids = tokenizer("How many cups are there?", return_tensors="pt")
    with torch.no_grad():
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lora_run["base"]), str(adapter))
        expected = peft_model.eval()(**ids).logits
    torch.testing.assert_close(logits(merged), expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits(lora_run["base"]), expected, atol=1e-4)  # the adapter learned something


def test_verl_checkpoint_layouts_resolve(lora_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "checkpoints"
    actor = root / "global_step_4" / "actor"
    shutil.copytree(lora_run["base"], actor / "huggingface")  # as verl saves it with hf_model
    (root / "latest_checkpointed_iteration.txt").write_text("4")
    for given in (root, root / "global_step_4", actor):
        assert local_model(str(given)) == str(actor / "huggingface")
    lora_actor = tmp_path / "lora_ckpt" / "global_step_2" / "actor"
    shutil.copytree(lora_run["adapter"], lora_actor / "lora_adapter")  # verl's LoRA layout
    merged = local_model(str(lora_actor.parent))
    torch.testing.assert_close(logits(merged), logits(local_model(str(lora_run["adapter"]))))
    shards = tmp_path / "fsdp" / "global_step_1" / "actor"
    shards.mkdir(parents=True)
    (shards / "model_world_size_8_rank_0.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="merge.sh"):
        local_model(str(shards))  # no verl here: the message says how to merge
    with pytest.raises(CheckpointError, match="holds no model"):
        local_model(str(tmp_path))
    assert local_model("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"


def test_one_setting_switches_a_vllm_system_to_transformers(lora_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    inherited = {"model": str(lora_run["base"]), "chat_template_kwargs": {"enable_thinking": False},
                 "gpu_memory_utilization": 0.6, "max_model_len": 32768}
    options = chat_model_options("transformers", inherited)
    assert options == {"checkpoint": str(lora_run["base"]), "chat_template_kwargs": {"enable_thinking": False}}
    assert chat_model_options("vllm", {**inherited, "model": str(lora_run["adapter"])})["model"].startswith(
        str(tmp_path / "cache"))  # vLLM gets the merged folder


def test_harness_run_evaluates_the_lora_checkpoint(lora_run, tmp_path, monkeypatch):
    """The documented command, on the transformers backend, end to end (valor-rl follows the
    paper protocol: the original's prompt comes from the pinned files, here their stand-ins)."""
    upstream_fixtures.install(monkeypatch, tmp_path / "upstream")
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    include = tmp_path / "include"
    include.mkdir()
    (include / "synthetic_small.yaml").write_text(SMALL_SYNTHETIC_TASK)
    out = tmp_path / "eval"
    args = f"llm.backend=transformers,llm.model={lora_run['adapter']},sampling.max_tokens=24"
    assert main(["run", "--system", "valor-rl", "--system-args", args, "--tools", "dummy", "--tasks",
                 "synthetic_small", "--limit", "2", "--include-path", str(include), "--output-path", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["results"]["synthetic_small"]["n"] == 2
    samples = [json.loads(line) for line in (out / "samples_synthetic_small.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(s.get("raw") for s in samples)  # the merged model wrote the replies
    assert any((tmp_path / "cache" / "merged-models").iterdir())
