"""Offline tests for the chat backends and the VQA tool.

An OpenAI-compatible server runs in a thread on 127.0.0.1, answering from a
script (status, body, headers, delay per request) and recording every request,
so retries, error statuses, timeouts, malformed replies and the concurrency
bound are exercised over real HTTP. A tiny random LLaVA built from a config
(no download) runs through TransformersChat.
"""

from __future__ import annotations

import base64
import email.utils
import io
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from PIL import Image

from harness.backends import BackendError, ChatBackend, OpenAIChat, make_chat_backend
from harness.backends.messages import parse_messages
from harness.backends.retry import retry_after_seconds
from harness.registry import UnknownNameError
from fake_openai import ChatServer, KEY_ENV, Reply, make_chat, running_chat_server
from harness.tools.vqa import (
    VQA_VERSION,
    ToolFailure,
    VqaTool,
    crop_for_vqa,
    normalize_answer,
    vqa_prompt,
)



# --------------------------------------------------------------------------- scripted server


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-key")
    with running_chat_server(monkeypatch) as chat_server:
        yield chat_server




def text_message(text: str = "Say yes.") -> list[dict]:
    return [{"role": "user", "content": text}]


def gradient_image() -> Image.Image:
    """200 x 100, a gradient so crops are distinguishable pixel by pixel."""
    image = Image.new("RGB", (200, 100))
    image.putdata([(x, y * 2, (x + y) % 256) for y in range(100) for x in range(200)])
    return image


def decode_data_uri(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix):])))


# --------------------------------------------------------------------------- requests


def test_vqa_request_carries_the_crop_and_the_rules(server):
    server.script.append(Reply(content='"Red."'))
    tool = VqaTool(base_url=server.url, api_key_env=KEY_ENV)
    image = gradient_image()
    assert tool.answer(image, [50, 20, 90, 60], "What colour is this object?") == "red"

    request = server.requests[0]
    # the paper's model and API (Responses, medium reasoning), and no temperature: reasoning
    # models accept only their default
    assert request["path"] == "/v1/responses"
    assert request["headers"]["authorization"] == "Bearer sk-test-key"
    body = request["body"]
    assert body["model"] == "gpt-5-mini" and body["reasoning"] == {"effort": "medium"}
    assert "temperature" not in body
    [message] = body["input"]
    assert message["role"] == "user"
    image_part, text_part = message["content"]
    assert image_part["type"] == "input_image"
    sent = decode_data_uri(image_part["image_url"])
    # box 40 x 40 padded by 10 on each side -> (40, 10, 100, 70)
    assert sent.size == (60, 60)
    assert sent.convert("RGB").tobytes() == image.crop((40, 10, 100, 70)).tobytes()
    text = text_part["text"]
    assert text_part["type"] == "input_text"
    assert text.endswith("Question: What colour is this object?")
    for rule in ("middle", "one word or a short phrase", "digits", "do not round", "units",
                 "one of those options, written exactly as given"):
        assert rule in text, rule
    assert "whole image" not in text

    server.script.append(Reply(content="3"))
    assert tool.answer(image, None, "How many  stripes\nare there?") == "3"
    image_part, text_part = server.requests[1]["body"]["input"][0]["content"]
    assert decode_data_uri(image_part["image_url"]).size == (200, 100)
    assert "The question is about the whole image." in text_part["text"]
    assert "middle" not in text_part["text"]
    assert text_part["text"].endswith("Question: How many stripes are there?")


