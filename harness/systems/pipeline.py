"""Writing programs and running them as two pipelined stages, so neither device waits for the other.

One thread writes the programs of a batch of samples (one vLLM call, or a burst
of API requests) while worker threads run the programs written before, with
their tools. Between the stages is a bounded queue: the next batch is started
as soon as the last one is written and fewer than a batch of programs wait to
run, so the writer runs ahead of the programs by at most two batches and never
idles while they keep up.

A worker that finds the next program waiting runs it at once, without leaving
the tools' ``in_flight`` block: to a tool server that batches requests, the
worker counts as a program in flight for as long as it has programs to run
(and as not in flight only when it has none), so a model's batch is dispatched
neither while a worker is between two programs nor after a program has run out.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, ContextManager, Generic, Iterable, Iterator, TypeVar

Sample = TypeVar("Sample")
Program = TypeVar("Program")
Result = TypeVar("Result")

_STOP = object()


class ProgramPipeline(Generic[Sample, Program, Result]):
    """``write(batch)`` returns, for each sample of the batch in order, a program or a finished
    result; ``run(sample, program)`` returns the result of running it and must not raise (the
    caller turns failures into results); ``in_flight()`` is entered by a worker for as long as it
    runs programs one after the other (see the module docstring)."""

    def __init__(self, write: Callable[[list[Sample]], list[Program | Result]],
                 run: Callable[[Sample, Program], Result], is_result: Callable[[Any], bool],
                 batch: int, workers: int, in_flight: Callable[[], ContextManager[None]] | None = None,
                 name: str = "programs") -> None:
        if workers < 1:
            raise ValueError(f"{name}: programs run at once must be at least 1, got {workers}")
        self._write, self._run, self._is_result = write, run, is_result
        self.batch, self.workers, self.name = batch, workers, name
        self._in_flight = in_flight or contextlib.nullcontext

    def results(self, samples: Iterable[Sample]) -> Iterator[Result]:
        """Each sample's result, as it finishes. ``samples`` is read on the calling thread only,
        ``batch`` samples at a time (the same batches as a stage-by-stage run reads); a batch
        whose writing raises ends the iteration with that exception."""
        source = iter(samples)
        ready: queue.Queue = queue.Queue()  # (sample, program) written and waiting for a worker
        events: queue.Queue = queue.Queue()  # ("written", future) | ("result", result) | ("failed", exception)
        writer = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-writer")
        workers = [threading.Thread(target=self._work, args=(ready, events), name=f"{self.name}-program-{i}",
                                    daemon=True) for i in range(self.workers)]
        for worker in workers:
            worker.start()
        writing = exhausted = finished = False
        waiting_or_running = 0  # programs handed to the workers and not yet answered
        try:
            while True:
                # Programs written and not yet taken by a worker, counted here rather than read
                # off the queue (whose workers may not have woken yet), so that the next batch
                # starts the moment the last one is written and leaves room.
                waiting = max(0, waiting_or_running - self.workers)
                if not writing and not exhausted and waiting < self.batch:
                    batch = list(itertools.islice(source, self.batch)) if self.batch > 0 else []
                    if batch:
                        writing = True
                        future = writer.submit(self._write, batch)
                        future.add_done_callback(lambda f, b=batch: events.put(("written", (b, f))))
                    else:
                        exhausted = True
                if exhausted and not writing and not waiting_or_running:
                    finished = True
                    return
                kind, value = events.get()
                if kind == "failed":
                    raise value
                if kind == "result":
                    waiting_or_running -= 1
                    yield value
                    continue
                writing = False
                batch, future = value
                written = future.result()  # a failed write ends the run, as a stage-by-stage run's did
                if len(written) != len(batch):
                    raise RuntimeError(f"{self.name}: {len(written)} programs written for {len(batch)} samples")
                for sample, program in zip(batch, written):
                    if self._is_result(program):
                        yield program
                    else:
                        waiting_or_running += 1
                        ready.put((sample, program))
        finally:
            # Finished: nothing is left. Stopped early (the run ends): a batch being written is not
            # waited for, and programs not started are not started; running ones end (``close``
            # stops them) before this returns.
            while True:
                try:
                    ready.get_nowait()
                except queue.Empty:
                    break
            for _ in workers:
                ready.put(_STOP)
            writer.shutdown(wait=finished, cancel_futures=True)
            for worker in workers:
                worker.join()

    def _work(self, ready: queue.Queue, events: queue.Queue) -> None:
        try:
            while True:
                item = ready.get()
                if item is _STOP:
                    return
                with self._in_flight():
                    while item is not None and item is not _STOP:
                        sample, program = item
                        events.put(("result", self._run(sample, program)))
                        try:
                            item = ready.get_nowait()
                        except queue.Empty:
                            item = None
                if item is _STOP:
                    return
        except BaseException as exc:  # a bug in a worker must end the run, not hang it
            events.put(("failed", exc))
