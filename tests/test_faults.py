"""Remote calls against a misbehaving server: every failure is a BackendError saying
what happened, after the policy's attempts, and no request outlives its deadline.

The scripted server (tests/fake_openai.py) answers with error statuses, with and
without Retry-After, hangs, trickles its reply a byte at a time, hangs up, or
sends a body that is not JSON; a port nobody listens on stands for a dead
endpoint. The time bounds below are not performance measurements: each is far
above what the behaviour needs and far below what the fault would cost without
it (a trickled reply here takes minutes to arrive).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from fake_openai import KEY_ENV, Reply, make_chat, running_chat_server
from harness.backends import BackendError, OpenAIChat
from harness.backends.remote import interrupt_requests, interrupted, reset_interrupt
from harness.tools.vqa import ToolFailure, VqaTool


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-key")
    with running_chat_server(monkeypatch) as chat_server:
        yield chat_server


@pytest.fixture(autouse=True)
def no_interrupt_left():
    yield
    reset_interrupt()


def user(text: str = "hi") -> list[dict]:
    return [{"role": "user", "content": text}]


def dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def failure(chat: OpenAIChat) -> BackendError:
    with pytest.raises(BackendError) as caught:
        chat.complete(user())
    return caught.value


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_transient_statuses_with_and_without_retry_after_are_retried_then_named(server, status):
    server.script = [Reply(status, headers={"retry-after": "0.05"}), Reply(status)]
    server.default = Reply(status)
    error = failure(make_chat(server, max_retries=2))
    assert f"HTTP {status} (scripted failure {status}) after 3 attempts" in str(error)
    assert (error.status, error.attempts, len(server.requests)) == (status, 3, 3)
    assert server.url.rstrip("/v1") in str(error)  # the endpoint is named


def test_a_trickled_reply_cannot_hold_a_request_past_its_deadline(server):
    server.default = Reply(content="yes " * 50, trickle=0.5)  # the whole reply would take minutes
    chat = make_chat(server, timeout_s=0.5, max_retries=1)
    start = time.monotonic()
    error = failure(chat)
    assert "no response within 0.5 s after 2 attempts" in str(error)
    assert time.monotonic() - start < 10  # two deadlines and a backoff, not the reply's minutes
    assert len(server.requests) == 2


def test_a_hung_server_times_out_per_attempt(server):
    server.default = Reply(delay=60)
    chat = make_chat(server, timeout_s=0.3, max_retries=2)
    start = time.monotonic()
    assert "no response within 0.3 s after 3 attempts" in str(failure(chat))
    assert time.monotonic() - start < 10


def test_dropped_connections_are_retried_then_named(server):
    server.script = [Reply(drop=True), Reply(drop=True)]
    assert make_chat(server, max_retries=2).complete(user()) == "yes"
    server.default = Reply(drop=True)
    error = failure(make_chat(server, max_retries=1))
    assert "connection failed" in str(error) and "after 2 attempts" in str(error)


def test_malformed_json_fails_at_once(server):
    server.default = Reply(body=b'{"choices": [')
    error = failure(make_chat(server))
    assert "the reply is not JSON" in str(error) and len(server.requests) == 1


def test_a_dead_port_fails_after_the_policy_s_attempts(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    chat = OpenAIChat("m", base_url=f"http://127.0.0.1:{dead_port()}/v1", max_retries=1, backoff_s=0.01)
    error = failure(chat)
    assert "connection failed (ConnectionRefusedError" in str(error) and error.attempts == 2


def test_complete_many_puts_each_failure_in_its_place(server):
    def respond(body):
        return Reply(400) if body["messages"][0]["content"] == "bad" else Reply(content="ok")

    server.respond = respond
    replies = make_chat(server).complete_many([user("a"), user("bad"), user("c")])
    assert replies[0] == "ok" and replies[2] == "ok"
    assert isinstance(replies[1], BackendError) and "HTTP 400" in str(replies[1])


def test_interrupting_cancels_requests_in_flight_and_refuses_new_ones(server):
    server.default = Reply(delay=60)
    chat = make_chat(server, timeout_s=120)
    outcome: list = []

    def call():
        try:
            outcome.append(chat.complete(user()))
        except BackendError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    while not server.requests:
        time.sleep(0.01)
    interrupt_requests()
    thread.join(timeout=10)
    assert not thread.is_alive() and isinstance(outcome[0], BackendError)
    assert "cancelled" in str(outcome[0]) and interrupted()
    error = failure(chat)  # nothing is sent while interrupted
    assert "not sent: the run was interrupted" in str(error) and len(server.requests) == 1
    reset_interrupt()
    server.default = Reply(content="back")
    assert chat.complete(user()) == "back"
    chat.close()


def test_the_vqa_tool_has_the_same_deadline(server):
    from PIL import Image

    server.default = Reply(content="red", trickle=0.5)
    tool = VqaTool(base_url=server.url, api_key_env=KEY_ENV, timeout_s=0.3, max_retries=0)
    with pytest.raises(ToolFailure, match="no response within 0.3 s after 1 attempt"):
        tool.answer(Image.new("RGB", (8, 8)), None, "what colour?")
    tool.close()