def test_request_fields_and_overrides(server):
    chat = make_chat(server, temperature=0.0, max_tokens=5,
                     extra={"reasoning_effort": "low", "top_k": 3, "extra_body": {"mm_processor_kwargs": {"a": 1}}})
    assert chat.complete(text_message("Plain text.")) == "yes"
    body = server.requests[0]["body"]
    assert body["model"] == "test-model"
    assert body["temperature"] == 0.0 and body["max_tokens"] == 5
    assert body["reasoning_effort"] == "low"
    # fields the SDK does not know still reach the server (vLLM's sampling options)
    assert body["top_k"] == 3 and body["mm_processor_kwargs"] == {"a": 1}
    assert body["messages"] == [{"role": "user", "content": "Plain text."}]

    # per-call sampling overrides the settings; None removes one
    chat.complete([{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": [{"type": "text", "text": "hi"}]}], temperature=None, seed=7)
    body = server.requests[1]["body"]
    assert "temperature" not in body and body["seed"] == 7 and body["max_tokens"] == 5
    assert body["messages"][1]["content"] == [{"type": "text", "text": "hi"}]


def test_fingerprint_names_model_and_settings(server):
    base = make_chat(server).fingerprint
    assert base.startswith(f"openai:test-model@{server.url}")
    assert "sk-test-key" not in base
    assert make_chat(server).fingerprint == base
    assert make_chat(server, temperature=0.5).fingerprint != base
    assert make_chat(server, model="other").fingerprint != base
    assert make_chat(server, extra={"reasoning_effort": "low"}).fingerprint != base
    # transport settings do not change answers, so they do not change the fingerprint
    assert make_chat(server, max_retries=1, max_concurrency=2, timeout_s=3).fingerprint == base


def test_messages_are_checked():
    image = Image.new("RGB", (4, 4))
    assert parse_messages([{"role": "user", "content": [{"type": "image", "image": image}]}])[0].parts == (image,)
    for bad in ([], [{"role": "robot", "content": "hi"}], [{"role": "user", "content": []}],
                [{"role": "user", "content": [{"type": "image", "image": "cat.png"}]}],
                [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
                [{"role": "user", "content": 3}]):
        with pytest.raises(ValueError):
            parse_messages(bad)


# --------------------------------------------------------------------------- retries and failures


def test_429_then_success_waits_as_the_server_asks(server):
    server.script += [Reply(429, headers={"retry-after-ms": "300"}), Reply(content="ok")]
    chat = make_chat(server, backoff_s=0.001)
    start = time.monotonic()
    assert chat.complete(text_message()) == "ok"
    # our own backoff would have waited about a millisecond: the 0.3 s came from the header
    assert time.monotonic() - start >= 0.29
    assert len(server.requests) == 2


def test_500_then_success(server):
    server.script += [Reply(500), Reply(503), Reply(content="ok")]
    start = time.monotonic()
    assert make_chat(server).complete(text_message()) == "ok"
    assert len(server.requests) == 3
    assert time.monotonic() - start < 2


def test_repeated_500_raises_with_status_and_attempts(server):
    server.default = Reply(500)
    with pytest.raises(BackendError) as caught:
        make_chat(server, max_retries=2).complete(text_message())
    message = str(caught.value)
    assert "HTTP 500" in message and "after 3 attempts" in message
    assert "scripted failure 500" in message and "test-model" in message
    assert (caught.value.status, caught.value.attempts) == (500, 3)
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(server):
    server.default = Reply(400)
    with pytest.raises(BackendError, match=r"HTTP 400 \(scripted failure 400\) after 1 attempt$"):
        make_chat(server).complete(text_message())
    assert len(server.requests) == 1


def test_401_names_the_missing_key_variable(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    server.default = Reply(401)
    with pytest.raises(BackendError, match=r"HTTP 401 .*no API key was found in \$TEST_CHAT_KEY"):
        make_chat(server).complete(text_message())
    assert server.requests[0]["headers"]["authorization"] == "Bearer EMPTY"


def test_a_retry_after_beyond_the_limit_is_not_waited_for(server):
    server.script.append(Reply(429, headers={"retry-after": "3600"}))
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"HTTP 429 .*asked to wait 3600 s.*gave up after 1 attempt"):
        make_chat(server).complete(text_message())
    assert time.monotonic() - start < 1
    assert len(server.requests) == 1


def test_slow_reply_is_retried_then_fails(server):
    server.default = Reply(delay=3)
    chat = make_chat(server, timeout_s=0.25, max_retries=1)
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"no response within 0.25 s after 2 attempts") as caught:
        chat.complete(text_message())
    assert time.monotonic() - start < 2
    assert (caught.value.status, caught.value.attempts) == (None, 2)
    assert len(server.requests) == 2


def test_slow_reply_then_success(server):
    server.script += [Reply(delay=3), Reply(content="ok")]
    assert make_chat(server, timeout_s=0.25).complete(text_message()) == "ok"
    assert len(server.requests) == 2


def test_connection_refused_is_retried_then_fails(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    chat = OpenAIChat("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, backoff_s=0.01)
    with pytest.raises(BackendError, match=r"connection failed .* after 3 attempts") as caught:
        chat.complete(text_message())
    assert caught.value.attempts == 3


@pytest.mark.parametrize("reply, complaint", [
    (Reply(body=b"<html>502 Bad Gateway</html>"), "the reply is not JSON"),
    (Reply(body={"id": "chatcmpl-1", "object": "chat.completion"}), "the reply has no choices"),
    (Reply(body={"choices": []}), "the reply has no choices"),
    (Reply(body=[1, 2]), "the reply is not a chat completion"),
    (Reply(body={"error": {"message": "model overloaded"}}), "the server reported an error"),
    (Reply(content=""), "the reply has no text"),
    (Reply(content="  \n"), "the reply has no text"),
    (Reply(content=None, refusal="I cannot help with that."), "refusal: I cannot help with that."),
])
def test_malformed_replies_raise(server, reply, complaint):
    server.script.append(reply)
    with pytest.raises(BackendError, match="HTTP 200") as caught:
        make_chat(server).complete(text_message())
    assert complaint in str(caught.value)
    assert len(server.requests) == 1  # not retried


def test_content_parts_in_a_reply_are_joined(server):
    server.script.append(Reply(content=[{"type": "text", "text": "blue"}, {"type": "text", "text": " car"}]))
    assert make_chat(server).complete(text_message()) == "blue car"


def test_concurrency_is_bounded(server):
    server.default = Reply(content="ok", delay=0.1)
    chat = make_chat(server, max_concurrency=3)
    with ThreadPoolExecutor(max_workers=12) as pool:
        replies = list(pool.map(lambda _: chat.complete(text_message()), range(12)))
    assert replies == ["ok"] * 12
    assert len(server.requests) == 12
    assert server.max_in_flight == 3  # the bound is reached, never passed


def test_backoff_is_exponential_capped_and_jittered():
    chat = OpenAIChat("m", base_url="http://127.0.0.1:9/v1", backoff_s=1.0, max_backoff_s=5.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (8, 5.0)]:
        delays = [chat.backoff_delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100  # jitter: threads rejected together come back apart


def test_retry_after_header_parsing():
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after": "1.5", "retry-after-ms": "100"}) == 0.1
    assert retry_after_seconds({"retry-after-ms": "soon", "retry-after": "3"}) == 3.0
    date = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 <= retry_after_seconds({"retry-after": date}) <= 11
    assert retry_after_seconds({"retry-after": email.utils.formatdate(time.time() - 60, usegmt=True)}) == 0.0
    assert retry_after_seconds({"retry-after": "whenever"}) is None
    assert retry_after_seconds({}) is None and retry_after_seconds(None) is None


def test_make_chat_backend(server):
    chat = make_chat_backend("openai", model="m", base_url=server.url)
    assert isinstance(chat, OpenAIChat) and chat.model == "m"
    with pytest.raises(UnknownNameError, match="did you mean 'openai'|Did you mean 'openai'"):
        make_chat_backend("opanai", model="m")
    with pytest.raises(TypeError, match="chat backend 'openai'"):
        make_chat_backend("openai", model="m", colour="blue")


# --------------------------------------------------------------------------- crops and answers


def test_crop_pads_by_a_quarter_of_the_box():
    image = gradient_image()
    crop = crop_for_vqa(image, [20, 20, 60, 40])  # 40 x 20 -> 10 and 5 more on each side
    assert crop.size == (60, 30)
    assert crop.tobytes() == image.crop((10, 15, 70, 45)).tobytes()


def test_crop_is_clamped_to_the_image():
    image = gradient_image()
    assert crop_for_vqa(image, [0, 0, 30, 30]).size == (38, 38)  # -7.5 -> 0, 37.5 -> 38
    corner = crop_for_vqa(image, [180, 80, 200, 100])
    assert corner.size == (25, 25)
    assert corner.tobytes() == image.crop((175, 75, 200, 100)).tobytes()
    assert crop_for_vqa(image, [-50, -50, 500, 500]).size == (200, 100)


def test_crop_rounds_outward_and_honours_pad():
    image = gradient_image()
    assert crop_for_vqa(image, [10.2, 10.7, 20.1, 20.3], pad=0).size == (11, 11)  # (10, 10, 21, 21)
    assert crop_for_vqa(image, [40, 40, 60, 60], pad=0.5).size == (40, 40)


@pytest.mark.parametrize("box", [
    None,
    [10, 10, 10, 10],  # a point: no area even after padding
    [50, 30, 50, 70],  # a vertical line
    [300, 20, 400, 60],  # entirely right of the image
    [-80, -60, -40, -30],  # above and left of it, even padded
])
def test_degenerate_or_missing_box_gives_the_whole_image(box):
    image = gradient_image()
    assert crop_for_vqa(image, box) is image


@pytest.mark.parametrize("reply, answer", [
    ("Red", "red"), ("Red.", "red"), ('"Red."', "red"), ("'yes'", "yes"), ("`3`", "3"),
    ("**Blue**", "blue"), ("\u201cLeft\u201d.", "left"), ("  Dark   green!\n", "dark green"),
    ("3.5", "3.5"), ("3.5.", "3.5"), ("0.25", "0.25"), ("-2", "-2"), ("men's shirt", "men's shirt"),
    ("'90s", "'90s"), ("No!?", "no"), ("(B)", "(b)"), ("A. cat", "a. cat"),
])
def test_normalize_answer(reply, answer):
    assert normalize_answer(reply) == answer


def test_prompt_is_the_same_for_every_backend_apart_from_the_focus():
    boxed, whole = vqa_prompt("Is it red?", True), vqa_prompt("Is it red?", False)
    assert boxed.replace("middle", "") != whole
    assert boxed.splitlines()[2:] == whole.splitlines()[2:]


# --------------------------------------------------------------------------- the VQA tool


class FakeChat(ChatBackend):
    """Answers from a script; records messages."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.calls: list[list[dict]] = []
        self.closed = False

    @property
    def fingerprint(self) -> str:
        return "fake:1"

    def complete(self, messages, **sampling):
        self.calls.append(messages)
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def close(self):
        self.closed = True


def test_vqa_tool_with_a_ready_backend():
    fake = FakeChat("Two.", "")
    tool = VqaTool(fake, pad=0.0)
    image = gradient_image()
    assert tool.answer(image, [10, 10, 30, 20], "How many?") == "two"
    sent = fake.calls[0][0]["content"][0]["image"]
    assert sent.size == (20, 10)
    assert tool.fingerprint == f"vqa-v{VQA_VERSION}|pad=0|fake:1"
    assert VqaTool(FakeChat()).fingerprint != tool.fingerprint  # the crop is part of it
    with pytest.raises(ValueError):
        tool.answer(image, None, "  ")
    tool.close()
    assert fake.closed
    with pytest.raises(TypeError):
        VqaTool(FakeChat(), model="x")


@pytest.mark.parametrize("reply, message", [
    (BackendError("m at url: HTTP 500 (boom) after 5 attempts", status=500, attempts=5),
     "vqa: the model failed: m at url: HTTP 500 (boom) after 5 attempts"),
    (KeyError("surprise"), "vqa: the model failed: KeyError: 'surprise'"),
    ("...", "vqa: the model's reply holds no answer: '...'"),
])
def test_vqa_tool_failures_are_tool_failures(reply, message):
    tool = VqaTool(FakeChat(reply))
    with pytest.raises(ToolFailure) as caught:
        tool.answer(gradient_image(), None, "What is it?")
    assert str(caught.value) == message
    assert isinstance(caught.value, RuntimeError)


def test_vqa_tool_over_http_failure(server):
    server.default = Reply(502)
    tool = VqaTool(base_url=server.url, api_key_env=KEY_ENV, max_retries=1, backoff_s=0.01)
    with pytest.raises(ToolFailure, match=r"HTTP 502 .* after 2 attempts"):
        tool.answer(gradient_image(), [0, 0, 10, 10], "What is it?")
    assert len(server.requests) == 2


def test_vqa_tool_defaults_follow_the_paper(server):
    tool = VqaTool(base_url=server.url)
    assert tool.backend.model == "gpt-5-mini"
    assert '"temperature"' not in tool.fingerprint
    assert VqaTool(base_url=server.url, model="gpt-4o", temperature=0.0).fingerprint != tool.fingerprint


# --------------------------------------------------------------------------- a tiny local VLM


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    """A random LLaVA (CLIP vision tower, one-layer Llama) with a word-level
    tokenizer and a chat template of our own, saved as a checkpoint folder."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<pad>", "<s>", "</s>", "<image>", "<|user|>", "<|assistant|>", "<|system|>"]
    words = ["yes", "no", "red", "blue", "what", "colour", "is", "this", "object", "?", ".", ":"]
    vocab = {token: index for index, token in enumerate(specials + words + ["[UNK]"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(specials)
    backend.decoder = decoders.WordPiece()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>",
                                                     pad_token="<pad>", bos_token="<s>")
    template = ("{% for m in messages %}<|{{ m['role'] }}|> {% for p in m['content'] %}"
                "{% if p['type'] == 'image' %}<image> {% else %}{{ p['text'] }} {% endif %}{% endfor %}</s> "
                "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}")
    processor = transformers.LlavaProcessor(
        image_processor=transformers.CLIPImageProcessorPil(size={"shortest_edge": 28},
                                                           crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default", chat_template=template,
        num_additional_image_tokens=1)
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2, image_size=28, patch_size=14),
        text_config=transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                             max_position_embeddings=1024, pad_token_id=0, bos_token_id=1,
                                             eos_token_id=2),
        image_token_id=vocab["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llava")
    transformers.LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, vocab


def _spy_generate(chat):
    """Record the arguments of every generate call of a loaded TransformersChat."""
    calls = []
    original = chat._model.generate

    def generate(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    chat._model.generate = generate
    return calls


def test_transformers_chat_runs_a_tiny_vlm(tiny_llava):
    from harness.backends import TransformersChat

    folder, vocab = tiny_llava
    chat = make_chat_backend("transformers", checkpoint=str(folder), max_new_tokens=4)
    assert isinstance(chat, TransformersChat)
    assert (chat.device, chat.dtype) == ("cpu", "float32")
    assert chat.fingerprint == f"transformers:{folder}@default|dtype=float32|max_new_tokens=4"
    assert chat._model is None  # lazy
    messages = [{"role": "user", "content": [{"type": "image", "image": gradient_image()},
                                             {"type": "text", "text": "what colour is this object ?"}]}]
    chat.complete(messages)  # load
    model = chat._model
    calls = _spy_generate(chat)
    first = chat.complete(messages)
    assert isinstance(first, str) and first.strip()
    assert chat.complete(messages) == first  # greedy
    assert chat._model is model  # loaded once

    call = calls[0]
    assert call["do_sample"] is False and call["max_new_tokens"] == 4
    assert tuple(call["pixel_values"].shape) == (1, 3, 28, 28)
    ids = call["input_ids"][0].tolist()
    assert ids.count(vocab["<image>"]) == 4  # 2 x 2 patches of the 28-pixel view
    question = [vocab[w] for w in ("what", "colour", "is", "this", "object", "?")]
    assert any(ids[i:i + len(question)] == question for i in range(len(ids)))
    assert ids[0] == vocab["<|user|>"] and ids[-1] == vocab["<|assistant|>"]

    # our sampling names map onto generate's
    chat.complete(messages, max_tokens=2, temperature=0.7, top_p=0.9)
    assert calls[-1]["max_new_tokens"] == 2 and calls[-1]["do_sample"] is True
    assert calls[-1]["temperature"] == 0.7 and calls[-1]["top_p"] == 0.9

    # the reply is exactly what the model generates after the prompt
    import torch

    inputs = chat._processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "image": gradient_image()},
                                      {"type": "text", "text": "what colour is this object ?"}]}],
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    expected = chat._processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    assert first == expected
    chat.close()
    assert chat._model is None


def test_transformers_chat_is_thread_safe(tiny_llava):
    from harness.backends import TransformersChat

    folder, _ = tiny_llava
    chat = TransformersChat(str(folder), max_new_tokens=3)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "is this red ?"},
                                             {"type": "image", "image": gradient_image().convert("L")}]}]
    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(lambda _: chat.complete(messages), range(8)))
    assert len(set(replies)) == 1 and replies[0].strip()


