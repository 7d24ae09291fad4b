"""Systems whose answer is a program run in the sandbox against vision tools."""

from __future__ import annotations

import inspect
import itertools
import logging
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

# Imported for its registration: the synthetic benchmark registers its oracle
# tool backend with TOOL_BACKENDS, and a system's ``tools`` may name it.
import harness.synthetic  # noqa: F401
from harness.protocol import HARNESS, LABEL_FILTERS, PAPER
from harness.requirements import Isolation, Requirement, UpstreamFile, localized
from harness.sandbox.executor import ExecutionResult, Sandbox, SandboxPolicy
from harness.sandbox.isolation import MODES
from harness.systems.base import System
from harness.systems.params import dataclass_fields, mapping, tool_backend_name, tool_options, typed
from harness.tools import TOOL_BACKENDS, ToolBackend, ToolContext, make_backend
from harness.tools.paper_api import paper_program_inputs
from harness.types import Prediction, Sample, Status
from harness.upstream import SPECIALISTS_API, AssetStore, PaperTexts

log = logging.getLogger(__name__)


@dataclass
class Program:
    """A program to run for a sample, with the model output it came from."""

    code: str
    plan: str | None = None
    raw: str | None = None
    source: str | None = None  # what the model wrote, when ``code`` adds a prelude around it
    prompt: Any = None  # the request that produced it (kept in records with --log-samples)


def prediction_from_execution(sample: Sample, program: Program, result: ExecutionResult) -> Prediction:
    """The prediction of a program's run. A run during which a tool itself failed (its model or
    endpoint, not the program's call) is a ``tool_server_error`` whatever the program made of it:
    its answer was not made with working tools."""
    status, detail = result.status, result.detail
    failed = [call for call in result.tool_calls if call.get("tool_failure")]
    if failed:
        status = Status.TOOL_SERVER_ERROR
        detail = (f"{len(failed)} tool call(s) failed in the tool server; the first: {failed[0].get('tool')}: "
                  f"{failed[0].get('error')} (the program then ended with status {result.status})"
                  + (f"\n{result.detail}" if result.detail else ""))
    return Prediction(
        sample.id, answer=result.answer, status=status, raw=program.raw, detail=detail,
        plan=program.plan, program=program.source or program.code, answer_pytype=result.answer_pytype,
        answer_typed=result.answer_typed, tool_calls=result.tool_calls, isolation=result.isolation,
        stdout=result.stdout, timings={"execute_s": result.seconds},
        extra={"prompt": program.prompt} if program.prompt else {},
    )


