"""The ``--ray*`` flags of ``run``: one run's samples spread over a Ray cluster (docs/scaling.md)."""

from __future__ import annotations

import argparse
from typing import Any

from harness.distributed.settings import DistributedError, RaySettings


def add_ray_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('distributed runs (Ray; pip install -e ".[ray]")')
    group.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                       help="serve the system from replicas on a Ray cluster: no ADDRESS starts one on this machine, "
                            "'auto' joins the cluster running here, HOST:PORT joins that one")
    group.add_argument("--ray-replicas", type=int, metavar="N",
                       help="replicas of the system (default: as many as the cluster's resources hold)")
    group.add_argument("--ray-resources", metavar="K=V,...",
                       help="what one replica asks of the cluster, over the system file's params.resources "
                            "(num_cpus, num_gpus, memory in bytes, custom resources; default num_cpus=1)")
    group.add_argument("--ray-batch", type=int, metavar="N",
                       help="samples sent to a replica at a time (default: sized from the task and the system's "
                            "concurrency and generation_batch)")


def ray_settings(args: argparse.Namespace) -> RaySettings | None:
    """The distributed run the flags ask for; None for a local run."""
    from harness.overrides import parse_key_values

    given: dict[str, Any] = {"replicas": args.ray_replicas, "batch": args.ray_batch,
                             "resources": parse_key_values(args.ray_resources)}
    if args.ray is None:
        stray = [f"--ray-{name}" for name, value in given.items() if value]
        if stray:
            raise DistributedError(f"{', '.join(stray)} needs --ray (a run on a Ray cluster)")
        return None
    return RaySettings(address=args.ray, **given)
