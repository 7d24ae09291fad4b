"""Offline tests of the backends' asyncio interface (``acomplete``, ``acomplete_many``).

- OpenAIChat's native async path against the scripted HTTP server of
  ``fake_openai``: replies in order, the same retries, attempts and messages
  as the sync path, timeouts, the concurrency bound counted at the server,
  the same request on the wire, and one backend used from several loops;
- the client-side rate limit, shared by sync and async calls;
- the default, thread-based ``acomplete`` of a sync-only backend, and the
  batched one of a BatchChatBackend;
- CachedChat's async path: hits never sent, repeats sent once;
- throughput: 1,280 requests, 256 in flight, against a server in another
  process answering after 200 ms.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness.backends import BackendError, BatchChatBackend, CachedChat, ChatBackend, OpenAIChat, ScriptedChat
from harness.backends.retry import RateLimiter, RetryPolicy
from fake_openai import ChatServer, KEY_ENV, Reply, make_chat, running_chat_server



def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-key")
    with running_chat_server(monkeypatch) as chat_server:
        yield chat_server




def echo(body: dict) -> Reply:
    """Answers with the request's last message, after a delay that makes later
    requests finish first; "bad" gets a 400."""
    text = body["messages"][-1]["content"]
    if text == "bad":
        return Reply(400)
    return Reply(content=f"echo {text}", delay=0.2 - 0.02 * int(text[1:]))


def sync_and_async_outcome(chat: OpenAIChat, messages: list[dict]) -> tuple[Any, Any]:
    """What ``complete`` and ``acomplete`` each give: the reply, or (message, status, attempts)."""

    def outcome(call) -> Any:
        try:
            return call()
        except BackendError as exc:
            return str(exc), exc.status, exc.attempts

    return outcome(lambda: chat.complete(messages)), outcome(lambda: asyncio.run(chat.acomplete(messages)))


# =========================================================================== OpenAIChat, async


def test_acomplete_many_keeps_order_and_puts_errors_in_place(server):
    server.respond = echo
    chat = make_chat(server, max_retries=0)
    texts = [f"q{i}" for i in range(8)]
    replies = asyncio.run(chat.acomplete_many([user(text) for text in texts[:4]] + [user("bad")]
                                              + [user(text) for text in texts[4:]]))
    assert replies[:4] + replies[5:] == [f"echo {text}" for text in texts]
    assert isinstance(replies[4], BackendError) and replies[4].status == 400
    assert "HTTP 400 (scripted failure 400) after 1 attempt" in str(replies[4])
    with pytest.raises(ValueError):  # malformed messages fail the call before anything is sent
        asyncio.run(chat.acomplete_many([user("q1"), [{"role": "robot", "content": "x"}]]))
    assert len(server.requests) == 9


@pytest.mark.parametrize("script, options, sent", [
    ([Reply(500), Reply(503), Reply(content="ok")], {}, 3),
    ([Reply(500)] * 3, {"max_retries": 2}, 3),
    ([Reply(400)], {}, 1),
    ([Reply(429, headers={"retry-after-ms": "300"}), Reply(content="ok")], {"backoff_s": 0.001}, 2),
    ([Reply(429, headers={"retry-after": "3600"})], {}, 1),
    ([Reply(503, body=b"")] * 2, {"max_retries": 1}, 2),
    ([Reply(502, body=b"upstream down")] * 2, {"max_retries": 1}, 2),
    ([Reply(body=b"<html>502 Bad Gateway</html>")], {}, 1),
    ([Reply(body={"error": {"message": "model overloaded"}})], {}, 1),
    ([Reply(content=None, refusal="I cannot help with that.")], {}, 1),
])
def test_async_retries_and_failures_match_the_sync_path(server, script, options, sent):
    chat = make_chat(server, **options)
    results = []
    for call in (lambda: chat.complete(user("hi")), lambda: asyncio.run(chat.acomplete(user("hi")))):
        server.script[:] = list(script)
        before = len(server.requests)
        start = time.monotonic()
        try:
            outcome: Any = call()
        except BackendError as exc:
            outcome = (str(exc), exc.status, exc.attempts)
        results.append((outcome, len(server.requests) - before, time.monotonic() - start))
    (sync, sync_sent, sync_s), (asynchronous, async_sent, async_s) = results
    assert asynchronous == sync and async_sent == sync_sent == sent
    if "retry-after-ms" in script[0].headers:  # the wait the server asked for, not our 1 ms backoff
        assert sync_s >= 0.29 and async_s >= 0.29


def test_async_401_names_the_missing_key_variable(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    server.default = Reply(401)
    sync, asynchronous = sync_and_async_outcome(make_chat(server), user("hi"))
    assert asynchronous == sync and "no API key was found in $TEST_CHAT_KEY" in asynchronous[0]
    assert [request["headers"]["authorization"] for request in server.requests] == ["Bearer EMPTY"] * 2


def test_async_timeouts_are_retried_then_fail(server):
    server.default = Reply(delay=3)
    chat = make_chat(server, timeout_s=0.25, max_retries=1)
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"no response within 0.25 s after 2 attempts") as caught:
        asyncio.run(chat.acomplete(user("hi")))
    assert time.monotonic() - start < 2
    assert (caught.value.status, caught.value.attempts, len(server.requests)) == (None, 2, 2)
    server.script += [Reply(delay=3), Reply(content="ok")]
    assert asyncio.run(chat.acomplete(user("hi"))) == "ok"


def test_async_connection_failures_read_as_in_the_sync_path(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    chat = OpenAIChat("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, backoff_s=0.01)
    sync, asynchronous = sync_and_async_outcome(chat, user("hi"))
    # the same failure, attempts and words: both paths send the request the same way
    assert "connection failed (ConnectionRefusedError: [Errno 111]" in asynchronous[0]
    detail = re.compile(r"\d{4,5}")  # the port, in the message
    assert (detail.sub("", asynchronous[0]), *asynchronous[1:]) == (detail.sub("", sync[0]), None, 3)


def test_async_concurrency_is_bounded_at_the_server(server):
    server.default = Reply(content="ok", delay=0.1)
    chat = make_chat(server, max_concurrency=3)
    assert asyncio.run(chat.acomplete_many([user("hi")] * 12)) == ["ok"] * 12
    assert len(server.requests) == 12 and server.max_in_flight == 3  # reached, never passed

    async def many_callers() -> list[str]:  # separate acomplete calls share the loop's slots
        return list(await asyncio.gather(*(chat.acomplete(user("hi")) for _ in range(9))))

    server.max_in_flight = 0
    assert asyncio.run(many_callers()) == ["ok"] * 9 and server.max_in_flight == 3


def test_async_sends_the_request_the_sync_path_sends(server):
    chat = make_chat(server, temperature=0.0, max_tokens=5,
                     extra={"reasoning_effort": "low", "top_k": 3, "extra_body": {"mm_processor_kwargs": {"a": 1}},
                            "extra_headers": {"X-Trace": "t1"}})
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "héllo"}]}]
    assert chat.complete(messages, seed=7) == "yes"
    assert asyncio.run(chat.acomplete(messages, seed=7)) == "yes"
    sync, asynchronous = server.requests
    assert asynchronous["path"] == sync["path"] == "/v1/chat/completions"
    assert asynchronous["body"] == sync["body"]
    assert sync["body"]["top_k"] == 3 and sync["body"]["mm_processor_kwargs"] == {"a": 1}
    for name in ("authorization", "content-type", "accept", "user-agent", "x-trace"):
        assert asynchronous["headers"][name] == sync["headers"][name], name


def test_one_backend_serves_several_event_loops(server):
    server.default = Reply(content="ok", delay=0.05)
    chat = make_chat(server, max_concurrency=2)
    assert asyncio.run(chat.acomplete_many([user("a")] * 4)) == ["ok"] * 4
    [first] = chat._loops.values()
    # asyncio.run's shutdown closed that loop's connections
    assert first.transport.is_closed
    assert asyncio.run(chat.acomplete_many([user("b")] * 4)) == ["ok"] * 4
    [second] = chat._loops.values()  # the ended loop was forgotten
    assert second.transport is not first.transport and second.slots is not first.slots

    # and loops of two threads at once, each with its own slots
    server.max_in_flight = 0
    results: list[list] = []
    threads = [threading.Thread(target=lambda: results.append(asyncio.run(chat.acomplete_many([user("c")] * 4))))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == [["ok"] * 4] * 2 and server.max_in_flight <= 4
    # the sync path still works alongside
    assert chat.complete(user("d")) == "ok"


def test_close_inside_a_running_loop_releases_its_connections(server):
    chat = make_chat(server)

    async def use_then_close() -> Any:
        assert await chat.acomplete(user("hi")) == "yes"
        [state] = chat._loops.values()
        chat.close()
        for _ in range(5):  # the loop closes the dropped transport soon after
            await asyncio.sleep(0)
        return state.transport

    transport = asyncio.run(use_then_close())
    assert transport.is_closed


# =========================================================================== the rate limit


def assert_paced(requests: list[dict], interval: float) -> None:
    """Arrivals at the server spaced by ``interval``. The limiter spaces sends; an
    arrival may lag its send by a few milliseconds on a busy machine, so each gap
    is only checked against half the interval, and their sum against the whole."""
    times = sorted(request["time"] for request in requests)
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert min(gaps) >= interval / 2 and sum(gaps) >= (len(gaps) - 0.2) * interval, gaps


def test_rate_limiter_books_evenly_spaced_send_times():
    limiter = RateLimiter(600)  # one every 0.1 s
    waits = [limiter.reserve() for _ in range(4)]
    assert waits[0] == 0.0
    assert all(abs(wait - 0.1 * index) < 0.01 for index, wait in enumerate(waits))
    with pytest.raises(ValueError):
        RateLimiter(0)
    with pytest.raises(ValueError):
        RetryPolicy(requests_per_minute=-1)
    assert RetryPolicy(requests_per_minute=60).requests_per_minute == 60.0
    assert RetryPolicy().requests_per_minute is None


def test_async_requests_are_paced(server):
    chat = make_chat(server, max_concurrency=5, requests_per_minute=600)
    assert chat.requests_per_minute == 600.0
    start = time.monotonic()
    assert asyncio.run(chat.acomplete_many([user("hi")] * 5)) == ["yes"] * 5
    assert time.monotonic() - start >= 0.39
    assert_paced(server.requests, 0.1)


def test_sync_and_async_calls_share_one_bucket(server):
    chat = make_chat(server, max_concurrency=4, requests_per_minute=600)
    assert chat.complete_many([user("hi")] * 3) == ["yes"] * 3
    assert asyncio.run(chat.acomplete(user("hi"))) == "yes"  # booked after the sync ones
    assert chat.complete(user("hi")) == "yes"
    assert len(server.requests) == 5
    assert_paced(server.requests, 0.1)


def test_retries_are_paced_too(server):
    server.script += [Reply(503), Reply(content="ok")]
    chat = make_chat(server, requests_per_minute=300, backoff_s=0.001)  # 0.2 s apart
    assert asyncio.run(chat.acomplete(user("hi"))) == "ok"
    assert_paced(server.requests, 0.2)


def test_unlimited_by_default(server):
    server.default = Reply(content="ok", delay=0.3)
    chat = make_chat(server, max_concurrency=8)
    assert chat.requests_per_minute is None
    assert asyncio.run(chat.acomplete_many([user("hi")] * 8)) == ["ok"] * 8
    assert server.max_in_flight == 8  # all sent at once, none held back


# =========================================================================== backends without async clients


class SlowSyncChat(ChatBackend):
    """A sync-only backend that blocks for a while; records its threads."""

    def __init__(self, delay: float = 0.2) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.threads: set[str] = set()
        self.in_flight = self.max_in_flight = 0

    @property
    def fingerprint(self) -> str:
        return "slow:1"

    def complete(self, messages, **sampling):
        with self.lock:
            self.threads.add(threading.current_thread().name)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            text = messages[-1]["content"]
            if text == "fail":
                raise BackendError("it failed")
            return f"{text} at {sampling.get('temperature')}"
        finally:
            with self.lock:
                self.in_flight -= 1


def test_default_acomplete_runs_on_bounded_worker_threads():
    chat = SlowSyncChat()

    async def run() -> tuple[list, int]:
        ticks = 0

        async def ticker() -> None:  # runs only if the loop is not blocked
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.ensure_future(ticker())
        replies = await chat.acomplete_many([user(f"q{i}") for i in range(8)] + [user("fail")], temperature=0.5)
        ticking.cancel()
        return replies, ticks

    start = time.monotonic()
    replies, ticks = asyncio.run(run())
    assert time.monotonic() - start < 0.6  # nine 0.2 s calls overlapped
    assert replies[:8] == [f"q{i} at 0.5" for i in range(8)]
    assert isinstance(replies[8], BackendError) and str(replies[8]) == "it failed"
    assert ticks >= 10
    assert all(name.startswith("SlowSyncChat-async") for name in chat.threads)
    with pytest.raises(BackendError, match="it failed"):
        asyncio.run(chat.acomplete(user("fail")))

    bounded = SlowSyncChat(delay=0.1)
    bounded.async_threads = 2
    start = time.monotonic()
    assert len(asyncio.run(bounded.acomplete_many([user("x")] * 6))) == 6
    assert bounded.max_in_flight == 2 and time.monotonic() - start >= 0.29
    # the same threads serve later event loops
    assert asyncio.run(bounded.acomplete(user("y"))) == "y at None" and len(bounded.threads) <= 2


def test_scripted_chat_answers_async(tmp_path):
    script = tmp_path / "s.jsonl"
    script.write_text('{"match": "cubes", "response": "3"}\n')
    chat = ScriptedChat(script)
    assert asyncio.run(chat.acomplete_many([user("How many cubes?"), user("other")]))[0] == "3"


class RecordingBatchChat(BatchChatBackend):
    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    @property
    def fingerprint(self) -> str:
        return "batch:1"

    def complete_many(self, requests, **sampling):
        self.batches.append([messages[-1]["content"] for messages in requests])
        return [BackendError("no") if m[-1]["content"] == "no" else m[-1]["content"].upper() for m in requests]


def test_a_batch_backend_answers_a_whole_list_in_one_call():
    chat = RecordingBatchChat()
    assert asyncio.run(chat.acomplete_many([user("a"), user("b"), user("c")])) == ["A", "B", "C"]
    assert chat.batches == [["a", "b", "c"]]
    assert asyncio.run(chat.acomplete(user("d"))) == "D"
    with pytest.raises(BackendError, match="no"):
        asyncio.run(chat.acomplete(user("no")))


# =========================================================================== CachedChat, async


class AsyncCountingChat(ChatBackend):
    """Numbers its replies; answers only through its async path, recording each call."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.count = 0

    @property
    def fingerprint(self) -> str:
        return "async-counting:1"

    def default_sampling(self) -> dict[str, Any]:
        return {"temperature": 0.0}

    def complete(self, messages, **sampling):
        raise AssertionError("CachedChat.acomplete_many must use the async path")

    async def acomplete_many(self, requests, **sampling):
        texts = [messages[-1]["content"] for messages in requests]
        self.batches.append(texts)
        replies: list[str | BackendError] = []
        for text in texts:
            self.count += 1
            replies.append(BackendError(f"{text} failed") if "fail" in text else f"{text} #{self.count}")
        return replies


