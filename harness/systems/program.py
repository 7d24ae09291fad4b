"""Systems whose answer is a program run in the sandbox against vision tools."""

from __future__ import annotations

import inspect
import logging
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from harness.sandbox.executor import ExecutionResult, Sandbox, SandboxPolicy
from harness.systems.base import System
from harness.tools import TOOL_BACKENDS, ToolBackend, ToolContext, make_backend
from harness.types import Prediction, Sample, Status

log = logging.getLogger(__name__)


@dataclass
class Program:
    """A program to run for a sample, with the model output it came from."""

    code: str
    plan: str | None = None
    raw: str | None = None


def prediction_from_execution(sample: Sample, program: Program, result: ExecutionResult) -> Prediction:
    return Prediction(
        sample.id, answer=result.answer, status=result.status, raw=program.raw, detail=result.detail,
        plan=program.plan, program=program.code, answer_pytype=result.answer_pytype,
        tool_calls=result.tool_calls, isolation=result.isolation, stdout=result.stdout,
        timings={"execute_s": result.seconds},
    )


class ProgramSystem(System):
    """Writes (or looks up) a program per sample and runs it, several at a time.

    Parameters (system file ``params``): ``tools`` (a tool backend name),
    ``tool_options`` (settings per backend name, so switching ``tools`` needs no
    other change), ``device`` (for backends that load models), ``concurrency``
    (programs in flight), ``isolation`` (auto, bwrap, unshare, process) and
    ``limits`` (fields of :class:`SandboxPolicy`, e.g. ``wall_seconds``).
    """

    kind = "program"

    def __init__(self, name: str, params: dict[str, Any], seed: int = 0) -> None:
        super().__init__(name, params, seed)
        self.concurrency = int(params.get("concurrency", 4))
        self._policy = SandboxPolicy(**(params.get("limits") or {}))
        self._isolation = params.get("isolation", "auto")
        self._backend: ToolBackend | None = None
        self._sandbox: Sandbox | None = None
        self._setup = threading.Lock()

    @property
    def backend(self) -> ToolBackend:
        with self._setup:
            if self._backend is None:
                name = self.params.get("tools", "oracle")
                options = dict((self.params.get("tool_options") or {}).get(name) or {})
                if "device" in self.params and "device" in inspect.signature(TOOL_BACKENDS.get(name)).parameters:
                    options.setdefault("device", self.params["device"])
                self._backend = make_backend(name, **options)
            return self._backend

    @property
    def sandbox(self) -> Sandbox:
        with self._setup:
            if self._sandbox is None:
                self._sandbox = Sandbox(self._policy, self._isolation)
            return self._sandbox

    def prepare(self, tasks) -> None:
        self.sandbox.start()  # a sandbox that cannot start stops the run here, not sample by sample

    def write_program(self, sample: Sample) -> Program | Prediction:
        """The program for a sample, or a finished prediction when there is none."""
        raise NotImplementedError

    def run_program(self, sample: Sample, program: Program) -> Prediction:
        if sample.image is None:
            return Prediction(sample.id, status=Status.IMAGE_ERROR, detail=f"sample {sample.id} has no image",
                              plan=program.plan, program=program.code, raw=program.raw)
        context = ToolContext(sample.image, sample.image.size(), sample, key=f"{sample.task}/{sample.id}")
        result = self.sandbox.run(program.code, self.backend.session(context), context.image_size)
        return prediction_from_execution(sample, program, result)

    def predict_one(self, sample: Sample) -> Prediction:
        program = self.write_program(sample)
        if isinstance(program, Prediction):
            return program
        return self.run_program(sample, program)

    def predict(self, samples: Iterable[Sample]) -> Iterator[Prediction]:
        """Run up to ``concurrency`` programs at once; yield each as it finishes."""
        source = iter(samples)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"{self.name}-program") as pool:
            running: set[Future] = set()
            while True:
                while len(running) < self.concurrency:
                    sample = next(source, None)
                    if sample is None:
                        break
                    running.add(pool.submit(self.guarded, sample))
                if not running:
                    return
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["isolation"] = self.sandbox.isolation
        return info

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
        if self._backend is not None:
            self._backend.close()


class ReferenceSystem(ProgramSystem):
    """Runs each sample's reference program (the synthetic benchmark ships one per question)."""

    kind = "reference"

    def prepare(self, tasks) -> None:
        self.sandbox.start()  # a sandbox that cannot start stops the run here, not sample by sample

    def write_program(self, sample: Sample) -> Program | Prediction:
        code = sample.meta.get("reference_program")
        if not code:
            return Prediction(sample.id, status=Status.SYSTEM_ERROR,
                              detail=f"sample {sample.id} of task {sample.task} has no reference program; "
                                     "only the synthetic benchmark ships them")
        return Program(code)
