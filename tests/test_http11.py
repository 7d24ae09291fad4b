"""The lean HTTP/1.1 client against a server that writes raw bytes: framing (length, chunked, the
connection's end), compression, kept-alive connections (reused, closed by the server while idle),
redirects, broken, cut and stalled replies, resets, and the proxy rule that hands a request to httpx2
instead; then through OpenAIChat: failures retried as the remote backends retry them, and named after
the last attempt, and a request through a proxy."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import pytest

from harness.backends.http11 import Http11Pool, HttpError, proxy_for


RESET = object()


class RawServer:
    """Answers each request on a connection with the next of ``replies`` (bytes, or a callable
    taking the request's bytes); ``close_after`` closes a connection after that many replies."""

    def __init__(self, replies, close_after: int | None = None) -> None:
        self.replies = list(replies)
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while self.replies:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                reply = self.replies.pop(0)
                if reply is RESET:  # an abortive close: the client reads a reset
                    writer.transport.abort()
                    return
                writer.write(reply(request) if callable(reply) else reply)
                await writer.drain()
                answered += 1
                if self.close_after is not None and answered >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


async def serve(server: RawServer):
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    return listener, f"http://127.0.0.1:{port}/v1/chat/completions"


def ok(body: bytes = b'{"ok": 1}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra + \
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def run(replies, calls, close_after=None, headers=None):
    """Each call's response (or exception), the server's requests and its connections."""
    async def main():
        server = RawServer(replies, close_after)
        listener, url = await serve(server)
        pool = Http11Pool(url, 4, headers or {"Authorization": "Bearer k"}, None)
        results = []
        for call in calls:
            try:
                results.append(await call(pool))
            except Exception as exc:  # noqa: BLE001 - the test reads it
                results.append(exc)
            await asyncio.sleep(0.01)
        await pool.aclose()
        listener.close()
        return results, server
    return asyncio.run(main())


def post(content=b"{}", **options):
    return lambda pool: pool.post(content, **options)


def test_a_request_is_sent_whole_and_connections_are_reused():
    (first, second), server = run([ok(b"one"), ok(b"two")], [post(b'{"a":1}', headers={"X-Trace": "t"},
                                                                    params={"api-version": "2"}), post()])
    assert (first.status_code, first.text, first.is_success) == (200, "one", True)
    assert second.text == "two" and server.connections == 1
    request = server.requests[0]
    assert request.startswith(b"POST /v1/chat/completions?api-version=2 HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:" in request and b"\r\nauthorization: Bearer k\r\n" in request
    assert b"\r\nx-trace: t\r\n" in request and request.endswith(b'\r\n\r\n{"a":1}')


def test_chunked_compressed_and_connection_framed_bodies():
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4;ext=1\r\nhell\r\n7\r\no world\r\n0\r\nTrailer: x\r\n\r\n")
    gzipped = gzip.compress(b"zipped")
    deflated = zlib.compress(b"deflated")
    replies = [chunked, ok(gzipped, b"Content-Encoding: gzip\r\n"), ok(deflated, b"Content-Encoding: deflate\r\n"),
               b"HTTP/1.0 200 OK\r\n\r\nuntil the end"]
    results, server = run(replies, [post()] * 4)
    assert [r.text for r in results] == ["hello world", "zipped", "deflated", "until the end"]


def test_a_connection_the_server_closed_while_idle_is_replaced():
    (first, second), server = run([ok(b"one"), ok(b"two")], [post(), post()], close_after=1)
    assert (first.text, second.text) == ("one", "two") and server.connections == 2


def test_connection_close_is_honoured():
    replies = [ok(b"one", b"Connection: close\r\n"), ok(b"two")]
    (first, second), server = run(replies, [post(), post()])
    assert (first.text, second.text) == ("one", "two") and server.connections == 2


def test_a_redirect_to_the_same_origin_is_followed_and_another_origin_is_not():
    moved = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /v2/chat\r\nContent-Length: 0\r\n\r\n"
    away = b"HTTP/1.1 308 Permanent Redirect\r\nLocation: http://elsewhere.example/x\r\nContent-Length: 0\r\n\r\n"
    (followed, kept), server = run([moved, ok(b"here"), away], [post(b"{}"), post(b"{}")])
    assert followed.text == "here" and server.requests[1].startswith(b"POST /v2/chat HTTP/1.1")
    assert kept.status_code == 308 and not kept.is_success


def test_broken_replies_are_connection_failures():
    chunks_cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
    replies = [b"SMTP ready\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", chunks_cut,
               b"HTTP/1.1 200 OK\r\nContent-Le", ok(b"x", b"Content-Encoding: br\r\n"),
               ok(b"not gzip", b"Content-Encoding: gzip\r\n"), ok(b"", b"Content-Length: -3\r\n")]
    # each reply on its own connection, which the server then closes: the cut ones end mid-response
    results, _ = run(replies, [post()] * len(replies), close_after=1)
    assert all(isinstance(r, HttpError) for r in results), results
    words = ["status line", "inside the response's body", "inside the response's body",
             "inside the response's headers", "Content-Encoding", "does not decompress", "Content-Length"]
    assert [word in str(r) for word, r in zip(words, results)] == [True] * len(words)


def test_a_stalled_response_times_out_and_its_connection_is_dropped():
    part = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart"  # and then nothing
    results, server = run([part, ok(b"next")],
                          [post(timeout=0.2), post()])
    assert isinstance(results[0], asyncio.TimeoutError)
    assert results[1].text == "next" and server.connections == 2  # the cut connection was not reused


def test_an_sdk_timeout_object_bounds_the_request():
    import httpx2

    part = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart"
    # the second reply keeps the server waiting on the connection, not closing it
    (result,), _ = run([part, ok()], [post(timeout=httpx2.Timeout(0.2, connect=0.1))])
    assert isinstance(result, asyncio.TimeoutError)


def test_a_reset_before_any_reply_on_a_kept_connection_is_sent_again_once():
    (first, second), server = run([ok(b"one"), RESET, ok(b"two")], [post(), post()])
    assert (first.text, second.text) == ("one", "two") and server.connections == 2


def test_a_reset_on_a_fresh_connection_is_a_connection_failure():
    (result,), _ = run([RESET], [post()])
    assert isinstance(result, OSError)


def test_a_refused_connection_raises_an_os_error():
    async def main():
        pool = Http11Pool("http://127.0.0.1:9/v1", 2, {}, None)
        with pytest.raises(OSError):
            await pool.post(b"{}")
    asyncio.run(main())


def test_proxies_from_the_environment(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for("https://api.example.com/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert proxy_for("https://api.example.com/v1") == "http://proxy.internal:3128"
    assert proxy_for("http://api.example.com/v1") is None
    monkeypatch.setenv("NO_PROXY", "api.example.com")
    assert proxy_for("https://api.example.com/v1") is None


def test_openai_chat_uses_httpx_where_a_proxy_applies(monkeypatch):
    from harness.backends import OpenAIChat
    from harness.backends.openai_chat import _PooledClients

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = OpenAIChat("m", base_url="https://api.example.com/v1")
    direct = OpenAIChat("m", base_url="http://127.0.0.1:1/v1")
    assert isinstance(proxied._open_transport(), _PooledClients)
    assert isinstance(direct._open_transport(), Http11Pool)


# =========================================================================== through OpenAIChat

def completion(text: str) -> bytes:
    return ok(json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": text}}]}).encode())


def status(code: int, extra: bytes = b"") -> bytes:
    body = b'{"error": {"message": "busy"}}'
    return (f"HTTP/1.1 {code} X\r\nContent-Length: {len(body)}\r\n".encode() + extra + b"\r\n" + body)


def chat_outcome(replies, monkeypatch, environment=None, **options):
    """What OpenAIChat.acomplete gives against the raw server (each attempt on a connection of
    its own), and the server."""
    from harness.backends import BackendError, OpenAIChat

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (environment or {}).items():
        monkeypatch.setenv(name, value)

    async def main():
        server = RawServer(replies, close_after=1)
        listener, url = await serve(server)
        base = options.pop("base_url", url.removesuffix("chat/completions"))
        chat = OpenAIChat("m", base_url=base, backoff_s=0.01, max_backoff_s=0.02, **options)
        try:
            outcome = await chat.acomplete([{"role": "user", "content": "hi"}])
        except BackendError as exc:
            outcome = exc
        chat.close()
        listener.close()
        return outcome, server
    return asyncio.run(main())


def test_resets_cut_replies_stalls_and_busy_statuses_are_retried(monkeypatch):
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"id\":"
    stalled = lambda request: b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"  # noqa: E731
    replies = [RESET, cut, status(503), status(429, b"Retry-After: 0\r\n"), status(500), completion("finally")]
    outcome, server = chat_outcome(replies, monkeypatch, max_retries=5)
    assert outcome == "finally" and len(server.requests) == 6
    # a partial reply that then stalls is cut at the deadline and tried again
    outcome, server = chat_outcome([stalled, completion("late")], monkeypatch, max_retries=1, timeout_s=0.3)
    assert outcome == "late" and len(server.requests) == 2


def test_failures_past_the_retries_are_named(monkeypatch):
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"
    outcome, server = chat_outcome([cut] * 3, monkeypatch, max_retries=2)
    assert "connection failed" in str(outcome) and "inside the response's body" in str(outcome)
    assert outcome.attempts == 3 and len(server.requests) == 3
    outcome, _ = chat_outcome([status(502)] * 2, monkeypatch, max_retries=1)
    assert (outcome.status, outcome.attempts) == (502, 2)


def test_through_a_proxy_the_request_goes_to_the_proxy(monkeypatch):
    # The raw server plays the proxy: httpx2 sends it the absolute URL of the real endpoint.
    from harness.backends import OpenAIChat

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)

    async def scenario():
        server = RawServer([completion("via proxy")], close_after=1)
        listener, url = await serve(server)
        monkeypatch.setenv("HTTP_PROXY", url.split("/v1")[0])
        chat = OpenAIChat("m", base_url="http://api.invalid/v1", max_retries=0)
        reply = await chat.acomplete([{"role": "user", "content": "hi"}])
        chat.close()
        listener.close()
        return reply, server

    reply, server = asyncio.run(scenario())
    assert reply == "via proxy"
    assert server.requests[0].startswith(b"POST http://api.invalid/v1/chat/completions HTTP/1.1")
