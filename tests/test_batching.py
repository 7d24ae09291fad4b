"""The tool server's batching rule (no models): a batch goes when full, when every program in flight
waits, or at its deadline; models on one device take turns; callers resume in step."""

from __future__ import annotations

import threading
import time

import pytest

from harness.tools.batching import MicroBatcher, Occupancy

LONG = 60.0  # a deadline no test waits for: a batch that goes early went by another rule


class Recorder:
    """A model that records its batches and answers each item with itself doubled."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.hold = hold
        self.running = threading.Event()

    def __call__(self, items):
        self.batches.append(list(items))
        self.running.set()
        if self.hold is not None:
            assert self.hold.wait(10)
        return [item * 2 for item in items]


def run_threads(targets) -> None:
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(thread.is_alive() for thread in threads), "a caller never got its answer"


def test_a_batch_goes_as_soon_as_every_program_in_flight_waits():
    occupancy = Occupancy()
    model = Recorder()
    batcher = MicroBatcher(model, max_batch=8, max_wait_s=LONG, occupancy=occupancy)
    registered = threading.Barrier(5)
    answers = {}

    def program(i):
        def run():
            with occupancy.program():
                registered.wait()
                answers[i] = batcher.submit(i)
        return run

    run_threads([program(i) for i in range(5)])
    assert answers == {i: 2 * i for i in range(5)}
    assert [sorted(b) for b in model.batches] == [[0, 1, 2, 3, 4]]  # one batch of 5, not a window's worth
    batcher.close()


def test_a_program_still_computing_is_waited_for_until_the_deadline():
    for max_wait, expected in ((LONG, [[0, 1]]), (0.05, [[0], [1]])):
        occupancy = Occupancy()
        model = Recorder()
        batcher = MicroBatcher(model, max_batch=8, max_wait_s=max_wait, occupancy=occupancy)
        registered = threading.Barrier(2)

        def program(i):
            def run():
                with occupancy.program():
                    registered.wait()
                    if i == 1:
                        time.sleep(0.3)  # still computing when the other's request arrives
                    batcher.submit(i)
            return run

        run_threads([program(0), program(1)])
        assert model.batches == expected
        batcher.close()


def test_callers_outside_any_program_batch_by_size_and_deadline_only():
    model = Recorder()
    batcher = MicroBatcher(model, max_batch=3, max_wait_s=LONG)
    run_threads([lambda i=i: batcher.submit(i) for i in range(3)])
    assert [sorted(b) for b in model.batches] == [[0, 1, 2]]  # full, never one by one
    batcher.close()


def test_a_program_that_ends_lets_the_others_batch_go():
    occupancy = Occupancy()
    model = Recorder()
    batcher = MicroBatcher(model, max_batch=8, max_wait_s=LONG, occupancy=occupancy)
    submitted = threading.Event()

    def waiter():
        with occupancy.program():
            batcher.submit(1)

    def leaver():
        with occupancy.program():
            assert submitted.wait(10)
        # ends without a request: the waiting one is now every program in flight

    thread = threading.Thread(target=waiter)
    with occupancy.program():  # hold the rule off while the waiter queues
        thread.start()
        while not batcher._queue:
            time.sleep(0.001)
    submitted.set()
    run_threads([leaver])
    thread.join(10)
    assert not thread.is_alive() and model.batches == [[1]]
    batcher.close()


def test_models_on_one_device_take_turns():
    occupancy = Occupancy()
    hold = threading.Event()
    first, second = Recorder(hold), Recorder()
    a = MicroBatcher(first, max_batch=1, max_wait_s=LONG, occupancy=occupancy, device="cuda:0")
    b = MicroBatcher(second, max_batch=1, max_wait_s=LONG, occupancy=occupancy, device="cuda:0")
    elsewhere = MicroBatcher(Recorder(), max_batch=1, max_wait_s=LONG, occupancy=occupancy, device="cuda:1")
    threads = [threading.Thread(target=a.submit, args=(1,)), threading.Thread(target=b.submit, args=(2,))]
    threads[0].start()
    assert first.running.wait(10)
    threads[1].start()
    assert elsewhere.submit(3) == 6  # another device is not held up
    time.sleep(0.1)
    assert second.batches == []  # its device is busy with the other model's batch
    hold.set()
    for thread in threads:
        thread.join(10)
    assert second.batches == [[2]]
    for batcher in (a, b, elsewhere):
        batcher.close()


def test_callers_resume_together_so_the_next_model_batches_them_all():
    """Both programs are marked running before either is answered: the second model does not
    take the first arrival for the last program in flight."""
    occupancy = Occupancy()
    first_model, second_model = Recorder(), Recorder()
    first = MicroBatcher(first_model, max_batch=2, max_wait_s=LONG, occupancy=occupancy)
    second = MicroBatcher(second_model, max_batch=8, max_wait_s=LONG, occupancy=occupancy)
    registered = threading.Barrier(2)

    def program(i):
        def run():
            with occupancy.program():
                registered.wait()
                second.submit(first.submit(i))
        return run

    for _ in range(5):
        first_model.batches.clear()
        second_model.batches.clear()
        run_threads([program(1), program(2)])
        assert [sorted(b) for b in second_model.batches] == [[2, 4]]
    first.close()
    second.close()


def test_failures_reach_their_callers_only():
    occupancy = Occupancy()

    def model(items):
        return [ValueError(f"bad {i}") if i < 0 else i for i in items]

    batcher = MicroBatcher(model, max_batch=4, max_wait_s=LONG, occupancy=occupancy)
    outcomes = {}
    registered = threading.Barrier(2)

    def program(i):
        def run():
            with occupancy.program():
                registered.wait()
                try:
                    outcomes[i] = batcher.submit(i)
                except ValueError as exc:
                    outcomes[i] = str(exc)
        return run

    run_threads([program(-1), program(5)])
    assert outcomes == {-1: "bad -1", 5: 5}

    def broken(items):
        raise RuntimeError("the model crashed")

    whole = MicroBatcher(broken, max_batch=1, max_wait_s=LONG)
    with pytest.raises(RuntimeError, match="crashed"):
        whole.submit(1)
    batcher.close()
    whole.close()
    with pytest.raises(RuntimeError, match="closed"):
        whole.submit(2)
