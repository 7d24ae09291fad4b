"""A scripted OpenAI-compatible chat server on 127.0.0.1, for tests of remote backends.

Each request takes the next scripted ``Reply`` (or the default one) and is
recorded with its path, JSON body and headers; the server also counts how many
requests are in flight at once.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator


@dataclass
class Reply:
    """What the server does with one request."""

    status: int = 200
    content: Any = "yes"  # the message content of a 200 chat completion
    body: bytes | dict | None = None  # a raw body instead of a chat completion
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    refusal: str | None = None


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        server: ChatServer = self.server  # type: ignore[assignment]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        with server.lock:
            server.requests.append({"path": self.path, "body": json.loads(raw or b"{}"),
                                    "headers": {k.lower(): v for k, v in self.headers.items()}})
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            reply = server.script.pop(0) if server.script else server.default
        try:
            if reply.delay:
                server.stopping.wait(reply.delay)
        finally:
            # Counted out before the reply is written, so the client cannot have
            # started its next request while this one still counts.
            with server.lock:
                server.in_flight -= 1
        if reply.body is not None:
            data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
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
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up waiting (timeout tests)
            pass

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.script: list[Reply] = []
        self.default = Reply()
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
