"""Writing programs and running them as pipelined stages: overlap, the same batches, every result
once, failures and early stops."""

from __future__ import annotations

import contextlib
import threading

import pytest

from harness.systems.pipeline import ProgramPipeline


class Finished(str):
    """A result the writer gives instead of a program."""


def pipeline(write, run, batch=4, workers=2, in_flight=None) -> ProgramPipeline:
    return ProgramPipeline(write, run, lambda item: isinstance(item, Finished), batch, workers, in_flight)


def test_the_next_batch_is_written_while_the_last_one_runs():
    second_batch_written = threading.Event()
    written = []

    def write(batch):
        written.append(list(batch))
        if len(written) == 2:
            second_batch_written.set()
        return [f"program {sample}" for sample in batch]

    def run(sample, program):
        if sample == 0:
            # A stage-by-stage system writes the second batch only after this returns.
            assert second_batch_written.wait(10), "the second batch was not written while the first ran"
        return f"answer {sample}"

    results = list(pipeline(write, run).results(range(8)))
    assert sorted(results) == sorted(f"answer {i}" for i in range(8))
    assert written == [[0, 1, 2, 3], [4, 5, 6, 7]]  # the batches a stage-by-stage run reads


def test_samples_are_read_on_the_calling_thread_only_and_every_result_comes_once():
    readers = set()

    def samples():
        for i in range(23):
            readers.add(threading.get_ident())
            yield i

    def write(batch):
        return [Finished(f"no program {s}") if s % 5 == 0 else f"program {s}" for s in batch]

    results = list(pipeline(write, lambda s, p: f"{p} ran", batch=6, workers=3).results(samples()))
    assert readers == {threading.get_ident()}
    expected = [f"no program {s}" if s % 5 == 0 else f"program {s} ran" for s in range(23)]
    assert sorted(results) == sorted(expected)


def test_a_failed_write_ends_the_iteration_with_its_exception():
    def write(batch):
        if batch[0] >= 4:
            raise RuntimeError("the model is gone")
        return [f"p{s}" for s in batch]

    seen = []
    with pytest.raises(RuntimeError, match="model is gone"):
        for result in pipeline(write, lambda s, p: p).results(range(12)):
            seen.append(result)
    assert set(seen) <= {"p0", "p1", "p2", "p3"}


def test_a_writer_that_loses_programs_is_a_bug_said_loudly():
    with pytest.raises(RuntimeError, match="3 programs written for 4 samples"):
        list(pipeline(lambda batch: ["p"] * (len(batch) - 1), lambda s, p: p).results(range(4)))


def test_stopping_early_does_not_wait_for_a_batch_being_written():
    release = threading.Event()
    calls = []

    def write(batch):
        calls.append(batch)
        if len(calls) > 1:
            release.wait(30)  # a long generation, under way when the consumer stops
        return [f"p{s}" for s in batch]

    results = pipeline(write, lambda s, p: p, batch=2, workers=1).results(range(10))
    first = next(results)
    assert first in {"p0", "p1"}
    stopper = threading.Thread(target=results.close)
    stopper.start()
    stopper.join(10)
    alive = stopper.is_alive()
    release.set()
    assert not alive, "closing waited for the batch being written"


def test_a_worker_stays_in_flight_between_programs_it_finds_waiting():
    entered = []
    lock = threading.Lock()

    @contextlib.contextmanager
    def in_flight():
        with lock:
            entered.append(threading.get_ident())
        yield

    results = list(pipeline(lambda batch: [f"p{s}" for s in batch], lambda s, p: p, batch=40, workers=2,
                            in_flight=in_flight).results(range(40)))
    assert len(results) == 40
    assert len(entered) < 40  # not once per program: a worker with programs waiting stays in flight


def test_programs_in_flight_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        pipeline(lambda b: b, lambda s, p: p, workers=0)