def test_cached_chat_async_sends_only_distinct_misses(tmp_path):
    inner = AsyncCountingChat()
    chat = CachedChat(inner, tmp_path / "chat.sqlite")
    first = asyncio.run(chat.acomplete_many([user("a"), user("b"), user("a"), user("fail")]))
    assert first[:3] == ["a #1", "b #2", "a #1"] and isinstance(first[3], BackendError)
    assert inner.batches == [["a", "b", "fail"]]  # the repeat is asked once
    second = asyncio.run(chat.acomplete_many([user("b"), user("c"), user("a"), user("fail")]))
    assert second[:3] == ["b #2", "c #4", "a #1"]
    assert inner.batches[-1] == ["c", "fail"]  # hits not sent; the failure was not stored
    assert asyncio.run(chat.acomplete(user("c"))) == "c #4" and len(inner.batches) == 2
    assert chat.stats == {"hits": 4, "misses": 5, "uncached": 0}
    # sampled requests always reach the model, and are not stored
    assert asyncio.run(chat.acomplete_many([user("a"), user("a")], temperature=0.7)) == ["a #6", "a #7"]
    # the sync path reads what the async path stored
    assert chat.complete_many([user("a"), user("b"), user("c")]) == ["a #1", "b #2", "c #4"]
    assert asyncio.run(chat.acomplete_many([user("a")] * 3)) == ["a #1"] * 3 and len(inner.batches) == 3


