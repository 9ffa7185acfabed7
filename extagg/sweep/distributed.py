"""Sharding a sweep over processes with ``torch.distributed`` (``torchrun --nproc_per_node N -m extagg sweep``).

Batches are dealt round-robin; after each round every rank's finished units go to rank 0, which alone writes.
Gloo on the CPU, NCCL when the device is CUDA. Without ``WORLD_SIZE`` > 1 in the environment (and no process
group already initialised) everything runs in one process.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import torch


class Group:
    """Rank, world size and the three collectives the sweep needs (no-ops in a single process)."""

    def __init__(self, rank: int = 0, world: int = 1, owned: bool = False):
        self.rank, self.world, self._owned = rank, world, owned

    @classmethod
    def from_env(cls, device: Optional[str] = None) -> "Group":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 or not dist.is_available():
            return cls()
        cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), owned=True)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def device(self, requested: Optional[str]) -> str:
        """The device of this rank: ``requested``, else CUDA (one GPU per local rank) when available, else CPU."""
        if requested:
            return requested
        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if self.distributed else "cuda"
        return "cpu"

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj`` in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self._owned:
            import torch.distributed as dist

            dist.destroy_process_group()
