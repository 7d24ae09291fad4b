"""One writer per run directory: an advisory lock that dies with its process.

``fcntl.flock`` on ``RUN_DIR/.lock`` is released by the kernel when the holder
exits, however it exits (``kill -9`` included), so a stale lock never blocks a
``--resume``. The file holds the holder's pid and start time, for the message a
second writer gets.
"""

from __future__ import annotations

import fcntl
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another process is writing this run directory."""


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            finally:
                os.close(fd)
            raise RunLockedError(f"{self.path.parent} is being written by {holder}; wait for it to finish or "
                                 f"stop it (a killed process releases the lock at once)") from None
        os.ftruncate(fd, 0)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing releases the lock; the file stays, harmless, for the next holder

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
