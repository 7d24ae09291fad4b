"""Detector training on several processes (GPUs, nodes) started by ``torchrun``.

``torchrun --nproc_per_node G [--nnodes N ...] -m harness train-detector ...`` starts
one process per GPU; each reads its rank from the environment ``torchrun`` sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``) and joins one
``torch.distributed`` process group: NCCL on GPUs, gloo on CPUs (which is how the
tests run two processes). A single process without those variables trains alone.

The optimiser step stays the paper's: one step per ``batch_size`` images, however
many processes share them. The step's micro-batches are dealt out in turn
(micro-batch j to rank j mod world size); each process accumulates its own
micro-batches' gradients, weighted by one over the step's micro-batch count,
and the gradients are summed across processes before the step: exactly the
single process's gradient accumulation, spread over the processes. We sum the
gradients ourselves (one all-reduce per step) rather than wrapping the model in
``DistributedDataParallel``: an epoch's last step may hold fewer micro-batches
than there are processes, and a step may leave some trainable parameters
unused (e.g. no box matched a decoder layer), both of which DDP's
per-backward reduction cannot take.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

log = logging.getLogger(__name__)

_BUCKET = 1 << 24  # gradient elements per all-reduce


@dataclass
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that logs, saves and writes (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def sum_gradients(self, parameters: Sequence[Any]) -> None:
        """Replace each parameter's gradient by its sum over the processes (a parameter a
        process did not use counts as zero there)."""
        if not self.distributed:
            return
        import torch
        import torch.distributed as dist

        # Buckets of whole parameters, in a fixed order every process shares.
        groups: list[list[Any]] = [[]]
        size = 0
        for p in parameters:
            if size >= _BUCKET:
                groups.append([])
                size = 0
            groups[-1].append(p)
            size += p.numel()
        for group in groups:
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
            dist.all_reduce(flat)
            offset = 0
            for p in group:
                p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
                offset += p.numel()

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order (a list of one without processes)."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def launched() -> bool:
    """Started by torchrun (or another launcher setting the same variables) with several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: str) -> tuple[World, str]:
    """This process's world and its device (``cuda:LOCAL_RANK`` on GPUs), joining the process
    group when launched with several processes."""
    from harness.devices import resolve_device

    device = resolve_device(device)
    if not launched():
        return World(), device
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    world = World(dist.get_rank(), dist.get_world_size(), local_rank)
    log.info("process %d of %d (local %d) on %s", world.rank, world.size, world.local_rank, device)
    return world, device


def step_plan(draws: int, batch_size: int, micro_batch_size: int, world: World) -> list[tuple[list[list[int]], int]]:
    """For each optimiser step of an epoch of ``draws`` images: this process's micro-batches
    (positions in the epoch's draws) and the step's micro-batch count over every process.
    Steps take ``batch_size`` draws in order (the last may be shorter); micro-batch j of a
    step goes to rank j mod world size."""
    plan = []
    for start in range(0, draws, batch_size):
        positions = list(range(start, min(start + batch_size, draws)))
        micro = [positions[i:i + micro_batch_size] for i in range(0, len(positions), micro_batch_size)]
        plan.append(([m for j, m in enumerate(micro) if j % world.size == world.rank], len(micro)))
    return plan
