"""An LLM writes a plan and a program per question; the program runs in the sandbox.

The model sees only text: the prompt (role, rules, the tool API, worked
examples) and the question. Programs for a batch of samples are generated in
one call (one vLLM batch, or concurrent API requests), then run concurrently.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from harness.backends import BackendError
from harness.protocol import PAPER
from harness.systems.chat import ChatSystemMixin
from harness.systems.parsing import paper_reply_text, parse_reply, parse_reply_paper
from harness.systems.params import chat_options, sampling, typed
from harness.systems.program import Program, ProgramSystem
from harness.requirements import LocalPath, Requirement, UpstreamFile
from harness.tools.api import describe_api
from harness.upstream import SYSTEM_PROMPT
from harness.types import Prediction, Sample, Status

log = logging.getLogger(__name__)

BASELINES_DIR = Path(__file__).resolve().parents[2] / "baselines"
API_PLACEHOLDER = "{api}"


def resolve_prompt_path(value: str, source_dir: Path | None) -> Path:
    """A prompt file named in a system file: absolute, or beside the system file, or under baselines/."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    for folder in (source_dir, BASELINES_DIR, Path.cwd()):
        if folder is not None and (folder / path).is_file():
            return folder / path
    return path


class LLMProgramSystem(ChatSystemMixin, ProgramSystem):
    """Parameters, besides those of :class:`ProgramSystem`:

    ``llm`` (``backend`` and its options: model or checkpoint, endpoint, ...),
    ``sampling`` (temperature, top_p, top_k, max_tokens; ``seed`` defaults to
    the run's), ``prompt`` (a prompt file; ``{api}`` in it becomes the tool
    API's documentation), ``prompt_layout`` (``user``: the prompt and the
    question in one user turn, as the paper's evaluation did; ``system``: the
    prompt as the system message, as its training did), ``question_template``.

    Under the ``paper`` protocol (for this kind, not for VisProg or ViperGPT,
    which keep their own prompts and APIs) the request is the original's, byte for byte:
    one user turn holding the original prompt file verbatim, a newline and
    ``Question: <question>`` (``prompt``, ``prompt_layout`` and
    ``question_template`` do not apply); the reply loses every ``exit()`` and is
    read with the original's rules (:func:`parse_reply_paper`).
    """

    kind = "llm_program"
    original_dialect = True
    parameters = {"llm": chat_options(), "sampling": sampling(), "cache": typed(bool | str), "prompt": typed(str),
                  "prompt_layout": typed(str, ("user", "system")), "question_template": typed(str)}

    def __init__(self, name: str, params: dict[str, Any], seed: int = 0) -> None:
        super().__init__(name, params, seed)
        if "llm" not in params or "backend" not in (params["llm"] or {}):
            raise ValueError(f"system {name}: params.llm.backend is required")
        self.layout = params.get("prompt_layout", "user")
        if self.layout not in ("user", "system"):
            raise ValueError(f"system {name}: prompt_layout must be 'user' or 'system', got {self.layout!r}")
        self.question_template = params.get("question_template", "Question: {question}")
        self._prompt: str | None = None

    def requirements(self) -> list[Requirement]:
        if self.dialect == PAPER:
            prompt: Requirement = UpstreamFile(SYSTEM_PROMPT, f"the prompt of system {self.name} (paper protocol)")
        else:
            path = resolve_prompt_path(self.params.get("prompt", "prompts/program_writer.md"), self.source_dir)
            prompt = LocalPath(str(path), f"the prompt of system {self.name}", "fix params.prompt in the system file")
        return [*self.chat_requirements(), prompt, *super().requirements()]

    @property
    def prompt(self) -> str:
        if self.dialect == PAPER:
            return self.paper_texts.system_prompt()
        if self._prompt is None:
            path = resolve_prompt_path(self.params.get("prompt", "prompts/program_writer.md"), self.source_dir)
            if not path.is_file():
                raise FileNotFoundError(f"system {self.name}: prompt file {path} does not exist")
            # Plain substitution, not str.format: a prompt file may hold braces of its own.
            self._prompt = path.read_text(encoding="utf-8").replace(API_PLACEHOLDER, describe_api())
        return self._prompt

    def messages_for(self, sample: Sample) -> list[dict[str, Any]]:
        """The request sent for a sample: text only (the model never sees the image or the answer)."""
        if self.dialect == PAPER:
            return [{"role": "user", "content": f"{self.prompt}\nQuestion: {sample.question}"}]
        question = self.question_template.replace("{question}", sample.question)
        if self.layout == "system":
            return [{"role": "system", "content": self.prompt}, {"role": "user", "content": question}]
        return [{"role": "user", "content": f"{self.prompt.rstrip()}\n\n{question}"}]

    def program_from_reply(self, reply: str) -> Program | str:
        """The program to run for a reply, or a format error message."""
        parsed = parse_reply_paper(paper_reply_text(reply)) if self.dialect == PAPER else parse_reply(reply)
        if not parsed.ok:
            return "; ".join(parsed.notes)
        return Program(parsed.code, plan=parsed.plan, raw=reply)

    def write_programs(self, samples: list[Sample]) -> list[Program | Prediction]:
        requests = [self.messages_for(sample) for sample in samples]
        replies = self.chat.complete_many(requests, **self.sampling)
        programs: list[Program | Prediction] = []
        for sample, request, reply in zip(samples, requests, replies):
            if isinstance(reply, BackendError):
                programs.append(Prediction(sample.id, status=Status.API_ERROR, detail=str(reply),
                                           extra={"prompt": request}))
                continue
            program = self.program_from_reply(reply)
            if isinstance(program, str):
                programs.append(Prediction(sample.id, status=Status.FORMAT_ERROR, raw=reply, detail=program,
                                           extra={"prompt": request}))
            else:
                program.prompt = request
                programs.append(program)
        return programs

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["chat"] = self.chat.fingerprint
        return info

    def close(self) -> None:
        super().close()
        self.close_chat()
