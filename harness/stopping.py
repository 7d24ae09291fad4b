"""Ways a run stops before its end: the circuit breaker (infrastructure failures in a row)
and Ctrl-C, and closing the system once on the way out."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from harness.backends import BackendError
from harness.backends.remote import interrupt_requests
from harness.results import JUDGE_ERROR, infrastructure_failure
from harness.systems.base import System


class CircuitBreaker:
    """Trips after ``threshold`` infrastructure failures in a row: records that failed for the
    infrastructure's sake, and remote calls that failed for good (any endpoint: the system's
    model, a tool's, the judge). A model outcome or an answered call resets the count."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self._lock = threading.Lock()
        self._records = 0
        self._calls = 0
        self.tripped: str | None = None

    def _trip(self, count: int, what: str, last: str) -> None:
        if self.tripped is None:
            self.tripped = f"{count} {what} in a row; the last: {last}"
            interrupt_requests()  # no point in waiting for the requests still in flight

    def call(self, endpoint: str, error: BackendError | None) -> None:
        with self._lock:
            self._calls = 0 if error is None else self._calls + 1
            if self.threshold and self._calls >= self.threshold:
                self._trip(self._calls, "remote calls failed", str(error))

    def record(self, record: dict) -> None:
        failure = infrastructure_failure(record)
        with self._lock:
            self._records = 0 if failure is None else self._records + 1
            if self.threshold and self._records >= self.threshold:
                detail = (record.get("judge") or record.get("paper_judge") or {}).get("error") \
                    if failure == JUDGE_ERROR else record.get("detail")
                first_line = str(detail or "").strip().splitlines()
                self._trip(self._records, "samples failed for the infrastructure's sake",
                           f"{record['task']}/{record['id']}: {failure}: {first_line[0] if first_line else ''}")


class StopRun(Exception):
    """The circuit breaker tripped."""


class Closer:
    """Closes a system once, however many ways out of a run lead here."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.done = False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            self.system.close()


class Interruption:
    """Ctrl-C while a run is going: the first cancels every request in flight and raises
    KeyboardInterrupt; a second, while the run is stopping, ends the process at once."""

    def __init__(self) -> None:
        self.previous: Any = None
        self.hit = False

    def __enter__(self) -> "Interruption":
        # SIGTERM (a scheduler ending the job, `kill`) stops the run as Ctrl-C does.
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.hit:
            os.write(2, b"\ninterrupted again: stopping now (the records written so far are kept)\n")
            os._exit(130)
        self.hit = True
        interrupt_requests()
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for sig, handler in (self.previous or {}).items():
            signal.signal(sig, handler)
