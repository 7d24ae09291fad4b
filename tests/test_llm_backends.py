"""Offline tests for the model backends that run the paper's comparisons.

- TransformersChat on a tiny random Qwen3 (a byte-level BPE tokenizer trained
  here, a ChatML template honouring ``enable_thinking``): single and batched
  generation, seeds, sampling options, the thinking flag;
- OpenAIChat against a real HTTP server on 127.0.0.1 that answers
  /v1/chat/completions with that tiny Qwen3: order and concurrency of
  ``complete_many``, seeds on the wire, a failure in the middle of a batch;
- VLLMChat: request construction without vLLM, the error when it is missing,
  and the engine call through a stand-in ``vllm`` module;
- GeminiChat: request construction, and retries and failures against a stubbed
  client (sync and ``client.aio``) and against the real SDK talking to a local
  server;
- ScriptedChat selectors and failures; CachedChat hits, misses, bypasses,
  errors and reuse of its file by another instance and another process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import types as pytypes
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from PIL import Image

from harness.backends import (
    BackendError,
    CachedChat,
    ChatBackend,
    GeminiChat,
    OpenAIChat,
    ScriptedChat,
    VLLMChat,
    build_vllm_request,
    is_deterministic,
    make_chat_backend,
    request_digest,
    request_seed,
    with_cache,
)
from harness.backends.genai import build_genai_request
from harness.backends.scripted import script_entry
from fake_openai import JsonHandler

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["How many red cubes?", "Write a Python program", "hi", "The answer is", "Is the mug left of the chair?"]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def pattern_image(seed: int = 0, size: tuple[int, int] = (8, 6)) -> Image.Image:
    image = Image.new("RGB", size)
    image.putdata([((x * 31 + seed) % 256, (y * 47 + seed) % 256, (x * y + seed) % 256)
                   for y in range(size[1]) for x in range(size[0])])
    return image


def with_image(text: str, image: Image.Image) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


# =========================================================================== a tiny Qwen3 through transformers


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from tiny_models import save_tiny_qwen3

    return save_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="module")
def qwen3(qwen3_folder):
    """One loaded tiny Qwen3 shared by the tests (thinking off, as the paper ran Qwen3)."""
    from harness.backends import TransformersChat

    chat = TransformersChat(str(qwen3_folder), max_new_tokens=6, batch_size=2,
                            chat_template_kwargs={"enable_thinking": False})
    chat.complete(user("warm up"))
    yield chat
    chat.close()


@contextlib.contextmanager
def spy_generate(chat) -> Iterator[list[dict]]:
    """Record the arguments of every generate call of a loaded TransformersChat."""
    calls: list[dict] = []
    model = chat._model
    original = model.generate

    def generate(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    model.generate = generate
    try:
        yield calls
    finally:
        del model.generate  # the instance attribute; the class's method shows again


def test_a_text_only_checkpoint_loads_as_a_causal_lm(qwen3, qwen3_folder):
    assert qwen3.kind == "causal_lm"
    assert type(qwen3._model).__name__ == "Qwen3ForCausalLM"
    assert qwen3.fingerprint == (f"transformers:{qwen3_folder}@default|dtype=float32|max_new_tokens=6"
                                 '|template={"enable_thinking": false}')
    # batch size and device do not change answers, so they stay out of the fingerprint
    from harness.backends import TransformersChat

    other = make_chat_backend("transformers", checkpoint=str(qwen3_folder), max_new_tokens=6, batch_size=7,
                              chat_template_kwargs={"enable_thinking": False})
    assert isinstance(other, TransformersChat) and other.fingerprint == qwen3.fingerprint
    with pytest.raises(ValueError, match="model_class"):
        TransformersChat(str(qwen3_folder), model_class="seq2seq")


def test_batched_greedy_replies_equal_single_ones(qwen3):
    requests = [user(text) for text in PROMPTS]
    with spy_generate(qwen3) as calls:
        batched = qwen3.complete_many(requests)
    assert len(calls) == 3  # 5 requests in batches of up to 2: one generate call per batch
    assert sorted(call["input_ids"].shape[0] for call in calls) == [1, 2, 2]
    padded = [call for call in calls if call["input_ids"].shape[0] == 2 and not call["attention_mask"].all()]
    for call in padded:  # left padding: the prompts end together, where generation starts
        assert call["attention_mask"][:, -1].all() and not call["attention_mask"][:, 0].all()
    single = [qwen3.complete(messages) for messages in requests]
    assert batched == single
    assert all(isinstance(reply, str) and reply.strip() for reply in batched)
    assert len(set(batched)) == len(batched)  # a reply depends on its prompt


def test_the_reply_is_what_the_model_generates_after_the_prompt(qwen3):
    import torch

    messages = [{"role": "system", "content": "Be brief."}, user("How many red cubes?")[0]]
    reply = qwen3.complete(messages, max_tokens=4)
    tokenizer = qwen3._processor
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                           return_tensors="pt", enable_thinking=False)
    with torch.inference_mode():
        output = qwen3._model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert reply == tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_sampling_options_reach_generate(qwen3):
    with spy_generate(qwen3) as calls:
        qwen3.complete(user("hi"), max_tokens=3)
        qwen3.complete(user("hi"), temperature=0.7, top_p=0.9, top_k=5)
    greedy, sampled = calls
    assert greedy["max_new_tokens"] == 3 and greedy["do_sample"] is False
    # the checkpoint samples by default (like Qwen3's); greedy must be asked for explicitly
    assert qwen3._model.generation_config.do_sample is True
    assert sampled["do_sample"] is True and sampled["temperature"] == 0.7
    assert sampled["top_p"] == 0.9 and sampled["top_k"] == 5


def test_seeded_sampling_is_reproducible_alone_and_in_any_batch(qwen3):
    requests = [user(text) for text in PROMPTS]
    first = qwen3.complete_many(requests, temperature=1.0, seed=3)
    assert qwen3.complete_many(requests, temperature=1.0, seed=3) == first
    assert [qwen3.complete(messages, temperature=1.0, seed=3) for messages in requests] == first
    assert qwen3.complete_many(requests[::-1], temperature=1.0, seed=3) == first[::-1]
    assert qwen3.complete_many(requests, temperature=1.0, seed=4) != first
    greedy = qwen3.complete_many(requests)
    assert first != greedy
    # top_k=1 leaves one candidate: seeded sampling then decodes greedily (the warpers apply)
    assert qwen3.complete_many(requests, temperature=1.0, top_k=1, seed=9) == greedy
    # without a seed, sampling differs from call to call
    assert qwen3.complete_many(requests, temperature=1.0) != qwen3.complete_many(requests, temperature=1.0)


def test_the_thinking_switch_reaches_the_chat_template(qwen3, qwen3_folder):
    from harness.backends import TransformersChat

    with spy_generate(qwen3) as calls:
        qwen3.complete(user("hi"))
    prompt = qwen3._processor.decode(calls[0]["input_ids"][0])
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")

    thinking = TransformersChat(str(qwen3_folder), max_new_tokens=2)
    thinking.complete(user("hi"))
    with spy_generate(thinking) as calls:
        thinking.complete(user("hi"))
    assert thinking._processor.decode(calls[0]["input_ids"][0]).endswith("<|im_start|>assistant\n")
    assert "<think>" not in thinking._processor.decode(calls[0]["input_ids"][0])
    assert thinking.fingerprint != qwen3.fingerprint.replace("max_new_tokens=6", "max_new_tokens=2")
    thinking.close()


def test_a_text_only_model_refuses_images_per_request(qwen3):
    replies = qwen3.complete_many([with_image("What is it?", pattern_image()), user("hi")])
    assert isinstance(replies[0], BackendError) and "text-only model" in str(replies[0])
    assert replies[1] == qwen3.complete(user("hi"))
    with pytest.raises(ValueError):  # malformed messages are the caller's bug, not a model failure
        qwen3.complete_many([user("hi"), [{"role": "robot", "content": "x"}]])


def test_a_failing_batch_is_retried_one_by_one(qwen3):
    original = qwen3._encode

    def encode(batch):
        if any("poison" in part for turns in batch for turn in turns for part in turn.parts):
            raise RuntimeError("the template refused")
        return original(batch)

    qwen3._encode = encode
    try:
        replies = qwen3.complete_many([user("hi"), user("poison"), user("The answer is")])
    finally:
        del qwen3._encode
    assert isinstance(replies[1], BackendError) and "the template refused" in str(replies[1])
    assert replies[0] == qwen3.complete(user("hi")) and replies[2] == qwen3.complete(user("The answer is"))


# =========================================================================== OpenAIChat against a served tiny Qwen3


class TinyModelServer(ThreadingHTTPServer):
    """/v1/chat/completions answered by a TransformersChat, like ``vllm serve`` would.

    Each request is held ``hold_s`` before the model runs, so that concurrent
    requests overlap and the server can count how many were in flight at once.
    """

    daemon_threads = True

    def __init__(self, chat, hold_s: float = 0.15) -> None:
        super().__init__(("127.0.0.1", 0), _TinyModelHandler)
        self.chat = chat
        self.hold_s = hold_s
        self.lock = threading.Lock()
        self.bodies: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def _from_wire(message: dict) -> dict:
    content = message["content"]
    if isinstance(content, str):
        return {"role": message["role"], "content": content}
    parts = []
    for part in content:
        if part["type"] == "text":
            parts.append(part)
        else:
            data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
            parts.append({"type": "image", "image": Image.open(io.BytesIO(data))})
    return {"role": message["role"], "content": parts}


class _TinyModelHandler(JsonHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        server: TinyModelServer = self.server  # type: ignore[assignment]
        body = self.read_json()
        with server.lock:
            server.bodies.append(body)
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            time.sleep(server.hold_s)
            sampling = {name: body[name] for name in ("temperature", "top_p", "max_tokens", "seed") if name in body}
            messages = [_from_wire(message) for message in body["messages"]]
            if "refuse me" in json.dumps(body["messages"]):
                status, data = 400, {"error": {"message": "refused by the test server", "type": "invalid_request"}}
            else:
                text = server.chat.complete(messages, **sampling)
                status, data = 200, {
                    "id": "chatcmpl-tiny", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}]}
        finally:
            with server.lock:
                server.in_flight -= 1
        self.send_json(status, data)


@pytest.fixture
def tiny_server(qwen3, monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("TINY_KEY", "sk-tiny")
    server = TinyModelServer(qwen3)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_openai_complete_many_is_concurrent_bounded_and_ordered(tiny_server, qwen3):
    chat = OpenAIChat("tiny-qwen3", base_url=tiny_server.url, api_key_env="TINY_KEY", max_concurrency=3,
                      backoff_s=0.01, timeout_s=30)
    prompts = [PROMPTS[i % len(PROMPTS)] + f" ({i})" for i in range(9)]
    start = time.monotonic()
    replies = chat.complete_many([user(text) for text in prompts])
    elapsed = time.monotonic() - start
    assert replies == [qwen3.complete(user(text)) for text in prompts]  # the served model's words, in order
    assert tiny_server.max_in_flight == 3  # concurrent, and never past the bound
    assert elapsed < 9 * tiny_server.hold_s  # one at a time would take at least this long
    assert sorted(body["messages"][0]["content"] for body in tiny_server.bodies) == sorted(prompts)
    assert all(body["temperature"] == 0.0 for body in tiny_server.bodies)
    chat.close()


def test_openai_seed_is_sent_and_reproduces_sampling(tiny_server):
    chat = OpenAIChat("tiny-qwen3", base_url=tiny_server.url, api_key_env="TINY_KEY", seed=11, temperature=1.0)
    assert '"seed": 11' in chat.fingerprint
    first = chat.complete_many([user(text) for text in PROMPTS[:3]])
    assert chat.complete_many([user(text) for text in PROMPTS[:3]]) == first
    assert all(body["seed"] == 11 and body["temperature"] == 1.0 for body in tiny_server.bodies)
    chat.complete(user("hi"), seed=None)
    assert "seed" not in tiny_server.bodies[-1]
    chat.complete(user("hi"), seed=5)
    assert tiny_server.bodies[-1]["seed"] == 5


def test_openai_complete_many_keeps_failures_in_place(tiny_server):
    chat = OpenAIChat("tiny-qwen3", base_url=tiny_server.url, api_key_env="TINY_KEY", max_concurrency=4)
    replies = chat.complete_many([user("hi"), user("please refuse me"), user("The answer is")])
    assert isinstance(replies[0], str) and isinstance(replies[2], str)
    assert isinstance(replies[1], BackendError) and replies[1].status == 400
    assert "refused by the test server" in str(replies[1])
    # a malformed request fails the call before anything is sent
    sent = len(tiny_server.bodies)
    with pytest.raises(ValueError):
        chat.complete_many([user("hi"), [{"role": "user", "content": []}]])
    assert len(tiny_server.bodies) == sent


# =========================================================================== vLLM


def test_build_vllm_request_shapes_conversations_and_sampling():
    grey = pattern_image(1).convert("L")
    requests = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write a program."}],
        [{"role": "user", "content": [{"type": "image", "image": grey}, {"type": "text", "text": "Colour?"}]}],
    ]
    defaults = {"temperature": 0.0, "max_tokens": 512, "top_k": 20, "top_p": None,
                "chat_template_kwargs": {"enable_thinking": False, "x": 1}}
    conversations, params, chat_kwargs = build_vllm_request(
        requests, {"max_new_tokens": 64, "top_k": None, "min_p": 0.1, "chat_template_kwargs": {"x": 2}}, defaults)
    assert conversations[0] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Write a program."}]
    image_part, text_part = conversations[1][0]["content"]
    assert image_part["type"] == "image_pil" and image_part["image_pil"].mode == "RGB"
    assert image_part["image_pil"].tobytes() == grey.convert("RGB").tobytes()
    assert text_part == {"type": "text", "text": "Colour?"}
    # call settings override the defaults; None removes one; our alias becomes vLLM's name
    assert params == [{"temperature": 0.0, "max_tokens": 64, "min_p": 0.1}] * 2
    assert chat_kwargs == {"chat_template_kwargs": {"enable_thinking": False, "x": 2}}

    conversations, _, chat_kwargs = build_vllm_request(requests[1:], image_format="data_uri")
    url = conversations[0][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and chat_kwargs == {}
    with pytest.raises(ValueError, match="image_format"):
        build_vllm_request(requests, image_format="jpeg")


def test_vllm_seeds_are_per_request_and_position_free():
    requests = [user(text) for text in PROMPTS] + [user(PROMPTS[0])]
    _, params, _ = build_vllm_request(requests, {"seed": 7, "temperature": 0.8})
    seeds = [p["seed"] for p in params]
    assert len(set(seeds[:5])) == 5  # distinct requests, distinct seeds
    assert seeds[5] == seeds[0]  # the same request samples the same, wherever it stands
    assert seeds == [request_seed(7, request_digest(messages)) for messages in requests]
    _, again, _ = build_vllm_request(requests[::-1], {"seed": 7, "temperature": 0.8})
    assert [p["seed"] for p in again] == seeds[::-1]
    _, other, _ = build_vllm_request(requests, {"seed": 8, "temperature": 0.8})
    assert all(a["seed"] != b["seed"] for a, b in zip(params, other))
    assert all(0 <= seed < 2 ** 31 for seed in seeds)
    _, unseeded, _ = build_vllm_request(requests, {"temperature": 0.8})
    assert all("seed" not in p for p in unseeded)


def test_a_missing_vllm_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    chat = make_chat_backend("vllm", model="Qwen/Qwen3-8B", chat_template_kwargs={"enable_thinking": False})
    assert isinstance(chat, VLLMChat)  # building it needs no vLLM
    assert chat.fingerprint.startswith("vllm:Qwen/Qwen3-8B@default|dtype=auto|")
    with pytest.raises(ImportError, match=r'pip install -e "\.\[vllm\]"'):
        chat.complete_many([user("hi")])
    with pytest.raises(ImportError, match="VLLMChat needs vLLM"):
        chat.complete(user("hi"))


class _FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class _FakeLLM:
    """Stands in for vllm.LLM: records the engine options and every chat call."""

    instances: list["_FakeLLM"] = []

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.calls: list[dict] = []
        self.llm_engine = pytypes.SimpleNamespace(model_config=pytypes.SimpleNamespace(
            get_diff_sampling_param=lambda: {"temperature": 0.6, "top_k": 20, "top_p": 0.95, "max_tokens": 99}))
        _FakeLLM.instances.append(self)

    def chat(self, conversations, sampling_params, use_tqdm=True, **kwargs):
        self.calls.append({"conversations": conversations, "params": [p.kwargs for p in sampling_params],
                           "kwargs": kwargs, "use_tqdm": use_tqdm})
        texts = []
        for conversation in conversations:
            content = conversation[-1]["content"]
            text = content if isinstance(content, str) else " ".join(p.get("text", "<image>") for p in content)
            if "too long" in text:
                raise ValueError("prompt longer than max_model_len")
            texts.append("" if "silence" in text else f"echo: {text}")
        return [pytypes.SimpleNamespace(outputs=[pytypes.SimpleNamespace(text=t, finish_reason="stop")])
                for t in texts]


@pytest.fixture
def fake_vllm(monkeypatch):
    module = pytypes.ModuleType("vllm")
    module.LLM = _FakeLLM
    module.SamplingParams = _FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    _FakeLLM.instances = []
    return module


def test_vllm_generates_a_whole_list_in_one_engine_call(fake_vllm):
    chat = VLLMChat("Qwen/Qwen3-8B", revision="abc", tensor_parallel_size=2, gpu_memory_utilization=0.8,
                    max_model_len=4096, dtype="bfloat16", chat_template_kwargs={"enable_thinking": False},
                    seed=5, engine_options={"enforce_eager": True})
    requests = [user("one"), with_image("two", pattern_image()), user("three")]
    assert chat.complete_many(requests) == ["echo: one", "echo: <image> two", "echo: three"]
    [engine] = _FakeLLM.instances
    assert engine.options == {"model": "Qwen/Qwen3-8B", "revision": "abc", "dtype": "bfloat16",
                              "tensor_parallel_size": 2, "gpu_memory_utilization": 0.8, "max_model_len": 4096,
                              "enforce_eager": True}
    [call] = engine.calls
    assert len(call["conversations"]) == 3 and call["use_tqdm"] is False
    assert call["kwargs"] == {"chat_template_kwargs": {"enable_thinking": False}}
    # ours over the checkpoint's defaults: greedy and 1024 tokens, but its top_k and top_p
    assert [p["temperature"] for p in call["params"]] == [0.0] * 3
    assert {p["top_k"] for p in call["params"]} == {20} and {p["max_tokens"] for p in call["params"]} == {1024}
    assert len({p["seed"] for p in call["params"]}) == 3
    assert chat.complete(user("four"), temperature=0.5) == "echo: four"
    assert engine.calls[-1]["params"][0]["temperature"] == 0.5
    assert len(_FakeLLM.instances) == 1  # the engine starts once


def test_vllm_failures_fall_back_to_single_requests(fake_vllm):
    chat = VLLMChat("m")
    replies = chat.complete_many([user("fine"), user("this is too long"), user("silence please"), user("ok")])
    assert replies[0] == "echo: fine" and replies[3] == "echo: ok"
    assert isinstance(replies[1], BackendError) and "max_model_len" in str(replies[1])
    assert isinstance(replies[2], BackendError) and "no text" in str(replies[2])
    engine = _FakeLLM.instances[0]
    assert [len(call["conversations"]) for call in engine.calls] == [4, 1, 1, 1, 1]


# =========================================================================== Gemini


def test_build_genai_request():
    image = pattern_image(3)
    contents, config = build_genai_request(
        [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Colour?"}]},
         {"role": "assistant", "content": "red"},
         {"role": "user", "content": "Sure?"}],
        {"max_tokens": 20, "seed": 3, "top_p": None},
        {"temperature": 0.0, "top_p": 0.9, "thinking_budget": 0, "response_mime_type": "text/plain"})
    assert [c.role for c in contents] == ["user", "model", "user"]
    inline = contents[0].parts[0].inline_data
    assert inline.mime_type == "image/png"
    assert Image.open(io.BytesIO(inline.data)).convert("RGB").tobytes() == image.tobytes()
    assert contents[0].parts[1].text == "Colour?" and contents[2].parts[0].text == "Sure?"
    assert config.system_instruction == "Be brief."
    assert (config.temperature, config.top_p, config.max_output_tokens, config.seed) == (0.0, None, 20, 3)
    assert config.thinking_config.thinking_budget == 0 and config.response_mime_type == "text/plain"
    with pytest.raises(ValueError, match="unknown Gemini generation settings: colour"):
        build_genai_request(user("hi"), {"colour": "blue"})


def _genai_reply(*texts: str, thought: str | None = None, finish: str = "STOP"):
    from google.genai import types

    parts = ([types.Part(text=thought, thought=True)] if thought else []) + [types.Part(text=t) for t in texts]
    return types.GenerateContentResponse(candidates=[types.Candidate(
        content=types.Content(role="model", parts=parts), finish_reason=finish)])


class _StubModels:
    """client.models with a script of outcomes (replies, exceptions, or callables)."""

    def __init__(self, script: list[Any], default: Any = None, delay: float = 0.0) -> None:
        self.script = list(script)
        self.default = default
        self.delay = delay
        self.calls: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0

    def generate_content(self, *, model, contents, config):
        with self.lock:
            self.calls.append({"model": model, "contents": contents, "config": config})
            outcome = self.script.pop(0) if self.script else self.default
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            if callable(outcome) and not isinstance(outcome, type):
                outcome = outcome(contents)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        finally:
            with self.lock:
                self.in_flight -= 1


class _ThreadedStubModels:
    """client.aio.models over a sync stub: each call runs the stub on a worker thread."""

    def __init__(self, models: _StubModels) -> None:
        self.models = models

    async def generate_content(self, **request):
        return await asyncio.to_thread(self.models.generate_content, **request)


def _gemini(models: _StubModels, **options: Any) -> GeminiChat:
    client = pytypes.SimpleNamespace(models=models, aio=pytypes.SimpleNamespace(models=_ThreadedStubModels(models)))
    return GeminiChat("gemini-2.5-flash", client=client, backoff_s=0.01, max_backoff_s=0.02, **options)


def _api_error(code: int, retry_delay: str | None = None):
    from google.genai import errors

    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}] if retry_delay else []
    body = {"error": {"code": code, "message": f"scripted {code}", "status": "X", "details": details}}
    return (errors.ServerError if code >= 500 else errors.ClientError)(code, body)


def test_gemini_retries_429_and_5xx_then_answers():
    models = _StubModels([_api_error(429, "0.2s"), _api_error(503), _genai_reply("Yes", thought="hmm")])
    chat = _gemini(models, thinking_budget=0)
    start = time.monotonic()
    assert chat.complete(user("Is it red?")) == "Yes"  # thoughts are not the answer
    assert time.monotonic() - start >= 0.19  # the wait the 429 asked for
    assert len(models.calls) == 3
    config = models.calls[0]["config"]
    assert config.thinking_config.thinking_budget == 0 and config.temperature == 0.0


def test_gemini_gives_up_with_status_and_attempts():
    models = _StubModels([], default=_api_error(500))
    with pytest.raises(BackendError, match=r"HTTP 500 \(scripted 500\) after 3 attempts") as caught:
        _gemini(models, max_retries=2).complete(user("hi"))
    assert (caught.value.status, caught.value.attempts, len(models.calls)) == (500, 3, 3)

    models = _StubModels([_api_error(400)])
    with pytest.raises(BackendError, match=r"HTTP 400 .* after 1 attempt$"):
        _gemini(models).complete(user("hi"))
    assert len(models.calls) == 1  # our fault: not retried

    models = _StubModels([_api_error(429, "3600s")])
    with pytest.raises(BackendError, match="asked to wait 3600 s"):
        _gemini(models).complete(user("hi"))
    assert len(models.calls) == 1


def _sdk_http_module():
    """The HTTP library google-genai runs on here (httpx, or its fork httpx2)."""
    for name in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            return __import__(name)
    pytest.skip("google-genai's HTTP library is not installed")


def test_gemini_retries_timeouts_and_reports_empty_replies():
    httpx = _sdk_http_module()

    models = _StubModels([httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), _genai_reply("ok")])
    assert _gemini(models).complete(user("hi")) == "ok"
    assert len(models.calls) == 3

    models = _StubModels([], default=httpx.ReadTimeout("slow"))
    with pytest.raises(BackendError, match=r"no response within 5 s after 2 attempts"):
        _gemini(models, max_retries=1, timeout_s=5).complete(user("hi"))

    from google.genai import types

    blocked = types.GenerateContentResponse(prompt_feedback=types.GenerateContentResponsePromptFeedback(
        block_reason="SAFETY"))
    models = _StubModels([blocked, _genai_reply(thought="only thinking", finish="MAX_TOKENS")])
    chat = _gemini(models)
    with pytest.raises(BackendError, match="prompt blocked: .*SAFETY"):
        chat.complete(user("hi"))
    with pytest.raises(BackendError, match="no text .*MAX_TOKENS"):
        chat.complete(user("hi"))
    assert len(models.calls) == 2  # neither is retried


class _AsyncStubModels(_StubModels):
    """client.aio.models: the same script of outcomes, answered by a coroutine."""

    async def generate_content(self, *, model, contents, config):
        self.calls.append({"model": model, "contents": contents, "config": config})
        outcome = self.script.pop(0) if self.script else self.default
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if callable(outcome) and not isinstance(outcome, type):
                outcome = outcome(contents)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        finally:
            self.in_flight -= 1


def _async_gemini(models: _AsyncStubModels, **options: Any) -> GeminiChat:
    def refuse(**kwargs):
        raise AssertionError("the async path must use client.aio")

    client = pytypes.SimpleNamespace(models=pytypes.SimpleNamespace(generate_content=refuse),
                                     aio=pytypes.SimpleNamespace(models=models))
    return GeminiChat("gemini-2.5-flash", client=client, backoff_s=0.01, max_backoff_s=0.02, **options)


def test_gemini_async_retries_429_and_5xx_then_answers():
    models = _AsyncStubModels([_api_error(429, "0.2s"), _api_error(503), _genai_reply("Yes", thought="hmm")])
    chat = _async_gemini(models, thinking_budget=0)
    start = time.monotonic()
    assert asyncio.run(chat.acomplete(user("Is it red?"))) == "Yes"
    assert time.monotonic() - start >= 0.19  # the wait the 429 asked for
    assert len(models.calls) == 3 and models.calls[0]["config"].thinking_config.thinking_budget == 0


def test_gemini_async_failures_read_as_the_sync_ones():
    httpx = _sdk_http_module()
    for outcome, options in [(_api_error(500), {"max_retries": 2}), (_api_error(400), {}),
                             (_api_error(429, "3600s"), {}), (httpx.ReadTimeout("slow"), {"max_retries": 1})]:
        sync = _StubModels([], default=outcome)
        with pytest.raises(BackendError) as sync_error:
            _gemini(sync, **options).complete(user("hi"))
        stub = _AsyncStubModels([], default=outcome)
        with pytest.raises(BackendError) as async_error:
            asyncio.run(_async_gemini(stub, **options).acomplete(user("hi")))
        failure, expected = async_error.value, sync_error.value
        assert (str(failure), failure.status, failure.attempts, len(stub.calls)) == \
            (str(expected), expected.status, expected.attempts, len(sync.calls))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_gemini_many_is_concurrent_bounded_and_ordered(mode):
    def echo(contents):
        text = contents[-1].parts[-1].text
        return _api_error(400) if text == "bad" else _genai_reply(text.upper())

    texts = [f"q{i}" for i in range(8)] + ["bad"]
    if mode == "sync":
        models = _StubModels([], default=echo, delay=0.1)
        replies = _gemini(models, max_concurrency=3).complete_many([user(t) for t in texts])
    else:
        models = _AsyncStubModels([], default=echo, delay=0.1)
        chat = _async_gemini(models, max_concurrency=3)
        replies = asyncio.run(chat.acomplete_many([user(t) for t in texts]))
        assert asyncio.run(chat.acomplete(user("again"))) == "AGAIN"  # a second event loop
    assert replies[:8] == [text.upper() for text in texts[:8]]
    assert isinstance(replies[8], BackendError) and replies[8].status == 400
    assert models.max_in_flight == 3


def test_gemini_credentials(monkeypatch):
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=r"\$GOOGLE_API_KEY or \$GEMINI_API_KEY"):
        make_chat_backend("genai", model="gemini-2.5-flash")
    with pytest.raises(ValueError, match="project and a location"):
        GeminiChat("gemini-2.5-flash", vertexai=True)
    monkeypatch.setenv("GEMINI_API_KEY", "k-test")
    chat = make_chat_backend("genai", model="gemini-2.5-flash", temperature=0.3, seed=2)
    assert isinstance(chat, GeminiChat)
    assert chat.fingerprint == 'genai:gemini-2.5-flash|{"seed": 2, "temperature": 0.3}'
    assert "k-test" not in chat.fingerprint
    chat.close()


class _GeminiRestServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, statuses: list[int]) -> None:
        super().__init__(("127.0.0.1", 0), _GeminiRestHandler)
        self.statuses = statuses
        self.requests: list[dict] = []


class _GeminiRestHandler(JsonHandler):
    def do_POST(self) -> None:  # noqa: N802
        server: _GeminiRestServer = self.server  # type: ignore[assignment]
        body = self.read_json()
        server.requests.append({"path": self.path, "key": self.headers.get("x-goog-api-key"), "body": body})
        status = server.statuses.pop(0) if server.statuses else 200
        if status == 200:
            data = {"candidates": [{"content": {"role": "model", "parts": [{"text": "blue"}]}, "finishReason": "STOP"}]}
        else:
            data = {"error": {"code": status, "message": "overloaded", "status": "UNAVAILABLE"}}
        self.send_json(status, data)


def test_gemini_through_the_real_sdk_retries_only_in_our_loop(monkeypatch):
    """The SDK does not retry HTTP errors by itself: every attempt the server sees is ours."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("GOOGLE_API_KEY", "k-local")
    server = _GeminiRestServer([503, 500])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        chat = GeminiChat("gemini-2.5-flash", base_url=base, backoff_s=0.01, thinking_budget=0)
        reply = chat.complete([{"role": "system", "content": "One word."}, *with_image("Colour?", pattern_image())])
        assert reply == "blue"
        assert len(server.requests) == 3
        request = server.requests[-1]
        assert request["path"].endswith("/models/gemini-2.5-flash:generateContent") and request["key"] == "k-local"
        body = request["body"]
        assert body["systemInstruction"]["parts"] == [{"text": "One word."}]
        image_part, text_part = body["contents"][0]["parts"]
        data = image_part["inlineData"]["data"]  # pydantic writes bytes as URL-safe base64
        assert Image.open(io.BytesIO(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))).tobytes() \
            == pattern_image().tobytes()
        assert text_part == {"text": "Colour?"}
        assert body["generationConfig"]["temperature"] == 0.0
        server.statuses.extend([503, 503])
        with pytest.raises(BackendError, match=r"HTTP 503 .* after 2 attempts"):
            GeminiChat("gemini-2.5-flash", base_url=base, backoff_s=0.01, max_retries=1).complete(user("hi"))
        assert len(server.requests) == 5
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_gemini_through_the_real_sdk_async(monkeypatch):
    """client.aio against a local server, from two event loops in turn."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("GOOGLE_API_KEY", "k-local")
    server = _GeminiRestServer([503])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        chat = GeminiChat("gemini-2.5-flash", base_url=f"http://127.0.0.1:{server.server_address[1]}",
                          backoff_s=0.01, max_retries=1)
        assert asyncio.run(chat.acomplete_many([user("Colour?"), user("Again?")])) == ["blue", "blue"]
        assert len(server.requests) == 3  # one 503, retried in our loop
        assert server.requests[-1]["path"].endswith("/models/gemini-2.5-flash:generateContent")
        server.statuses.extend([503, 503])
        with pytest.raises(BackendError, match=r"HTTP 503 .* after 2 attempts"):
            asyncio.run(chat.acomplete(user("hi")))
        assert len(server.requests) == 5
        chat.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# =========================================================================== request digests and ScriptedChat


def test_request_digest_covers_roles_texts_and_pixels():
    image = pattern_image(5)
    base = request_digest(with_image("Colour?", image))
    assert len(base) == 64 and base == request_digest(with_image("Colour?", image.copy()))
    assert request_digest(with_image("Colour?", image.convert("RGBA"))) == base  # same pixels once in RGB
    assert request_digest(with_image("Colour? ", image)) != base
    assert request_digest(with_image("Colour?", pattern_image(6))) != base
    assert request_digest(with_image("Colour?", pattern_image(5, (6, 8)))) != base
    assert request_digest([{"role": "system", "content": with_image("Colour?", image)[0]["content"]}]) != base
    # a plain string and a single text part are the same prompt
    assert request_digest(user("hi")) == request_digest([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    # part boundaries count
    assert request_digest([{"role": "user", "content": [{"type": "text", "text": "ab"}]}]) != request_digest(
        [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])


def write_script(path: Path, entries: list[dict]) -> Path:
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries), encoding="utf-8")
    return path


def test_scripted_chat_selectors(tmp_path):
    image_request = with_image("How many cubes?", pattern_image())
    script = write_script(tmp_path / "replies.jsonl", [
        script_entry(image_request, "3"),
        {"match": "cubes", "response": "cubes, generally"},
        {"match": "How many", "response": "a number"},
        {"match": "unanswerable", "error": "the model refused"},
    ])
    chat = make_chat_backend("scripted", path=str(script))
    assert isinstance(chat, ScriptedChat)
    assert chat.complete(image_request) == "3"  # the digest wins over any match
    assert chat.complete(with_image("How many cubes?", pattern_image(1))) == "cubes, generally"  # first match
    assert chat.complete(user("How many spheres?")) == "a number"
    # only the last user message is searched
    assert chat.complete([{"role": "user", "content": "cubes"}, {"role": "assistant", "content": "?"},
                          {"role": "user", "content": "How many?"}]) == "a number"
    with pytest.raises(BackendError, match=r"replies.jsonl:4: the model refused"):
        chat.complete(user("an unanswerable question"))
    replies = chat.complete_many([user("How many?"), user("Tell me a story about a dragon and a knight, please")])
    assert replies[0] == "a number"
    missing = replies[1]
    assert isinstance(missing, BackendError)
    digest = request_digest(user("Tell me a story about a dragon and a knight, please"))
    assert f"prompt_sha256={digest}" in str(missing) and "Tell me a story about a dragon" in str(missing)


def test_scripted_chat_fingerprint_and_file_checks(tmp_path):
    script = write_script(tmp_path / "a.jsonl", [{"match": "x", "response": "y"}])
    import hashlib

    first = ScriptedChat(script).fingerprint
    assert first == "scripted:" + hashlib.sha256(script.read_bytes()).hexdigest()
    write_script(script, [{"match": "x", "response": "z"}])
    assert ScriptedChat(script).fingerprint != first
    for lines, complaint in [
        (["not json"], "a.jsonl:1: not JSON"),
        ([json.dumps({"match": "x"})], "exactly one of 'response' or 'error'"),
        ([json.dumps({"response": "y"})], "exactly one selector"),
        ([json.dumps({"match": "x", "prompt_sha256": "ab", "response": "y"})], "exactly one selector"),
        ([json.dumps({"match": "x", "response": "y", "colour": 1})], "unknown keys"),
        ([json.dumps({"prompt_sha256": "ab", "response": "y"})] * 2, "a.jsonl:2: prompt_sha256 ab is already"),
        ([""], "no recorded responses"),
    ]:
        script.write_text("\n".join(lines) + "\n")
        with pytest.raises(ValueError, match=complaint):
            ScriptedChat(script)
    with pytest.raises(ValueError, match="cannot read"):
        ScriptedChat(tmp_path / "missing.jsonl")


# =========================================================================== CachedChat


class CountingChat(ChatBackend):
    """Numbers its replies, so a reply served from the cache is told from a fresh one."""

    def __init__(self, temperature: float | None = 0.0) -> None:
        self.temperature = temperature
        self.batches: list[list[str]] = []
        self.count = 0

    @property
    def fingerprint(self) -> str:
        return "counting:1"

    def default_sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    def complete(self, messages, **sampling):
        raise AssertionError("CachedChat must use complete_many")

    def complete_many(self, requests, **sampling):
        texts = [messages[-1]["content"] for messages in requests]
        self.batches.append(texts)
        replies = []
        for text in texts:
            self.count += 1
            replies.append(BackendError(f"{text} failed") if "fail" in text else f"{text} #{self.count}")
        return replies


def test_cached_chat_serves_hits_and_sends_misses_once(tmp_path):
    inner = CountingChat()
    chat = CachedChat(inner, tmp_path / "chat.sqlite")
    assert chat.fingerprint == "counting:1"
    first = chat.complete_many([user("a"), user("b"), user("a")])
    assert first == ["a #1", "b #2", "a #1"] and inner.batches == [["a", "b"]]  # the repeat is asked once
    second = chat.complete_many([user("b"), user("c"), user("a")])
    assert second == ["b #2", "c #3", "a #1"] and inner.batches[-1] == ["c"]  # one call, misses only
    assert chat.complete(user("c")) == "c #3" and len(inner.batches) == 2
    assert chat.stats == {"hits": 4, "misses": 3, "uncached": 0}
    # other sampling settings are other keys
    assert chat.complete(user("a"), max_tokens=5) == "a #4"
    assert chat.complete(user("a"), max_tokens=5) == "a #4"


def test_cached_chat_never_serves_sampled_requests_stale(tmp_path):
    inner = CountingChat()
    chat = CachedChat(inner, tmp_path / "chat.sqlite")
    stored = len(chat._cache)
    assert chat.complete(user("a"), temperature=0.7) == "a #1"
    assert chat.complete(user("a"), temperature=0.7) == "a #2"  # sampled: asked each time
    assert chat.complete_many([user("a"), user("a")], temperature=0.7) == ["a #3", "a #4"]  # independent draws
    assert len(chat._cache) == stored
    # a seed makes sampling reproducible, hence cacheable, under its own key
    assert chat.complete(user("a"), temperature=0.7, seed=1) == "a #5"
    assert chat.complete(user("a"), temperature=0.7, seed=1) == "a #5"
    assert chat.complete(user("a"), temperature=0.7, seed=2) == "a #6"
    # a backend sampling by default is never cached unless the call is deterministic
    sampling_inner = CountingChat(temperature=1.0)
    sampler = CachedChat(sampling_inner, tmp_path / "other.sqlite")
    assert sampler.complete(user("a")) != sampler.complete(user("a"))
    assert sampler.complete(user("a"), temperature=0) == sampler.complete(user("a"), temperature=0)


def test_cached_chat_does_not_cache_errors(tmp_path):
    inner = CountingChat()
    chat = CachedChat(inner, tmp_path / "chat.sqlite")
    replies = chat.complete_many([user("fail once"), user("ok")])
    assert isinstance(replies[0], BackendError) and replies[1] == "ok #2"
    with pytest.raises(BackendError, match="fail once failed"):
        chat.complete(user("fail once"))
    assert inner.batches == [["fail once", "ok"], ["fail once"]]


def test_cached_chat_file_is_reused_by_another_instance_and_process(tmp_path):
    path = tmp_path / "shared.sqlite"
    chat = CachedChat(CountingChat(), path)
    image_request = with_image("Colour?", pattern_image())
    assert chat.complete_many([user("a")]) == ["a #1"]
    image_reply = CachedChat(ScriptedChat(write_script(tmp_path / "s.jsonl", [{"match": "Colour", "response": "red"}])),
                             path).complete(image_request, temperature=0)
    chat.close()

    again = CountingChat()
    assert CachedChat(again, path).complete(user("a")) == "a #1" and again.batches == []

    # A resumed run in a fresh process: the inner backend refuses to be called.
    program = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from PIL import Image
from harness.backends import ChatBackend, CachedChat

class Refuse(ChatBackend):
    fingerprint = {ScriptedChat(tmp_path / "s.jsonl").fingerprint!r}
    def complete(self, messages, **sampling):
        raise SystemExit("the model was asked")

image = Image.new("RGB", (8, 6))
image.putdata([((x * 31) % 256, (y * 47) % 256, (x * y) % 256) for y in range(6) for x in range(8)])
messages = [{{"role": "user", "content": [{{"type": "image", "image": image}}, {{"type": "text", "text": "Colour?"}}]}}]
print(CachedChat(Refuse(), {str(path)!r}).complete(messages, temperature=0))
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == image_reply == "red"


def test_cache_option_of_make_chat_backend(tmp_path):
    script = write_script(tmp_path / "s.jsonl", [{"match": "hi", "response": "hello"}])
    chat = make_chat_backend("scripted", path=str(script), cache=tmp_path / "c.sqlite")
    assert isinstance(chat, CachedChat) and chat.path == tmp_path / "c.sqlite"
    assert chat.complete(user("hi"), temperature=0) == "hello"
    default = make_chat_backend("scripted", path=str(script), cache=True)
    assert default.path == Path(os.environ["HARNESS_CACHE_DIR"]) / "chat.sqlite"  # per test (conftest)
    assert isinstance(with_cache(ScriptedChat(script), tmp_path / "d.sqlite"), CachedChat)
    assert not isinstance(make_chat_backend("scripted", path=str(script)), CachedChat)


def test_what_counts_as_deterministic(qwen3_folder, monkeypatch):
    from harness.backends import TransformersChat

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    openai_default = OpenAIChat("m", base_url="http://127.0.0.1:9/v1")
    assert is_deterministic(openai_default, {})
    assert not is_deterministic(openai_default, {"temperature": 0.7})
    assert is_deterministic(openai_default, {"temperature": 0.7, "seed": 3})
    reasoning = OpenAIChat("m", base_url="http://127.0.0.1:9/v1", temperature=None)  # the server's default
    assert not is_deterministic(reasoning, {}) and is_deterministic(reasoning, {"seed": 1})
    local = TransformersChat(str(qwen3_folder))
    assert is_deterministic(local, {})  # greedy unless a temperature is set
    assert not is_deterministic(local, {"temperature": 0.5})
    assert not is_deterministic(TransformersChat(str(qwen3_folder), temperature=0.6), {})
    assert is_deterministic(TransformersChat(str(qwen3_folder), temperature=0.6, seed=0), {})
    assert is_deterministic(VLLMChat("m"), {}) and not is_deterministic(VLLMChat("m", temperature=1.0), {})


def test_backends_are_imported_lazily():
    """Importing the package loads none of the heavy engines."""
    program = ("import sys; import harness.backends; "
               "print(sorted(m for m in ('torch', 'transformers', 'vllm', 'google.genai') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    from harness.backends import CHAT_BACKENDS

    assert CHAT_BACKENDS.names() == ["genai", "openai", "scripted", "transformers", "vllm"]
