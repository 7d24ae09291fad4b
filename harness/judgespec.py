"""How a run's judge is built (:class:`JudgeSpec`): plain settings, kept apart from the judges
themselves so that reading or writing them (the command line, run.json) loads no client."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class JudgeSpec:
    """How to build a judge; stored in the run record so re-scoring uses the same one."""

    model: str | None = None  # None: normalised exact match
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    # Some reasoning models accept only their default temperature; None leaves it unset.
    temperature: float | None = 0.0
    # The paper protocol's judge (GQA): the original's prompt and model, through the Responses API.
    paper_model: str = "gpt-5-mini"
    paper_base_url: str | None = None
    # How each judge's requests are sent: every request ends within timeout_s (all of it, not per read),
    # is retried at most max_retries times, and at most max_concurrency records are judged at once.
    timeout_s: float = 120.0
    max_retries: int = 4
    max_concurrency: int = 8

    # Settings that change how verdicts are fetched, not what they are: a resumed run may change them.
    OPERATIONAL = ("timeout_s", "max_retries", "max_concurrency")

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0):
            raise ValueError(f"the judge's timeout must be a positive number of seconds, got {self.timeout_s!r}")
        if not (isinstance(self.max_retries, int) and self.max_retries >= 0):
            raise ValueError(f"the judge's retries must be a whole number >= 0, got {self.max_retries!r}")
        if not (isinstance(self.max_concurrency, int) and self.max_concurrency >= 1):
            raise ValueError(f"the judge's concurrency must be a whole number >= 1, got {self.max_concurrency!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """What makes two runs' verdicts comparable: every field but the operational ones."""
        return {k: v for k, v in self.to_dict().items() if k not in self.OPERATIONAL}
