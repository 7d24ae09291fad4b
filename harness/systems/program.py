"""Systems whose answer is a program run in the sandbox against vision tools."""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
from dataclasses import dataclass
from typing import Any, ContextManager, Iterable, Iterator

# Imported for its registration: the synthetic benchmark registers its oracle
# tool backend with TOOL_BACKENDS, and a system's ``tools`` may name it.
import harness.synthetic  # noqa: F401
from harness.protocol import HARNESS, LABEL_FILTERS, PAPER
from harness.requirements import Isolation, Requirement, UpstreamFile, localized
from harness.sandbox.executor import ExecutionResult, Sandbox, SandboxPolicy
from harness.sandbox.isolation import MODES
from harness.systems.base import System
from harness.systems.params import dataclass_fields, mapping, tool_backend_name, tool_options, typed
from harness.systems.pipeline import ProgramPipeline
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


DEFAULT_CONCURRENCY = 4  # programs in flight for tools without a preference: about two per core


class ProgramSystem(System):
    """Writes (or looks up) programs a batch of samples at a time and runs them, several at a time;
    the next batch is written while the programs of the last one run (see :meth:`predict`).

    Parameters (system file ``params``): ``tools`` (a tool backend name),
    ``tool_options`` (settings per backend name, so switching ``tools`` needs no
    other change), ``device`` (for backends that load models), ``concurrency``
    (programs in flight; by default what keeps the tools' model batches full,
    e.g. 16 for the real tools, else 4), ``generation_batch`` (samples whose programs are
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
        self.concurrency = int(params.get("concurrency") or self._default_concurrency())
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

    def _default_concurrency(self) -> int:
        name, options = self._tool_options()
        return TOOL_BACKENDS.get(name).programs_to_keep_busy(options) or DEFAULT_CONCURRENCY

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
        backend = self.backend
        with backend.in_flight():  # the tools batch a model's requests once every program in flight waits
            if self.dialect == PAPER:
                tools, files = paper_program_inputs(backend, context, self.paper_texts, self.label_filter)
                result = self.sandbox.run(program.code, tools, context.image_size, dialect="paper", files=files)
            else:
                result = self.sandbox.run(program.code, backend.session(context), context.image_size)
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

    def _programs_in_flight(self) -> ContextManager[None]:
        try:
            return self.backend.in_flight()
        except Exception:  # tools that cannot start: each program's run says why (run_program)
            return contextlib.nullcontext()

    def predict(self, samples: Iterable[Sample]) -> Iterator[Prediction]:
        """Programs are written ``generation_batch`` samples at a time on one thread while those
        written before run, up to ``concurrency`` at once (:mod:`harness.systems.pipeline`);
        each prediction is yielded as it finishes."""
        pipeline = ProgramPipeline(self.write_programs, lambda sample, program: self.guarded(
            sample, lambda s: self.run_program(s, program)), lambda item: isinstance(item, Prediction),
            self.generation_batch, self.concurrency, self._programs_in_flight, self.name)
        yield from pipeline.results(samples)

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
