"""The interface every system implements: samples in, predictions out."""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from harness.protocol import HARNESS, PROTOCOLS, check_protocol
from harness.requirements import Requirement
from harness.types import ImageError, Prediction, Sample, Status


class System:
    """A way of answering samples.

    ``predict`` may yield predictions in any order (a system with concurrent
    requests yields each as it finishes); every prediction names its sample.
    Subclasses usually implement only ``predict_one``.
    """

    kind = "system"
    source_dir: Path | None = None  # the folder of the system file (relative paths in params start there)
    data_dir: Path | None = None  # the run's --data-dir (offline copies of datasets and upstream files)
    protocols: tuple[str, ...] = PROTOCOLS  # the protocols this kind can follow
    reads_images = True  # False: answers come from elsewhere (a predictions file), so images need not be present
    # The system file's params this kind reads, each with its check (harness.systems.params); subclasses
    # add theirs. None: not declared, so not checked (kinds defined outside the harness).
    parameters: dict[str, Any] | None = None

    def __init__(self, name: str, params: dict[str, Any], seed: int = 0) -> None:
        self.name = name
        self.params = params
        self.seed = seed
        self.protocol = check_protocol(params.get("protocol", HARNESS), f"system {name}: params.protocol")
        if self.protocol not in self.protocols:
            raise ValueError(f"system {name} ({self.kind}) follows only the {' or '.join(self.protocols)} "
                             f"protocol, not {self.protocol!r}")

    def requirements(self) -> list[Requirement]:
        """What this system needs from the machine (packages, a GPU, keys, models, files), checked
        before a run starts (:mod:`harness.preflight`); nothing here loads a model or sends a request."""
        return []

    def prepare(self, tasks: Sequence[Any]) -> None:
        """Check inputs against the selected tasks before anything runs."""

    def predict(self, samples: Iterable[Sample]) -> Iterator[Prediction]:
        for sample in samples:
            yield self.guarded(sample)

    def predict_one(self, sample: Sample) -> Prediction:
        raise NotImplementedError

    def guarded(self, sample: Sample, action: Callable[[Sample], Prediction] | None = None) -> Prediction:
        """``action`` (default ``predict_one``) with failures turned into statuses, so the run goes on."""
        start = time.perf_counter()
        try:
            prediction = (action or self.predict_one)(sample)
        except Exception as exc:
            prediction = self.failure(sample, exc)
        prediction.timings.setdefault("predict_s", time.perf_counter() - start)
        return prediction

    @staticmethod
    def failure(sample: Sample, exc: Exception) -> Prediction:
        """The prediction recording an exception raised while answering a sample."""
        if isinstance(exc, ImageError):
            return Prediction(sample.id, status=Status.IMAGE_ERROR, detail=f"sample {sample.id}: {exc}")
        return Prediction(sample.id, status=Status.SYSTEM_ERROR, detail="".join(traceback.format_exception(exc)))

    def describe(self) -> dict[str, Any]:
        """What identifies this system in a results file."""
        return {"name": self.name, "kind": self.kind, "params": self.params, "seed": self.seed}

    def close(self) -> None:
        """Release models, servers and worker processes."""
