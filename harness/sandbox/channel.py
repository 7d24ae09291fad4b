"""Messages between the parent, the zygote and the programs: framing and bounded decoding.

Every message is a 4-byte big-endian length and a body: JSON from a program
(and in the zygote's first message), marshal between the harness's own
processes and from the parent to a program. The parent reads what a program
sends as hostile input: its size is checked before
it is read, the whole message must arrive before a deadline (a program that
sends one byte at a time cannot hold the parent), and decoding rejects what
Python's ``json`` would accept but the harness could not record or score
(NaN and infinities, numbers past float range, integers of more than
``MAX_DIGITS`` digits, nesting deeper than ``MAX_DEPTH``). The zygote and the
programs trust what the parent sends.

This module runs inside the sandbox too (standard library only).
"""

from __future__ import annotations

import json
import marshal
import math
import select
import socket
import struct
import time

HEADER = struct.Struct("!I")
MAX_DEPTH = 64
MAX_DIGITS = 100


class ProtocolError(RuntimeError):
    """A peer sent something that is not a well-formed, acceptable message."""


class DeadlineReached(Exception):
    """The whole message did not arrive before the deadline."""


def encode(message: dict) -> bytes:
    """A message for a reader that trusts nothing: JSON."""
    data = _ENCODER.encode(message).encode("utf-8")
    return HEADER.pack(len(data)) + data


def encode_trusted(message: dict) -> bytes:
    """A message between the harness's own processes, or from the parent to a program: marshal,
    which both ends of one interpreter read faster than JSON (and which keeps infinities)."""
    data = marshal.dumps(message)
    return HEADER.pack(len(data)) + data


def send_message(sock: socket.socket, message: dict, fds: list[int] | None = None, trusted: bool = False) -> int:
    """Send one message (with file descriptors riding on its first bytes); returns its size."""
    data = encode_trusted(message) if trusted else encode(message)
    if fds:
        sent = socket.send_fds(sock, [data], fds)
        if sent < len(data):
            sock.sendall(data[sent:])
    else:
        sock.sendall(data)
    return len(data)


def send_before(sock: socket.socket, message: dict, deadline: float) -> None:
    """Send one trusted message on a blocking socket without blocking past ``deadline`` (socket.timeout)."""
    data = memoryview(encode_trusted(message))
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    while data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            raise socket.timeout("the peer stopped reading")
        try:
            data = data[sock.send(data, socket.MSG_DONTWAIT):]
        except BlockingIOError:
            continue


def _reject_constant(name: str):
    raise ProtocolError(f"the value {name} is not allowed")


def _bounded_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"the number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ProtocolError(f"an integer of {len(text.lstrip('-'))} digits (the limit is {MAX_DIGITS})")
    return int(text)


_ENCODER = json.JSONEncoder(ensure_ascii=False)  # built once: json.dumps with options builds one per call
_STRICT = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_bounded_float, parse_int=_bounded_int)


def _check_depth(value) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ProtocolError(f"nesting deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))


def decode(payload: bytes) -> dict:
    """One message a program sent, as a JSON object within the bounds above."""
    try:
        message = _STRICT.decode(payload.decode("utf-8"))
    except ProtocolError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed message: {str(exc)[:200]}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    _check_depth(message)
    return message


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from a trusted peer (blocking)."""
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise EOFError("peer closed the channel")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def recv_trusted(sock: socket.socket) -> dict:
    """A trusted message (see :func:`encode_trusted`): no bounds, no deadline."""
    (size,) = HEADER.unpack(recv_exact(sock, HEADER.size))
    return marshal.loads(recv_exact(sock, size))


def recv_with_fds(sock: socket.socket, max_fds: int = 1) -> tuple[dict, list[int]]:
    """A trusted message whose first bytes may carry file descriptors (the control channel)."""
    head, fds, _, _ = socket.recv_fds(sock, HEADER.size, max_fds)
    if not head:
        for fd in fds:
            socket.close(fd)
        raise EOFError("peer closed the control channel")
    if len(head) < HEADER.size:
        head += recv_exact(sock, HEADER.size - len(head))
    (size,) = HEADER.unpack(head)
    return marshal.loads(recv_exact(sock, size)), list(fds)


class MessageReader:
    """Reads a hostile peer's messages, each bounded in size and in time."""

    def __init__(self, sock: socket.socket, max_size: int) -> None:
        self.sock, self.max_size = sock, max_size
        self.buffer = bytearray()

    def _fill(self, needed: int, deadline: float) -> None:
        while len(self.buffer) < needed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineReached
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(max(needed - len(self.buffer), 1 << 16))
            except socket.timeout:
                raise DeadlineReached from None
            if not chunk:
                raise EOFError("the program closed its channel")
            self.buffer += chunk

    def read(self, deadline: float) -> tuple[dict, int]:
        """The next message and its size in bytes; raises DeadlineReached, EOFError or ProtocolError."""
        self._fill(HEADER.size, deadline)
        (size,) = HEADER.unpack_from(self.buffer)
        if size > self.max_size:
            raise ProtocolError(f"a message of {size} bytes exceeds the {self.max_size}-byte limit")
        self._fill(HEADER.size + size, deadline)
        payload = bytes(self.buffer[HEADER.size:HEADER.size + size])
        del self.buffer[:HEADER.size + size]
        return decode(payload), size
