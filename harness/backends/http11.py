"""A lean HTTP/1.1 client on asyncio streams: POSTs to one origin over kept-alive connections.

Hundreds of model calls in flight from one process (a GRPO step's verifier
judgements) spend most of their client time in the HTTP stack; a general client
(httpx: anyio, a connection pool walked on every request, h11's event machine)
takes several times the CPU per request of this one, which lets 2 cores keep 256
requests in flight at the server's pace (``benchmarks/reward_throughput.py``
prints the client's CPU per request). It does only what these calls
need: POST with a body of known length, a response framed by ``Content-Length``,
chunked encoding or the connection's end, gzip or deflate bodies, TLS with the
caller's context, and 307/308 redirects to the same origin. Where a proxy applies
(the ``*_PROXY`` variables), the caller uses a general client instead
(:func:`proxy_for`).

A connection is reused only after a complete response that did not ask to close
it; one that the server closed while idle is found before use, or on a request
that got no byte back, which is then sent once more on a new connection (it never
reached the server). A request cancelled mid-way (its deadline) drops its
connection.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from typing import Any, Mapping

_MAX_HEAD = 64 * 1024  # status line and headers
_MAX_REDIRECTS = 5


class HttpError(OSError):
    """The server broke HTTP/1.1 framing, or the connection ended mid-response."""


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (None: connect directly), as a general client reads it."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


@dataclass
class Response:
    status_code: int
    headers: dict[str, str]  # names in lower case
    content: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        charset = "utf-8"
        for part in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = part.strip().partition("=")
            if name.lower() == "charset" and value:
                charset = value.strip('"')
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class Http11Pool:
    """Kept-alive connections to the origin of ``url`` for the running event loop (at most
    ``size`` idle ones kept). ``headers`` go with every request."""

    def __init__(self, url: str, size: int, headers: Mapping[str, str], ssl_context: ssl.SSLContext | None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = host if default_port else f"{host}:{self.port}"
        self.ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        fixed = {"host": self.authority, **{name.lower(): value for name, value in headers.items()}}
        self._fixed = fixed
        self._idle: collections.deque[_Connection] = collections.deque()
        self._size = size
        self._all: set[_Connection] = set()
        self.is_closed = False

    async def post(self, content: bytes, headers: Mapping[str, str] | None = None,
                   params: Mapping[str, Any] | None = None, timeout: float | None = None) -> Response:
        """POST ``content`` to the URL (``params`` added to its query); the whole response."""
        path = self.path
        if params:
            path += ("&" if "?" in path else "?") + urllib.parse.urlencode(params, doseq=True)
        send = self._post(path, content, headers)
        seconds = _seconds(timeout)
        return await (asyncio.wait_for(send, seconds) if seconds is not None else send)

    async def _post(self, path: str, content: bytes, headers: Mapping[str, str] | None) -> Response:
        for _ in range(_MAX_REDIRECTS + 1):
            response = await self._exchange(self._head(path, content, headers), content)
            location = response.headers.get("location")
            if response.status_code not in (307, 308) or not location:
                return response
            target = urllib.parse.urlsplit(urllib.parse.urljoin(f"{self.scheme}://{self.authority}{path}", location))
            if (target.scheme, target.hostname, target.port or (443 if target.scheme == "https" else 80)) != (
                    self.scheme, self.host, self.port):
                return response  # another origin: the redirect is the answer (an error status)
            path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        return response

    def _head(self, path: str, content: bytes, headers: Mapping[str, str] | None) -> bytes:
        fields = dict(self._fixed)
        for name, value in (headers or {}).items():
            fields[name.lower()] = str(value)
        fields["content-length"] = str(len(content))
        lines = [f"POST {path} HTTP/1.1"] + [f"{name}: {value}" for name, value in fields.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _exchange(self, head: bytes, content: bytes) -> Response:
        connection = self._take()
        reused = connection is not None
        if connection is None:
            connection = await self._connect()
        try:
            try:
                response = await self._send(connection, head + content)
            except _NothingRead:
                # A kept-alive connection the server had closed: nothing came back, nothing was done.
                if not reused:
                    raise
                self._drop(connection)
                connection = await self._connect()
                response = await self._send(connection, head + content)
        except BaseException:
            self._drop(connection)
            raise
        if response.headers.get("connection", "").lower() == "close" or len(self._idle) >= self._size:
            self._drop(connection)
        else:
            self._idle.append(connection)
        return response

    async def _send(self, connection: _Connection, data: bytes) -> Response:
        connection.writer.write(data)
        try:
            await connection.writer.drain()
        except ConnectionError:
            raise _NothingRead("the connection was closed") from None
        return await self._read(connection)

    def _take(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.usable():
                return connection
            self._drop(connection)
        return None

    async def _connect(self) -> _Connection:
        if self.is_closed:
            raise HttpError("the connection pool is closed")
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl, limit=_MAX_HEAD,
                                                       server_hostname=self.host if self.ssl else None)
        connection = _Connection(reader, writer)
        self._all.add(connection)
        return connection

    def _drop(self, connection: _Connection) -> None:
        self._all.discard(connection)
        connection.close()

    async def _read(self, connection: _Connection) -> Response:
        reader = connection.reader
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _NothingRead("the server closed the connection before answering") from None
            raise HttpError("the connection ended inside the response's headers") from None
        except asyncio.LimitOverrunError:
            raise HttpError(f"response headers longer than {_MAX_HEAD} bytes") from None
        except ConnectionResetError:
            raise _NothingRead("the server reset the connection before answering") from None
        status, headers = _parse_head(head)
        if 100 <= status < 200:  # an interim response: the real one follows
            return await self._read(connection)
        try:
            body = await _read_body(reader, status, headers)
        except asyncio.IncompleteReadError:
            raise HttpError("the connection ended inside the response's body") from None
        except asyncio.LimitOverrunError:
            raise HttpError(f"a chunk-size line longer than {_MAX_HEAD} bytes") from None
        return Response(status, headers, _decoded(body, headers.get("content-encoding", "").lower()))

    async def aclose(self) -> None:
        self.is_closed = True
        self._idle.clear()
        for connection in list(self._all):
            self._drop(connection)


def _seconds(timeout: Any) -> float | None:
    """A request's ``timeout`` as the SDK takes it: seconds, None, or an httpx2 ``Timeout`` (whose
    longest phase then bounds the whole request here)."""
    if timeout is None or isinstance(timeout, (int, float)):
        return timeout
    phases = [getattr(timeout, name, None) for name in ("connect", "read", "write", "pool")]
    return max((phase for phase in phases if phase is not None), default=None)


class _NothingRead(HttpError):
    """The connection ended before any byte of the response."""


async def _read_body(reader: asyncio.StreamReader, status: int, headers: dict[str, str]) -> bytes:
    encoding = headers.get("transfer-encoding", "").lower()
    if "chunked" in encoding:
        return await _read_chunked(reader)
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            length = -1
        if length < 0:
            raise HttpError(f"unreadable Content-Length {headers['content-length']!r}")
        return await reader.readexactly(length)
    if status in (204, 304):
        return b""
    headers["connection"] = "close"  # framed by the connection's end
    return await reader.read()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise HttpError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise HttpError(f"malformed response header: {line[:100]!r}")
        name = name.strip().lower()
        headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
    if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
        headers["connection"] = "close"
    return int(code), headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError(f"malformed chunk size {line[:40]!r}") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise HttpError("a chunk does not end with CRLF")


def _decoded(body: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return body
    try:
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:  # raw deflate, as some servers send it
                return zlib.decompress(body, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise HttpError(f"a {encoding} body that does not decompress: {exc}") from None
    raise HttpError(f"unsupported Content-Encoding {encoding!r}")
