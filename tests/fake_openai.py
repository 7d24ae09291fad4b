"""A scripted OpenAI-compatible chat server on 127.0.0.1, for tests of remote backends.

Each request takes the next scripted ``Reply`` (else the one ``respond`` makes
of its body, else the default one) and is recorded with its path, JSON body,
headers and arrival time; the server also counts how many requests are in
flight at once.

Run as a script (``python fake_openai.py DELAY``), it is instead a lean
asyncio server for throughput measurements, meant for its own process so that
it does not compete with the client for the GIL: it answers every chat
completion with "yes" after DELAY seconds, prints its port, and reports
``{"requests": ..., "max_in_flight": ...}`` on ``GET /stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator


@dataclass
class Reply:
    """What the server does with one request."""

    status: int = 200
    content: Any = "yes"  # the message content of a 200 chat completion
    body: bytes | dict | None = None  # a raw body instead of a chat completion
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    refusal: str | None = None
    trickle: float = 0.0  # seconds between the body's bytes, written one at a time (a slow proxy)
    drop: bool = False  # hang up without a reply


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet request handler that reads and writes JSON bodies, for the tests' fake servers."""

    def read_json(self) -> Any:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")

    def send_json(self, status: int, data: bytes | Any, headers: dict[str, str] | None = None) -> None:
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def send_trickled(self, status: int, data: bytes, headers: dict[str, str], interval: float,
                      stopping: threading.Event) -> None:
        """The headers at once, then the body one byte every ``interval`` seconds."""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()
        for index in range(len(data)):
            self.wfile.write(data[index:index + 1])
            self.wfile.flush()
            if stopping.wait(interval):
                return

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


class _Handler(JsonHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        server: ChatServer = self.server  # type: ignore[assignment]
        body = self.read_json()
        with server.lock:
            server.requests.append({"path": self.path, "body": body, "time": time.monotonic(),
                                    "headers": {k.lower(): v for k, v in self.headers.items()}})
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            if server.script:
                reply = server.script.pop(0)
            else:
                reply = server.respond(body) if server.respond is not None else server.default
        try:
            if reply.delay:
                server.stopping.wait(reply.delay)
        finally:
            # Counted out before the reply is written, so the client cannot have
            # started its next request while this one still counts.
            with server.lock:
                server.in_flight -= 1
        if reply.drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if reply.body is not None:
            data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        elif reply.status == 200 and self.path.endswith("/responses"):
            data = json.dumps({"id": "resp_1", "object": "response", "status": "completed", "model": "m",
                               "output": [{"type": "reasoning", "id": "rs_1", "summary": []},
                                          {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                                           "content": [{"type": "output_text", "text": reply.content,
                                                        "annotations": []}]}]}).encode()
        elif reply.status == 200:
            message = {"role": "assistant", "content": reply.content}
            if reply.refusal is not None:
                message["refusal"] = reply.refusal
            data = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000,
                               "model": "m", "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        else:
            data = json.dumps({"error": {"message": f"scripted failure {reply.status}", "type": "server_error",
                                         "code": None}}).encode()
        try:
            if reply.trickle:
                self.send_trickled(reply.status, data, reply.headers, reply.trickle, server.stopping)
            else:
                self.send_json(reply.status, data, reply.headers)
        except OSError:  # the client gave up waiting (timeout tests)
            pass


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True
    # The default listen backlog (5) drops connections when more clients connect
    # at once, which then wait a second for the SYN to be resent.
    request_queue_size = 64

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.script: list[Reply] = []
        self.default = Reply()
        self.respond: Callable[[dict], Reply] | None = None  # the reply to a request's body
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out hang up mid-reply; that is expected here


@contextlib.contextmanager
def running_chat_server(monkeypatch: Any) -> Iterator[ChatServer]:
    """A started server; proxies are bypassed so requests stay on loopback."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    chat_server = ChatServer()
    thread = threading.Thread(target=chat_server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield chat_server
    finally:
        chat_server.stopping.set()
        chat_server.shutdown()
        chat_server.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- a lean server for throughput


_COMPLETION = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "m",
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": "yes"}}],
                          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()


def _http_reply(data: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)


async def _serve_fast(delay: float) -> None:
    """HTTP/1.1 with keep-alive and no more parsing than the tests need."""
    stats = {"requests": 0, "max_in_flight": 0}
    in_flight = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if head.startswith(b"GET /stats"):
                    writer.write(_http_reply(json.dumps(stats).encode()))
                    continue
                stats["requests"] += 1
                in_flight += 1
                stats["max_in_flight"] = max(stats["max_in_flight"], in_flight)
                await asyncio.sleep(delay)
                in_flight -= 1
                writer.write(_http_reply(_COMPLETION))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve_fast(float(sys.argv[1])))


KEY_ENV = "TEST_CHAT_KEY"  # tests set it; the backends read their key from it


def make_chat(server: ChatServer, **options: Any):
    """An OpenAIChat on the test server with short waits between retries."""
    from harness.backends import OpenAIChat

    settings = {"model": "test-model", "base_url": server.url, "api_key_env": KEY_ENV, "backoff_s": 0.01,
                "max_backoff_s": 0.05, "timeout_s": 5, **options}
    return OpenAIChat(**settings)