class ProgramSystem(System):
    """Writes (or looks up) programs for a batch of samples, then runs them, several at a time.

    Parameters (system file ``params``): ``tools`` (a tool backend name),
    ``tool_options`` (settings per backend name, so switching ``tools`` needs no
    other change), ``device`` (for backends that load models), ``concurrency``
    (programs in flight), ``generation_batch`` (samples whose programs are
    written together, e.g. one vLLM call), ``isolation`` (auto, bwrap, unshare,
    process), ``allow_unsafe_isolation`` (run even where the sandbox cannot keep
    programs from the user's files; see docs/sandbox.md) and ``limits`` (fields of
    :class:`SandboxPolicy`, e.g. ``wall_seconds``). Under the ``paper`` protocol
    programs see the original tool API (:mod:`harness.tools.paper_api`);
    ``label_filter`` (fixed, original) chooses whether ``gd_detect`` keeps the
    original's filter bug.
    """

    kind = "program"
    parameters = {
        "tools": tool_backend_name(), "tool_options": tool_options(),
        "device": typed(str), "concurrency": typed(int), "generation_batch": typed(int),
        "isolation": typed(str, MODES), "limits": mapping(dataclass_fields(SandboxPolicy)),
        "label_filter": typed(str, LABEL_FILTERS),
    }
    # Whether this kind's programs are written for the original VALOR tool API when the run
    # follows the paper protocol (the LLM program writers); VisProg, ViperGPT and the
    # reference programs keep their own API under either protocol.
    original_dialect = False

    def __init__(self, name: str, params: dict[str, Any], seed: int = 0) -> None:
        super().__init__(name, params, seed)
        self.concurrency = int(params.get("concurrency", 4))
        self.generation_batch = int(params.get("generation_batch", 64))
        self._policy = SandboxPolicy(**(params.get("limits") or {}))
        self._isolation = params.get("isolation", "auto")
        self._backend: ToolBackend | None = None
        self._sandbox: Sandbox | None = None
        self._setup = threading.Lock()
        self.label_filter = params.get("label_filter", "fixed")
        if self.label_filter not in LABEL_FILTERS:
            raise ValueError(f"system {name}: label_filter must be one of {', '.join(LABEL_FILTERS)}, "
                             f"got {self.label_filter!r}")
        self._paper_texts: PaperTexts | None = None

    def _tool_options(self) -> tuple[str, dict[str, Any]]:
        name = self.params.get("tools", "oracle")
        options = dict((self.params.get("tool_options") or {}).get(name) or {})
        if "device" in self.params and "device" in inspect.signature(TOOL_BACKENDS.get(name)).parameters:
            options.setdefault("device", self.params["device"])
        return name, options

    def requirements(self) -> list[Requirement]:
        name, options = self._tool_options()
        needed = [*TOOL_BACKENDS.get(name).requirements(options, f"the {name} tools of system {self.name}"),
                  Isolation(self._isolation, f"the sandbox of system {self.name}")]
        if self.dialect == PAPER and name != "oracle":
            needed.append(UpstreamFile(SPECIALISTS_API, "the VQA tool's prompts under the paper protocol"))
        return needed

    @property
    def backend(self) -> ToolBackend:
        with self._setup:
            if self._backend is None:
                name, options = self._tool_options()
                # Weights under the run's data dir are read from there (a GPU node without internet).
                options = localized(options, TOOL_BACKENDS.get(name).requirements(options, name), self.data_dir)
                self._backend = make_backend(name, **options)
            return self._backend

    @property
    def sandbox(self) -> Sandbox:
        with self._setup:
            if self._sandbox is None:
                self._sandbox = Sandbox(self._policy, self._isolation, spares=self.concurrency,
                                        allow_unsafe=bool(self.params.get("allow_unsafe_isolation", False)))
            return self._sandbox

    def prepare(self, tasks) -> None:
        self.sandbox.start()  # a sandbox that cannot start stops the run here, not sample by sample

    def write_program(self, sample: Sample) -> Program | Prediction:
        """The program for one sample, or a finished prediction when there is none."""
        raise NotImplementedError

    def write_programs(self, samples: list[Sample]) -> list[Program | Prediction]:
        """Programs for a batch of samples; systems that generate in batches override this."""
        programs: list[Program | Prediction] = []
        for sample in samples:
            try:
                programs.append(self.write_program(sample))
            except Exception as exc:
                programs.append(self.failure(sample, exc))
        return programs

    def run_program(self, sample: Sample, program: Program) -> Prediction:
        if sample.image is None:
            return Prediction(sample.id, status=Status.IMAGE_ERROR, detail=f"sample {sample.id} has no image",
                              plan=program.plan, program=program.source or program.code, raw=program.raw)
        context = ToolContext(sample.image, sample.image.size(), sample, key=f"{sample.task}/{sample.id}")
        if self.dialect == PAPER:
            tools, files = paper_program_inputs(self.backend, context, self.paper_texts, self.label_filter)
            result = self.sandbox.run(program.code, tools, context.image_size, dialect="paper", files=files)
        else:
            result = self.sandbox.run(program.code, self.backend.session(context), context.image_size)
        return prediction_from_execution(sample, program, result)

    @property
    def dialect(self) -> str:
        """The tool API programs are run with: ``paper`` (the original's) or ``harness``."""
        return PAPER if self.protocol == PAPER and self.original_dialect else HARNESS

    @property
    def paper_texts(self) -> PaperTexts:
        """The original's texts (prompts), fetched from the pinned upstream files on first use."""
        with self._setup:
            if self._paper_texts is None:
                self._paper_texts = PaperTexts(AssetStore(data_dir=self.data_dir))
            return self._paper_texts

    def predict_one(self, sample: Sample) -> Prediction:
        program = self.write_programs([sample])[0]
        return program if isinstance(program, Prediction) else self.run_program(sample, program)

    def predict(self, samples: Iterable[Sample]) -> Iterator[Prediction]:
        """Write programs a batch at a time; run up to ``concurrency`` at once; yield each as it finishes."""
        source = iter(samples)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"{self.name}-program") as pool:
            while True:
                batch = list(itertools.islice(source, self.generation_batch))
                if not batch:
                    return
                pending = list(zip(batch, self.write_programs(batch)))
                running: set[Future] = set()
                while pending or running:
                    while pending and len(running) < self.concurrency:
                        sample, program = pending.pop(0)
                        if isinstance(program, Prediction):
                            yield program
                            continue
                        running.add(pool.submit(self.guarded, sample, lambda s, p=program: self.run_program(s, p)))
                    if running:
                        done, running = wait(running, return_when=FIRST_COMPLETED)
                        for future in done:
                            yield future.result()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["isolation"] = self.sandbox.isolation
        info["dialect"] = self.dialect
        info["isolation_missing"] = self.sandbox.missing
        return info

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
        if self._backend is not None:
            self._backend.close()


class ReferenceSystem(ProgramSystem):
    """Runs each sample's reference program (the synthetic benchmark ships one per question)."""

    kind = "reference"

    def write_program(self, sample: Sample) -> Program | Prediction:
        code = sample.meta.get("reference_program")
        if not code:
            return Prediction(sample.id, status=Status.SYSTEM_ERROR,
                              detail=f"sample {sample.id} of task {sample.task} has no reference program; "
                                     "only the synthetic benchmark ships them")
        return Program(code)
