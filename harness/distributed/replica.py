"""One replica of a run's system, inside a Ray actor.

The replica builds the system exactly as the driver did (same system file, overrides,
seed and protocol: :class:`~harness.distributed.settings.SystemRecipe`), with its own
model backend, tool server and sandbox, and answers the batches of samples the driver
sends it, streaming each prediction back as it finishes. A failure to start comes back
as a value (the exception and its traceback), so the driver raises the same exception: a
user's error reads as one line, a bug with the replica's traceback as its cause.
"""

from __future__ import annotations

import os
import pickle
import random
import traceback
from pathlib import Path
from typing import Any, Iterator

from harness.distributed.settings import SystemRecipe

def portable(exc: Exception) -> Exception:
    """``exc`` if it can travel back to the driver, else a RuntimeError telling it."""
    try:
        pickle.dumps(exc)
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


class Replica:
    """The actor class (made remote by the driver, so this module needs no Ray to import)."""

    def __init__(self, recipe: SystemRecipe, services: Any, driver_node: str) -> None:
        self.recipe = recipe
        self.services = services
        self.driver_node = driver_node
        self.system: Any = None
        self.prepared = False

    def start(self, tasks: list[Any] | None) -> dict[str, Any]:
        """Build the system (once) and, given the run's tasks, prepare it: what identifies it
        (``describe``) and where it runs, or the ``error`` that stopped it and its ``traceback``."""
        import ray

        try:
            node = ray.get_runtime_context().get_node_id()
            if self.system is None:
                self.system = self._build(on_driver_node=node == self.driver_node)
            if tasks is not None and not self.prepared:
                self.system.prepare(tasks)
                self.prepared = True
            return {"describe": self.system.describe(), "node": node}
        except Exception as exc:
            return {"error": portable(exc), "traceback": "".join(traceback.format_exception(exc))}

    def _build(self, on_driver_node: bool) -> Any:
        # The driver's settings, before the harness's modules and the hub's read them: set
        # here rather than as Ray's runtime_env, whose worker start costs a second more.
        os.environ.update(self.recipe.env)
        from harness.distributed.shared import use_services
        from harness.systems import SystemRegistry

        if os.path.isdir(self.recipe.cwd):  # relative paths in system files mean what they meant to the driver
            os.chdir(self.recipe.cwd)
        use_services(self.services, on_driver_node, self.recipe.cwd)
        random.seed(self.recipe.seed)  # as the runner seeds before building
        system = SystemRegistry(self.recipe.include_paths).build(
            self.recipe.name, self.recipe.overrides, self.recipe.seed, self.recipe.protocol)
        system.data_dir = Path(self.recipe.data_dir) if self.recipe.data_dir else None
        return system

    def predict(self, samples: list[Any]) -> Iterator[Any]:
        """The system's predictions for a batch, each yielded as it finishes."""
        yield from self.system.predict(samples)

    def close(self) -> None:
        if self.system is not None:
            self.system.close()
            self.system = None
