"""The system a distributed run hands the runner: the configured system, served by replicas
on a Ray cluster.

The runner does not change: it consumes ``predict`` and alone writes the run directory
(one record per sample, appended as predictions arrive), keeps the one progress bar, and
resumes as for a local run. :class:`RaySystem` hands the samples out in small batches to
:class:`~harness.distributed.replica.Replica` actors, several batches queued per replica
so that fast replicas take more, and yields each prediction as its replica streams it back.
A replica that dies is replaced, and its unanswered samples are handed to the others one at
a time, each to a replica with nothing else in flight: a sample that kills its replica is
found out that way and given up (a ``system_error`` record), instead of killing every
replica in turn, and the samples that only shared its batch are answered.

Records equal those of a local run up to timings: a replica is built from the same system
file, overrides, seed and protocol; samples travel with their images' bytes
(:mod:`harness.distributed.shipping`); seeds and cache keys depend on the sample and the
model, never on the replica; caches and API rate limits are the run's, shared by every
replica (:mod:`harness.distributed.shared`).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from harness.distributed.replica import Replica
from harness.distributed.settings import (
    DistributedError, RaySettings, SystemRecipe, cluster_names, import_ray, ray_options, replica_resources,
    replicas_that_fit,
)
from harness.distributed.shared import SERVICE_THREADS, RunServices
from harness.distributed.shipping import TaskView, ship_sample
from harness.systems.base import System
from harness.types import Prediction, Sample, Status

log = logging.getLogger(__name__)

DEFAULT_BATCH = 16  # the largest batch for a system that names no generation_batch
BATCHES_PER_REPLICA = 4  # a task is cut into at least this many batches per replica, so the end is even
PATIENCE_S = 60.0  # how often a run that waits for replicas says so


@dataclass
class _Flight:
    """A batch on its way: the replica's stream of predictions, and the samples not answered yet."""

    replica: "_Replica"
    stream: Any  # a Ray ObjectRefGenerator
    waiting: dict[str, Sample]
    alone: bool = False  # a sample whose replica died, sent again with nothing beside it


@dataclass
class _Replica:
    slot: int
    handle: Any
    restarts: int
    starting: Any = None  # the pending start() call; None once started
    with_tasks: bool = False  # whether that call prepares the system for the run's tasks
    ready: bool = False  # built and prepared: takes batches
    flights: list[_Flight] = field(default_factory=list)

    def takes(self, in_flight: int, alone: bool) -> bool:
        """Whether the replica takes another batch (``alone``: a suspect, which must run by itself)."""
        if not self.ready or any(f.alone for f in self.flights):
            return False
        return not self.flights if alone else len(self.flights) < in_flight