def _force_reply(chat, token_id: int | None) -> None:
    """Make a loaded model's every next token ``token_id`` (None: padding, which
    decodes to nothing): the random model's own choices are arbitrary."""
    import torch

    with chat._lock:
        chat._ensure_loaded()
        old = chat._model.get_output_embeddings()
        head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        if token_id is not None:
            head.bias.data[token_id] = 10.0
        chat._model.set_output_embeddings(head)


def test_vqa_tool_on_a_tiny_vlm(tiny_llava):
    folder, vocab = tiny_llava
    tool = VqaTool("transformers", checkpoint=str(folder), max_new_tokens=1)
    assert tool.fingerprint == f"vqa-v{VQA_VERSION}|pad=0.25|transformers:{folder}@default|dtype=float32|max_new_tokens=1"
    _force_reply(tool.backend, vocab["red"])
    calls = _spy_generate(tool.backend)
    assert tool.answer(gradient_image(), [20, 20, 60, 60], "what colour is this object ?") == "red"
    ids = calls[0]["input_ids"][0].tolist()
    assert ids.count(vocab["<image>"]) == 4 and vocab["?"] in ids

    # a model that generates only special tokens has not answered
    _force_reply(tool.backend, None)
    with pytest.raises(ToolFailure, match="the model generated no text"):
        tool.answer(gradient_image(), None, "what colour is this object ?")


def test_transformers_chat_reports_a_missing_checkpoint(tmp_path):
    pytest.importorskip("transformers")
    from harness.backends import TransformersChat

    chat = TransformersChat(str(tmp_path / "nothing-here"))
    with pytest.raises(BackendError, match="could not load the model"):
        chat.complete(text_message())
