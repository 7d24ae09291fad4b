"""Micro-batching: many threads submit single requests, one worker runs them in batches.

Programs run concurrently and each waits on its own tool call; gathering the
calls that arrive within a short window into one forward pass keeps a GPU busy
without making any single call wait longer than ``max_wait_s``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, Generic, Sequence, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    """Runs ``run_batch`` on up to ``max_batch`` queued items at a time.

    ``run_batch`` returns one result per item, in order; an exception in an
    item's place is raised to that item's caller only. If ``run_batch`` itself
    raises, every item of that batch gets the exception. ``max_batch=1`` means
    no batching.
    """

    def __init__(self, run_batch: Callable[[Sequence[In]], Sequence[Out]], max_batch: int = 8,
                 max_wait_s: float = 0.01, name: str = "batcher") -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[tuple[In, Future] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()
        self.batches = 0
        self.items = 0

    def submit(self, item: In) -> Out:
        future: Future = Future()
        self._queue.put((item, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    entry = self._queue.get(timeout=max(remaining, 0)) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(entry)
            self._run(batch)

    def _run(self, batch: list[tuple[In, Future]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            results = self._run_batch([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
        except BaseException as exc:  # every waiting caller must learn of the failure
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=5)
