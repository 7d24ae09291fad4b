"""Running the programs an earlier run recorded again, with this run's tools.

Comparing two detectors (the paper's Figure 7: "all variants execute identical
programs") needs the same programs under each; sampling them again would mix the
program writer's variance into the comparison. ``--system replay --system-args
run=RUN_DIR`` reads each sample's ``program`` from ``RUN_DIR/samples_<task>.jsonl``
and runs it in the sandbox against this run's tools, e.g. a tuned detector with
``--tools real --system-args run=RUN_DIR,tool_options.real.detector.checkpoint=DIR``.

Execution settings (``tools``, ``tool_options``, ``device``, ``concurrency``,
``isolation``, ``limits``) are the earlier run's, except those this system's
parameters set to something other than null, so changing the detector changes
nothing else. A sample the earlier run has no program for is ``missing`` (with
the reason); one whose earlier record was a ``format_error`` or ``api_error``
(the model wrote no usable program) keeps that status.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.protocol import HARNESS, PAPER
from harness.records import read_records
from harness.results import RUN_FILE, samples_file
from harness.systems import SystemConfigError
from harness.systems.params import typed
from harness.systems.program import Program, ProgramSystem
from harness.types import Prediction, Sample, Status

log = logging.getLogger(__name__)

EXECUTION_KEYS = ("tools", "tool_options", "device", "concurrency", "isolation", "limits")
# Kinds whose records keep the program as the model wrote it: wrapped again for the sandbox as they were.
WRAPPERS = {"visprog": "harness.systems.visprog:sandbox_program",
            "vipergpt": "harness.systems.vipergpt:sandbox_program"}
NO_PROGRAMS = ("direct_vlm",)
KEPT_STATUSES = (Status.FORMAT_ERROR, Status.API_ERROR)
_RECORD_FIELDS = ("question", "status", "detail", "raw", "plan", "program")


def inherit(earlier: Any, ours: Any) -> Any:
    """``ours`` over ``earlier``, mapping by mapping; a null in ``ours`` keeps the earlier value."""
    if ours is None:
        return earlier
    if isinstance(ours, dict) and isinstance(earlier, dict):
        return {key: inherit(earlier.get(key), ours.get(key)) for key in {**earlier, **ours}}
    return ours


def without_nulls(value: Any) -> Any:
    """Nulls left after inheriting mean "not set anywhere": dropped, so defaults apply."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    return value


class ReplaySystem(ProgramSystem):
    kind = "replay"
    parameters = {"run": typed(str)}
    nullable_params = True  # a null setting is the earlier run's

    def __init__(self, name: str, params: dict[str, Any], seed: int = 0) -> None:
        if not params.get("run"):
            raise SystemConfigError(f"system {name}: name the run whose programs to replay: --system-args run=RUN_DIR")
        self.run_dir = Path(params["run"])
        run_file = self.run_dir / RUN_FILE
        if not run_file.is_file():
            raise SystemConfigError(f"system {name}: {self.run_dir} is not a run directory (no {RUN_FILE})")
        earlier = json.loads(run_file.read_text(encoding="utf-8"))
        config = earlier.get("system_config") or {}
        self.replayed_system = earlier.get("system")
        self.program_kind = config.get("program_kind") or config.get("kind")
        if self.program_kind in NO_PROGRAMS:
            raise SystemConfigError(f"system {name}: the run {self.run_dir} was made by {self.replayed_system} "
                                    f"({self.program_kind}), which writes no programs")
        # The programs were written for the earlier run's tool API: replayed under its protocol.
        earlier_protocol = earlier.get("protocol", HARNESS)
        if params.get("protocol", earlier_protocol) != earlier_protocol:
            raise SystemConfigError(f"system {name}: the programs of {self.run_dir} were run under the "
                                    f"{earlier_protocol} protocol; replay them under it (not {params['protocol']})")
        self.original_dialect = config.get("dialect") == PAPER
        merged = {key: value for key, value in params.items() if key not in EXECUTION_KEYS}
        merged["protocol"] = earlier_protocol
        for key in EXECUTION_KEYS:
            value = without_nulls(inherit((config.get("params") or {}).get(key), params.get(key)))
            if value is not None:
                merged[key] = value
        super().__init__(name, merged, seed)
        self._wrap = self._wrapper(self.program_kind)
        self._records: dict[str, dict[str, dict[str, Any]]] = {}

    @staticmethod
    def _wrapper(kind: str | None) -> Callable[[str], str] | None:
        if kind not in WRAPPERS:
            return None
        module, _, function = WRAPPERS[kind].partition(":")
        return getattr(importlib.import_module(module), function)

    def records(self, task: str) -> dict[str, dict[str, Any]]:
        """The earlier run's records of a task, by sample id (only what replaying needs)."""
        if task not in self._records:
            path = samples_file(self.run_dir, task)
            self._records[task] = ({r["id"]: {k: r.get(k) for k in _RECORD_FIELDS} for r in read_records(path)}
                                   if path.is_file() else {})
        return self._records[task]

    def prepare(self, tasks: Sequence[Any]) -> None:
        for task in tasks:
            records = self.records(task.name)
            with_program = sum(1 for r in records.values() if r.get("program"))
            log.info("replaying %s: %d of %d records of %s have a program", task.name, with_program, len(records),
                     self.run_dir)
        super().prepare(tasks)

    def write_program(self, sample: Sample) -> Program | Prediction:
        record = self.records(sample.task).get(sample.id)
        where = f"{self.run_dir} ({self.replayed_system})"
        if record is None:
            return Prediction(sample.id, status=Status.MISSING, detail=f"{where} has no record of {sample.task}/{sample.id}")
        if record["status"] in KEPT_STATUSES:
            return Prediction(sample.id, status=record["status"], detail=record["detail"], raw=record["raw"],
                              plan=record["plan"])
        if not record.get("program"):
            return Prediction(sample.id, status=Status.MISSING, raw=record["raw"], plan=record["plan"],
                              detail=f"{where} recorded no program for {sample.task}/{sample.id} "
                                     f"(status {record['status']})")
        if record["question"] != sample.question:
            return Prediction(sample.id, status=Status.MISSING,
                              detail=f"{where} asked another question as {sample.task}/{sample.id}: "
                                     f"{record['question']!r}, not {sample.question!r}")
        program = record["program"]
        if self._wrap is None:
            return Program(program, plan=record["plan"], raw=record["raw"])
        return Program(self._wrap(program), plan=record["plan"], raw=record["raw"], source=program)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(replayed_run=str(self.run_dir), replayed_system=self.replayed_system, program_kind=self.program_kind)
        return info
