"""What a distributed run is asked for: the cluster, the replicas and their resources,
and the recipe a replica follows to build the same system the driver built."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RAY_VERSION = "2.60.0"
RAY_INSTALL_HINT = f'pip install -e ".[ray]" (ray=={RAY_VERSION})'

# Environment variables a replica takes from the driver: the harness's own settings and the
# Hugging Face hub's (offline mode, caches), which shape what a replica reads and where it
# keeps caches. Secrets (API keys) are never forwarded: each node's environment holds them.
FORWARDED_PREFIXES = ("HARNESS_", "HF_")

# A replica's default demand, and the names Ray gives the standard resources.
DEFAULT_RESOURCES = {"num_cpus": 1.0}
_STANDARD = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}


class DistributedError(RuntimeError):
    """A distributed run that cannot start or go on; the message says why and what to do."""


def import_ray() -> Any:
    """The ``ray`` module, or a DistributedError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise DistributedError(f"--ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from exc
    return ray


@dataclass(frozen=True)
class RaySettings:
    """``address``: ``local`` starts a Ray instance on this machine (or uses the one this
    process already joined), ``auto`` joins the cluster running here, ``HOST:PORT`` joins that
    one. ``replicas``: how many (None: as many as the cluster's resources hold). ``resources``:
    a replica's demand (``num_cpus``, ``num_gpus``, ``memory`` in bytes, custom resources by
    name), over the system file's ``params.resources``. ``batch``: samples sent to a replica at
    a time (None: sized from the task and the system's ``generation_batch``). ``in_flight``:
    batches queued per replica, so that it never waits for the driver. A replica that dies is
    replaced up to ``max_restarts`` times. The samples it had not answered are sent again one
    at a time, each to a replica with nothing else to do, so that a sample that kills its
    replica is found out: it is given up (a system_error record) once ``max_sample_deaths``
    replicas died answering it alone."""

    address: str = "local"
    replicas: int | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    batch: int | None = None
    in_flight: int = 2
    max_restarts: int = 3
    max_sample_deaths: int = 2

    def __post_init__(self) -> None:
        if self.address.startswith("ray://"):
            raise DistributedError(
                f"--ray {self.address}: Ray Client connections are not supported, because the driver must run "
                "on a node of the cluster (it serves the caches); run the command on the head node with --ray auto")
        for name in ("replicas", "batch"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise DistributedError(f"--ray-{name} must be a positive whole number, got {value!r}")
        if self.in_flight < 1 or self.max_restarts < 0 or self.max_sample_deaths < 1:
            raise DistributedError("need in_flight >= 1, max_restarts >= 0 and max_sample_deaths >= 1")


def replica_resources(system: str, params: dict[str, Any], override: dict[str, Any]) -> dict[str, float]:
    """A replica's resource demand: the system file's ``params.resources`` under ``override``
    (from ``--ray-resources``), on top of one CPU. Keys other than ``num_cpus``, ``num_gpus``
    and ``memory`` are custom resources of the cluster."""
    declared = params.get("resources") or {}
    if not isinstance(declared, dict):
        raise DistributedError(f"system {system}: params.resources must be a mapping such as "
                               f"{{num_gpus: 1, num_cpus: 4}}, got {declared!r}")
    merged: dict[str, float] = dict(DEFAULT_RESOURCES)
    for where, source in ((f"system {system}: params.resources", declared), ("--ray-resources", override)):
        for key, value in source.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
                    or not math.isfinite(value):
                raise DistributedError(f"{where}.{key} must be a number >= 0, got {value!r}")
            merged[str(key)] = float(value)
    return merged


def ray_options(resources: dict[str, float]) -> dict[str, Any]:
    """``resources`` as the options of a Ray actor."""
    options: dict[str, Any] = {key: value for key, value in resources.items() if key in _STANDARD}
    custom = {key: value for key, value in resources.items() if key not in _STANDARD}
    if custom:
        options["resources"] = custom
    return options


def cluster_names(resources: dict[str, float]) -> dict[str, float]:
    """``resources`` under the names the cluster reports them by (``CPU``, ``GPU``, ...)."""
    return {_STANDARD.get(key, key): value for key, value in resources.items()}


def replicas_that_fit(demand: dict[str, float], available: dict[str, float]) -> int:
    """How many replicas of ``demand`` (cluster names) ``available`` holds."""
    counts = [math.floor(available.get(key, 0.0) / amount + 1e-9) for key, amount in demand.items() if amount > 0]
    return min(counts) if counts else 0


@dataclass(frozen=True)
class SystemRecipe:
    """How a replica builds the driver's system: the same system file, overrides, seed and
    protocol, read from the same folders; the same data folder, working folder and harness
    settings (``env``)."""

    name: str
    overrides: dict[str, Any]
    seed: int
    protocol: str | None
    include_paths: tuple[str, ...]
    data_dir: str | None = None
    cwd: str = field(default_factory=os.getcwd)
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, overrides: dict[str, Any], seed: int, protocol: str | None,
           include_paths: list[str], data_dir: Path | None) -> "SystemRecipe":
        """A recipe with absolute paths (a replica's working folder may differ) and the
        driver's harness settings; the cache folder is always named, so that every replica
        keeps its caches where the driver does."""
        from harness.cache import default_cache_dir

        env = {key: value for key, value in os.environ.items() if key.startswith(FORWARDED_PREFIXES)}
        env["HARNESS_CACHE_DIR"] = str(default_cache_dir().absolute())
        return cls(name, dict(overrides), seed, protocol, tuple(str(Path(p).absolute()) for p in include_paths),
                   str(Path(data_dir).absolute()) if data_dir else None, os.getcwd(), env)
