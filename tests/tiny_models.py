"""Tiny random models built from configs, saved like real checkpoints (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

WORDS = ["a", "an", "the", "cat", "dog", "person", "car", "red", "blue", "green", "yellow", "purple", "orange",
         "box", "ball", "cube", "sphere", "cylinder", "cone", "object", "mug", "chair", "table", "left", "of"]


def write_bert_vocab(path: Path) -> Path:
    """A vocabulary with the ids GroundingDINO hard-codes at their bert-base-uncased positions."""
    vocab = [f"[unused{i}]" for i in range(1100)]
    for index, token in {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]",
                         1010: ",", 1012: ".", 1029: "?"}.items():
        vocab[index] = token
    for index, word in enumerate(WORDS):
        vocab[2 + index] = word
    path.write_text("\n".join(vocab) + "\n")
    return path


def grounding_dino_config():
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    backbone = SwinConfig(image_size=224, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=7, mlp_ratio=2.0, out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=1100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
    return GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1,
                               decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
                               decoder_attention_heads=2, num_queries=20, num_feature_levels=4, encoder_n_points=2,
                               decoder_n_points=2, max_text_len=32)


def grounding_dino_processor(folder: Path):
    from transformers import BertTokenizerFast, GroundingDinoProcessor
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    tokenizer = BertTokenizerFast(vocab=str(write_bert_vocab(folder / "vocab.txt")))
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 128, "longest_edge": 160})
    return GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_grounding_dino(folder: Path, seed: int = 0) -> Path:
    """A random GroundingDINO checkpoint folder (model and processor)."""
    import torch
    from transformers import GroundingDinoForObjectDetection

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    GroundingDinoForObjectDetection(grounding_dino_config()).save_pretrained(folder)
    grounding_dino_processor(folder).save_pretrained(folder)
    return folder


MOGE_CONFIG = dict(
    encoder=dict(backbone="dinov2_vits14", intermediate_layers=4, dim_out=64),
    neck=dict(dim_in=[66, 2, 2, 2, 2], dim_res_blocks=[64, 64, 32, 32, 32], dim_out=[None] * 5,
              resamplers=["conv_transpose"] * 4, num_res_blocks=1),
    points_head=dict(dim_in=[None] * 5, dim_res_blocks=[64, 64, 32, 32, 32], dim_out=[None] * 4 + [3],
                     resamplers=["conv_transpose"] * 4, num_res_blocks=1),
    mask_head=dict(dim_in=[None] * 5, dim_res_blocks=[64, 64, 32, 32, 32], dim_out=[None] * 4 + [1],
                   resamplers=["conv_transpose"] * 4, num_res_blocks=1),
    scale_head=dict(dims=[384, 64, 1]), remap_output="exp")


def save_moge(path: Path, seed: int = 0) -> Path:
    """A random MoGe-2 checkpoint in the layout ``MoGeModel.from_pretrained`` reads."""
    import torch
    from moge.model.v2 import MoGeModel

    torch.manual_seed(seed)
    torch.save({"model_config": MOGE_CONFIG, "model": MoGeModel(**MOGE_CONFIG).state_dict()}, path)
    return path


def save_depth_anything(folder: Path, seed: int = 0) -> Path:
    """A random metric Depth Anything V2 checkpoint folder (model and PIL image processor)."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(seed)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            image_size=56, patch_size=14, out_features=["stage1", "stage2"], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[16, 32],
                                 fusion_hidden_size=16, head_hidden_size=8, depth_estimation_type="metric",
                                 max_depth=20, reassemble_factors=[2, 1])
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14).save_pretrained(folder)
    return folder


# A ChatML template like Qwen3's: an empty think block after the generation
# prompt when thinking is switched off (``enable_thinking=False``).
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)

_QWEN3_CORPUS = [
    "How many red cubes are left of the blue sphere? Answer with a number.",
    "Write a Python program that calls gd_detect(image, 'chair') and returns len(boxes).",
    "def execute_command(image):\n    boxes = gd_detect(image, 'cup')\n    return len(boxes)",
    "The answer is yes. The answer is no. final_answer = depth(image, box) * 2.5",
    "<think>\n\n</think>\n\nThe mug is on the table, left of the chair.",
    "0 1 2 3 4 5 6 7 8 9 10 100 3.14 -2 [x1, y1, x2, y2]",
] + [" ".join(WORDS)]


def save_tiny_qwen3(folder: Path, seed: int = 0) -> Path:
    """A random two-layer Qwen3 with a byte-level BPE tokenizer (512 tokens) trained
    here and a chat template that honours ``enable_thinking``; its generation
    config samples by default, as Qwen3's does."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(_QWEN3_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                         # At the usual 0.02 the tied embeddings dominate and the
                         # model only repeats its last prompt token; larger weights
                         # make replies differ from prompt to prompt.
                         initializer_range=0.3)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(do_sample=True, temperature=0.6, top_k=20, top_p=0.95,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
