"""Micro-batching: many threads submit single requests, one worker per model runs them in batches.

Models on one device take turns (one batch at a time per device: a second model's
pass would only slow the first). When its device is free, a model's queue is
dispatched when the batch is full, when no further request can come (every program
in flight is waiting on a tool: see :class:`Occupancy`), or when its oldest request
has waited ``max_wait_s`` of the device's free time. The middle rule is what makes
batches form: programs that run in step reach the same tool together, and the
batch goes as soon as the last of them arrives, without waiting out a window; a
request of a program that is still computing waits for it at most ``max_wait_s``.
Results are delivered to all of a batch's callers at once, so they stay in step
for their next call; and as a request waits while its device is busy, a program
that fell out of step (it started late) finds the others again at its next tool.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, Sequence, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class _Call:
    """One wait of a program on a model or a remote call: whether the program still waits."""

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting = False


class Occupancy:
    """The programs in flight on one tool server, and which of them run their own code.

    A program's thread enters :meth:`program` for the program's lifetime. It
    waits while its request is queued or computed in a batcher, and inside
    :meth:`blocked` (a remote call, another program's computation). Work a tool
    does on the calling thread (decoding the image, the cache) is not waiting: a
    program doing it is about to make a request. When every program in flight
    waits, no new request can arrive: :meth:`all_waiting` says so, and the
    batchers sharing this object dispatch at once. A batcher marks its callers as
    running again before it hands them their results (:meth:`resume`), so that
    another model's batcher never mistakes a program about to continue for one
    still waiting. Threads that never entered :meth:`program` are not counted:
    for them only the batch size and the deadline apply.
    """

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self._programs = 0
        self._running = 0
        self._local = threading.local()
        self._busy: set[str] = set()  # devices running a batch
        self._freed: dict[str, float] = {}  # when each device last finished one

    @contextlib.contextmanager
    def program(self) -> Iterator[None]:
        """The calling thread runs one program until the block ends."""
        if getattr(self._local, "program", False):  # nested: already counted
            yield
            return
        with self.condition:
            self._programs += 1
            self._running += 1
        self._local.program = True
        try:
            yield
        finally:
            self._local.program = False
            with self.condition:
                self._programs -= 1
                self._running -= 1
                self.condition.notify_all()

    @contextlib.contextmanager
    def blocked(self) -> Iterator[None]:
        """The calling thread's program waits until the block ends."""
        call = self.start_wait()
        try:
            yield
        finally:
            self.end_wait(call)

    def start_wait(self) -> _Call | None:
        """The calling thread's program starts waiting: its token, or None when it is not a counted
        program or already waits."""
        if not getattr(self._local, "program", False) or getattr(self._local, "call", None) is not None:
            return None
        call = _Call()
        self._local.call = call
        with self.condition:
            call.waiting = True
            self._running -= 1
            self.condition.notify_all()
        return call

    def end_wait(self, call: _Call | None) -> None:
        """The calling thread goes on (if its batcher has not said so already)."""
        if call is not None:
            self._local.call = None
            self.resume(call)

    def resume(self, call: _Call | None) -> None:
        if call is None or not call.waiting:
            return
        with self.condition:
            call.waiting = False
            self._running += 1

    def all_waiting(self) -> bool:
        """Every counted program in flight waits on a tool (hold ``condition``)."""
        return self._programs > 0 and self._running <= 0

    # The devices, under ``condition``: a batcher claims its device for a batch and releases it after.

    def device_busy(self, device: str | None) -> bool:
        return device is not None and device in self._busy

    def device_freed(self, device: str | None) -> float:
        return self._freed.get(device, 0.0) if device is not None else 0.0

    def claim(self, device: str | None) -> None:
        if device is not None:
            self._busy.add(device)

    def release(self, device: str | None) -> None:
        if device is None:
            return
        with self.condition:
            self._busy.discard(device)
            self._freed[device] = time.monotonic()
            self.condition.notify_all()


@dataclass
class _Item(Generic[In]):
    value: In
    future: Future
    call: _Call | None
    arrived: float


class MicroBatcher(Generic[In, Out]):
    """Runs ``run_batch`` on up to ``max_batch`` queued items at a time.

    ``run_batch`` returns one result per item, in order; an exception in an
    item's place is raised to that item's caller only. If ``run_batch`` itself
    raises, every item of that batch gets the exception. ``max_batch=1`` means
    no batching. Batchers given the same ``occupancy`` (one tool server's
    models) dispatch as soon as every program in flight waits on a tool, and
    those naming the same ``device`` run one batch at a time.
    """

    def __init__(self, run_batch: Callable[[Sequence[In]], Sequence[Out]], max_batch: int = 8,
                 max_wait_s: float = 0.01, name: str = "batcher", occupancy: Occupancy | None = None,
                 device: str | None = None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.occupancy = occupancy or Occupancy()
        self.device = device
        self._queue: collections.deque[_Item] = collections.deque()
        self._closed = False
        self.batches = 0
        self.items = 0
        self.sizes: collections.Counter[int] = collections.Counter()
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    def submit(self, item: In) -> Out:
        future: Future = Future()
        occupancy = self.occupancy
        call = occupancy.start_wait()
        try:
            with occupancy.condition:
                if self._closed:
                    raise RuntimeError("the batcher is closed")
                self._queue.append(_Item(item, future, call, time.monotonic()))
                occupancy.condition.notify_all()
            return future.result()
        finally:
            occupancy.end_wait(call)

    def _deadline(self) -> float:
        """When the oldest request has waited ``max_wait_s`` while the device was free."""
        return max(self._queue[0].arrived, self.occupancy.device_freed(self.device)) + self.max_wait_s

    def _next_batch(self) -> list[_Item] | None:
        """The next batch, with the device claimed for it; None once closed and drained."""
        occupancy = self.occupancy
        with occupancy.condition:
            while True:
                if not self._queue:
                    if self._closed:
                        return None
                    occupancy.condition.wait()
                    continue
                if occupancy.device_busy(self.device):
                    occupancy.condition.wait()  # released with a notification
                    continue
                now = time.monotonic()
                if (len(self._queue) >= self.max_batch or self._closed or occupancy.all_waiting()
                        or now >= self._deadline()):
                    occupancy.claim(self.device)
                    return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                occupancy.condition.wait(self._deadline() - now)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            finally:
                self.occupancy.release(self.device)

    def _run(self, batch: list[_Item]) -> None:
        self.batches += 1
        self.items += len(batch)
        self.sizes[len(batch)] += 1
        try:
            results = self._run_batch([item.value for item in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
        except BaseException as exc:  # every waiting caller must learn of the failure
            results = [exc] * len(batch)
        for item in batch:  # all of them running again before any of them is told
            self.occupancy.resume(item.call)
        for item, result in zip(batch, results):
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    def close(self) -> None:
        """Run what is queued, then stop the worker."""
        with self.occupancy.condition:
            self._closed = True
            self.occupancy.condition.notify_all()
        self._worker.join(timeout=5)