def test_cached_openai_chat_async(server, tmp_path):
    chat = CachedChat(make_chat(server), tmp_path / "chat.sqlite")
    server.respond = lambda body: Reply(content=body["messages"][-1]["content"].upper())
    assert asyncio.run(chat.acomplete_many([user("x"), user("y"), user("x")])) == ["X", "Y", "X"]
    assert asyncio.run(chat.acomplete_many([user("y"), user("z")])) == ["Y", "Z"]
    assert sorted(request["body"]["messages"][-1]["content"] for request in server.requests) == ["x", "y", "z"]


# =========================================================================== throughput


def test_async_throughput_against_a_server_in_another_process(monkeypatch):
    """One GRPO step's verifier calls: 1,280 requests, 256 in flight, 200 ms each.
    The floor is 1,280 x 0.2 / 256 = 1.0 s; on 2 cores this takes about 1.6 s.
    The bound here is loose, for slow machines: it catches a client that
    serialises or stalls, not small regressions."""
    import json
    import urllib.request

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fake_openai.py")), "0.2"],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        chat = OpenAIChat("judge", base_url=f"http://127.0.0.1:{port}/v1", max_concurrency=256)
        requests = [user(f"Is step {i} right? Answer yes or no.") for i in range(1280)]
        start = time.monotonic()
        replies = asyncio.run(chat.acomplete_many(requests))
        elapsed = time.monotonic() - start
        assert replies == ["yes"] * 1280
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
            stats = json.load(response)
        assert stats == {"requests": 1280, "max_in_flight": 256}
        print(f"1,280 requests in {elapsed:.2f} s: {1280 / elapsed:.0f} per second")
        assert elapsed < 6.0
    finally:
        server.terminate()
        server.wait(timeout=10)
