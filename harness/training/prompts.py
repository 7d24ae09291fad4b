"""The training prompt of a query under each protocol, as rows of training data carry it.

- ``harness``: made by the evaluation's own code (:class:`LLMProgramSystem`: the same
  prompt file and ``{api}`` substitution), in the system message or with the question;
- ``paper``: the original training's system prompt, read verbatim from the pinned
  upstream file, and the bare question.
"""

from __future__ import annotations

from harness.systems.llm_program import LLMProgramSystem
from harness.types import AnswerType, Sample

DEFAULT_PROMPT = "prompts/program_writer.md"


class TrainingPrompt:
    """The request a program writer gets for a question, made by the evaluation's own code.

    An :class:`LLMProgramSystem` is built only for its prompt: its chat backend
    is created lazily and never here, so the placeholder backend name is never
    looked up.
    """

    def __init__(self, prompt: str = DEFAULT_PROMPT, layout: str = "system",
                 question_template: str = "{question}") -> None:
        self._system = LLMProgramSystem("training-data", {
            "llm": {"backend": "<not used: prompts only>"}, "prompt": prompt, "prompt_layout": layout,
            "question_template": question_template})

    @property
    def text(self) -> str:
        return self._system.prompt

    def messages(self, question: str) -> list[dict[str, str]]:
        sample = Sample(id="training", task="training", question=question, answer=None, answer_type=AnswerType.NONE)
        return self._system.messages_for(sample)


class PaperTrainingPrompt:
    """The original training's request: its system prompt file, verbatim and stripped (its line
    breaks are the two characters backslash and n, as the original sent them), as the system
    message, and the bare question as the user turn."""

    def __init__(self, data_dir: str | None = None) -> None:
        from harness.training.protocol import paper_texts

        self.text = paper_texts(data_dir).system_prompt().strip()

    def messages(self, question: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.text}, {"role": "user", "content": question}]