class RaySystem(System):
    """``local``, the system as the driver built it, answered by replicas on a Ray cluster.

    ``local`` only stands for the system here (name, parameters, protocol); nothing in it
    is loaded. Replicas rebuild it from the same ``overrides``, ``protocol`` and
    ``include_paths``; ``describe`` is theirs, so a distributed run and a local run of one
    system have the same identity, and either can resume the other.
    """

    def __init__(self, local: System, settings: RaySettings, overrides: dict[str, Any], protocol: str | None,
                 include_paths: Sequence[str]) -> None:
        self.local = local
        self.name, self.params, self.seed, self.protocol = local.name, local.params, local.seed, local.protocol
        self.kind, self.source_dir, self.data_dir = local.kind, local.source_dir, local.data_dir
        self.settings = settings
        self.resources = replica_resources(local.name, local.params, settings.resources)
        self._ray = import_ray()
        self._build = (dict(overrides), protocol, list(include_paths))
        self._actor: Any = None
        self._recipe: SystemRecipe | None = None
        self._services: Any = None
        self._driver_node = ""
        self._started_ray = False
        self._replicas: list[_Replica] = []
        self._flights: dict[int, _Flight] = {}  # by id() of the stream
        self._described: dict[str, Any] | None = None
        self._tasks: list[TaskView] | None = None
        self._retry: collections.deque[Sample] = collections.deque()  # samples whose replica died, sent alone
        self._deaths: collections.Counter[str] = collections.Counter()  # deaths of a replica answering it alone
        self._given_up: list[Prediction] = []
        self._waiting_since = 0.0

    # ------------------------------------------------------------------ the pool

    def _start(self) -> None:
        if self._actor is not None:
            return
        try:
            self._start_pool()
        except BaseException:
            self.close()  # nothing half-started outlives the error
            raise

    def _start_pool(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            address = self.settings.address
            try:
                ray.init(address=None if address == "local" else address, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise DistributedError(f"--ray {address}: cannot start or join a Ray cluster: "
                                       f"{_first_line(exc)}") from exc
            self._started_ray = True
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        demand = cluster_names(self.resources)
        self._check_feasible(demand)
        fit = replicas_that_fit(demand, ray.cluster_resources())
        count = self.settings.replicas or max(fit, 1)
        if count > fit:
            log.warning("%d replicas of %s asked for, but the cluster holds %d of them (each asks %s); the "
                        "others start when resources free up", count, self.name, fit, _fmt(demand))
        self._driver_node = ray.get_runtime_context().get_node_id()
        self._services = ray.remote(RunServices).options(
            num_cpus=0, max_concurrency=SERVICE_THREADS,
            scheduling_strategy=NodeAffinitySchedulingStrategy(self._driver_node, soft=False)).remote()
        overrides, protocol, include_paths = self._build
        self._recipe = SystemRecipe.of(self.name, overrides, self.seed, protocol, include_paths, self.data_dir)
        self._actor = ray.remote(Replica).options(**ray_options(self.resources))
        log.info("%s: %d replicas on the Ray cluster, each with %s", self.name, count, _fmt(demand))
        for slot in range(count):
            self._launch(slot, restarts=0)

    def _check_feasible(self, demand: dict[str, float]) -> None:
        nodes = [node.get("Resources", {}) for node in self._ray.nodes() if node.get("Alive")]
        if not any(replicas_that_fit(demand, offer) >= 1 for offer in nodes):
            offers = "; ".join(_fmt({k: v for k, v in offer.items() if not k.startswith("node:")}) for offer in nodes)
            raise DistributedError(
                f"no node of the Ray cluster has what one replica of {self.name} asks for ({_fmt(demand)}); the "
                f"nodes offer: {offers or 'nothing'}. Change the system's params.resources or --ray-resources")

    def _launch(self, slot: int, restarts: int) -> None:
        handle = self._actor.remote(self._recipe, self._services, self._driver_node)
        replica = _Replica(slot, handle, restarts)
        self._replicas.append(replica)
        self._send_start(replica)

    def _send_start(self, replica: _Replica) -> None:
        replica.starting = replica.handle.start.remote(self._tasks)
        replica.with_tasks = self._tasks is not None

    def _started(self, replica: _Replica) -> None:
        """The outcome of a replica's start() call, which is ready."""
        ref, replica.starting = replica.starting, None
        try:
            outcome = self._ray.get(ref)
        except self._ray.exceptions.RayActorError as exc:
            self._died(replica, exc)
            return
        if "error" in outcome:  # what a local run would have raised building or preparing the system
            raise outcome["error"] from RemoteTraceback(outcome["traceback"])
        self._check_describe(outcome)
        replica.ready = replica.with_tasks
        if not replica.ready and self._tasks is not None:  # prepared for the tasks since it was asked to build
            self._send_start(replica)

    def _check_describe(self, outcome: dict[str, Any]) -> None:
        described = json.loads(json.dumps(outcome["describe"], sort_keys=True, default=str))
        if self._described is None:
            self._described = described
            return
        if described != self._described:
            keys = sorted(k for k in described.keys() | self._described.keys()
                          if described.get(k) != self._described.get(k))
            raise DistributedError(
                f"a replica of {self.name} on node {outcome['node']} describes the system differently from the "
                f"first replica (in {', '.join(keys)}); its records could depend on where a sample ran. Make the "
                "nodes alike (same packages, models and sandbox isolation)")

    def _died(self, replica: _Replica, cause: BaseException) -> None:
        """Hand a dead replica's unanswered samples to the others, and replace it."""
        if replica not in self._replicas:
            return
        self._replicas.remove(replica)
        try:
            self._ray.kill(replica.handle, no_restart=True)
        except Exception:  # already gone: the kill only makes sure of it
            pass
        lost = 0
        for flight in replica.flights:
            self._flights.pop(id(flight.stream), None)
            for sample in flight.waiting.values():
                lost += 1
                self._deaths[sample.id] += flight.alone
                if self._deaths[sample.id] >= self.settings.max_sample_deaths:
                    self._given_up.append(Prediction(
                        sample.id, status=Status.SYSTEM_ERROR,
                        detail=f"sample {sample.id}: {self._deaths[sample.id]} replicas of {self.name} died "
                               f"answering it alone, the last with: {_first_line(cause)}"))
                else:
                    self._retry.append(sample)
        replica.flights.clear()
        if replica.restarts < self.settings.max_restarts:
            log.warning("replica %d of %s died (%s); %d unanswered samples go to the others; starting a new one",
                        replica.slot, self.name, _first_line(cause), lost)
            self._launch(replica.slot, replica.restarts + 1)
        else:
            log.error("replica %d of %s died (%s) after %d restarts; going on with %d replicas", replica.slot,
                      self.name, _first_line(cause), replica.restarts, len(self._replicas))

    def _wait(self, include_flights: bool) -> list[Any]:
        """Block until a start() call or (``include_flights``) a batch's stream has news."""
        waitables = [r.starting for r in self._replicas if r.starting is not None]
        if include_flights:
            waitables += [flight.stream for flight in self._flights.values()]
        if not waitables:
            raise DistributedError(
                f"every replica of {self.name} died and none is left to restart; the records written so far "
                "are kept, and --resume continues the run")
        ready, _ = self._ray.wait(waitables, num_returns=1, timeout=PATIENCE_S)
        if not ready and time.monotonic() - self._waiting_since > PATIENCE_S:
            self._waiting_since = time.monotonic()
            log.warning("%s: waiting for replicas (%d ready, %d starting); the cluster has %s free", self.name,
                        sum(r.ready for r in self._replicas), sum(r.starting is not None for r in self._replicas),
                        _fmt(self._ray.available_resources()))
        for obj in ready:
            for replica in list(self._replicas):
                if replica.starting is obj:
                    self._started(replica)
        return ready

    # ------------------------------------------------------------------ the System interface

    def describe(self) -> dict[str, Any]:
        """The first replica's description (replicas that describe the system differently stop the run)."""
        self._start()
        while self._described is None:
            self._wait(include_flights=False)
        return self._described

    def prepare(self, tasks: Sequence[Any]) -> None:
        """Prepare every replica for the tasks; return once one is ready, raising what it raised."""
        self._start()
        self._tasks = [TaskView.of(task) for task in tasks]
        for replica in self._replicas:
            if replica.starting is None:  # built; else it prepares once its build returns
                self._send_start(replica)
        while not any(r.ready for r in self._replicas):
            self._wait(include_flights=False)

    def predict(self, samples: Iterable[Sample]) -> Iterator[Prediction]:
        if self._tasks is None:  # prepare is optional for a system; replicas take work once prepared
            self.prepare([])
        self._deaths.clear()
        source = iter(samples)
        exhausted = False
        while True:
            while self._given_up:
                yield self._given_up.pop()
            exhausted = self._dispatch(source) or exhausted
            if exhausted and not self._flights and not self._retry and not self._given_up:
                return
            for ready in self._wait(include_flights=True):
                flight = self._flights.get(id(ready))
                if flight is not None:
                    yield from self._receive(flight)

    def _dispatch(self, source: Iterator[Sample]) -> bool:
        """Send the samples of dead replicas, each alone, to idle replicas; fill the free places
        of the others, one batch each in turn. True once ``source`` is spent."""
        for replica in self._replicas:
            if self._retry and replica.takes(self.settings.in_flight, alone=True):
                self._send(replica, [self._retry.popleft()], alone=True)
        if self._retry:  # no new batches until they are placed: the busy replicas drain to take them
            return False
        while True:
            free = [r for r in self._replicas if r.takes(self.settings.in_flight, alone=False)]
            if not free:
                return False
            for replica in sorted(free, key=lambda r: len(r.flights)):
                batch = self._next_batch(source)
                if not batch:
                    return True
                self._send(replica, batch, alone=False)

    def _send(self, replica: _Replica, batch: list[Sample], alone: bool) -> None:
        stream = replica.handle.predict.options(num_returns="streaming").remote([ship_sample(s) for s in batch])
        flight = _Flight(replica, stream, {sample.id: sample for sample in batch}, alone)
        replica.flights.append(flight)
        self._flights[id(stream)] = flight

    def _next_batch(self, source: Iterator[Sample]) -> list[Sample]:
        batch: list[Sample] = []
        for sample in source:
            batch.append(sample)
            if len(batch) >= self.batch_size(sample.task):
                break
        return batch

    def batch_size(self, task: str) -> int:
        """``--ray-batch``, else a task's share: at least ``BATCHES_PER_REPLICA`` batches per
        replica (so that the run ends evenly), no fewer samples than the system runs at once
        (``concurrency``) and no more than it generates at once (``generation_batch``)."""
        if self.settings.batch is not None:
            return self.settings.batch
        size = next((len(view) for view in self._tasks or () if view.name == task), 0)
        share = math.ceil(size / (max(len(self._replicas), 1) * BATCHES_PER_REPLICA))
        most = _positive(self.params.get("generation_batch")) or DEFAULT_BATCH
        least = min(_positive(self.params.get("concurrency")) or 1, most)
        return max(least, min(most, share))

    def _receive(self, flight: _Flight) -> Iterator[Prediction]:
        """The next prediction of a batch's stream, if it has one; a finished stream retires the batch."""
        ray = self._ray
        try:
            prediction = ray.get(next(flight.stream))
        except StopIteration:
            # Samples still waiting got no prediction from the system: the runner records that, as locally.
            flight.replica.flights.remove(flight)
            del self._flights[id(flight.stream)]
            return
        except ray.exceptions.RayActorError as exc:
            self._died(flight.replica, exc)
            return
        flight.waiting.pop(prediction.sample_id, None)
        yield prediction

    def close(self) -> None:
        ray = self._ray
        try:
            if self._replicas:
                # Idle replicas close their systems (sandboxes, models, servers); busy ones are ended.
                closing = [r.handle.close.remote() for r in self._replicas if r.ready and not r.flights]
                if closing:
                    ray.wait(closing, num_returns=len(closing), timeout=60)
                for replica in self._replicas:
                    ray.kill(replica.handle, no_restart=True)
                self._replicas.clear()
                self._flights.clear()
            if self._services is not None:
                ray.wait([self._services.close.remote()], timeout=30)
                ray.kill(self._services, no_restart=True)
                self._services = None
        finally:
            if self._started_ray:
                ray.shutdown()
                self._started_ray = False
            self._actor = None
            self.local.close()


class RemoteTraceback(Exception):
    """The traceback of an error raised in a replica, shown as the cause of its re-raise."""

    def __str__(self) -> str:
        return f"\n\nin the replica:\n{self.args[0]}"


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _fmt(resources: dict[str, float]) -> str:
    """``CPU 4, GPU 1, memory 16.0 GiB``: resources as people read them."""
    return ", ".join(f"{key} {value / 2**30:.1f} GiB" if "memory" in key else f"{key} {value:g}"
                     for key, value in sorted(resources.items())) or "nothing"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
