"""What the model-backed tools share: device choice, fingerprints, loading once."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.devices import resolve_device

log = logging.getLogger(__name__)


def checkpoint_fingerprint(checkpoint: str, revision: str | None, settings: dict[str, Any]) -> str:
    """Identifies a model and its settings without loading it. A local checkpoint
    adds its files' names, sizes and modification times; a hub checkpoint is
    identified by its name and ``revision`` (pin one for caches that must never
    outlive a change on the hub)."""
    parts: dict[str, Any] = {"checkpoint": checkpoint, "revision": revision, "settings": settings}
    path = Path(checkpoint)
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        parts["files"] = [(str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns)
                          for p in files]
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class LazyModel:
    """A model built from frozen settings (with ``checkpoint``, ``revision`` and
    ``device``), loaded once, on first use, whichever thread asks first."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._model: Any = None
        self._device: str | None = None

    @property
    def fingerprint(self) -> str:
        settings = asdict(self.settings)
        for key in ("checkpoint", "revision", "device"):  # identified separately, or not affecting answers
            settings.pop(key)
        return checkpoint_fingerprint(self.settings.checkpoint, self.settings.revision,
                                      {type(self).__name__: settings})

    def _load(self) -> None:
        with self._lock:
            if self._model is None:
                self._device = resolve_device(self.settings.device)
                log.info("loading %s %s on %s", type(self).__name__, self.settings.checkpoint, self._device)
                self._model = self._build()

    def _build(self) -> Any:
        """Load and return the model (on ``self._device``)."""
        raise NotImplementedError
