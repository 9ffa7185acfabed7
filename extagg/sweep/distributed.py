"""Sharding a sweep over processes with ``torch.distributed`` (``torchrun --nproc_per_node N -m extagg sweep``).

The single-process plan's batches (:attr:`~extagg.sweep.plan.SweepPlan.batches`) are dealt whole, round-robin:
in round ``r`` rank ``k`` computes batch ``r * world + k``, so every batch holds the very images it holds in one
process and every number is computed the same way, bit for bit. After each round every rank's finished units go to
rank 0, which alone writes. Gloo on the CPU, NCCL when the device is CUDA; the sweep's own messages (plans,
finished units) always travel over a gloo group on the CPU.

Before any unit, :meth:`Group.check_same` compares a digest of every rank's record (configuration, plan with its
image ids and layers, model fingerprint, versions with the plugins): a rank that differs ends every rank with a
:class:`DistributedError` naming the rank and the first differing field. Every collective is bounded: the process
group is created with a timeout and each exchange starts with a monitored barrier, so a rank that dies or stalls
ends the others with a :class:`DistributedError` naming it within ``EXTAGG_SWEEP_TIMEOUT`` seconds (default 1800;
it must exceed the time of one round of batches). Without ``WORLD_SIZE`` > 1 in the environment (and no process
group already initialised) everything runs in one process.
"""
from __future__ import annotations

import datetime
import os
from typing import Any, Iterator, Optional, Sequence

import torch

from ..errors import ExtaggError, InputError
from .fingerprint import digest, first_difference

TIMEOUT_ENV = "EXTAGG_SWEEP_TIMEOUT"
DEFAULT_TIMEOUT = 1800.0


class DistributedError(ExtaggError, RuntimeError):
    """The ranks of a distributed sweep disagree (different options, model or data) or one of them stopped
    answering; raised on every rank that is still running."""


def timeout_seconds() -> float:
    """The bound of every exchange between ranks: ``EXTAGG_SWEEP_TIMEOUT`` (seconds > 0) or 1800."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None or not text.strip():
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise InputError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
    return value


class Group:
    """Rank, world size and the collectives the sweep needs (no-ops in a single process)."""

    def __init__(self, rank: int = 0, world: int = 1, owned: bool = False, control: Any = None,
                 timeout: float = DEFAULT_TIMEOUT):
        self.rank, self.world, self._owned = rank, world, owned
        self._control, self.timeout = control, timeout

    @classmethod
    def from_env(cls, device: Optional[str] = None) -> "Group":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            control = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
            return cls(dist.get_rank(), dist.get_world_size(), control=control, timeout=timeout_seconds())
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 or not dist.is_available():
            return cls()
        timeout = timeout_seconds()
        cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        delta = datetime.timedelta(seconds=timeout)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=delta)
        control = dist.new_group(backend="gloo", timeout=delta) if cuda else None
        return cls(dist.get_rank(), dist.get_world_size(), owned=True, control=control, timeout=timeout)

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

    # ----------------------------------------------------------------- bounded exchanges
    def _all(self, what: str, payload: Any) -> list:
        """Every rank's ``payload`` in rank order, exchanged with what each rank is doing: a rank at another step
        (e.g. one that left after an error) or one that does not answer within the timeout -> DistributedError."""
        import torch.distributed as dist

        out: list = [None] * self.world
        try:
            dist.monitored_barrier(group=self._control, timeout=datetime.timedelta(seconds=self.timeout),
                                   wait_all_ranks=True)
            dist.all_gather_object(out, (what, payload), group=self._control)
        except RuntimeError as exc:  # DistBackendError and gloo's timeouts and closed connections
            raise DistributedError(
                f"rank {self.rank}: the sweep's ranks stopped answering at {what} (a rank died, stalled or took "
                f"longer than {self.timeout:g} s, the {TIMEOUT_ENV} bound): {str(exc).strip().splitlines()[0]}"
            ) from exc
        for rank, (theirs, _) in enumerate(out):
            if theirs != what:
                raise DistributedError(f"rank {rank} is at {theirs} while rank {self.rank} is at {what} (a rank that "
                                       "ended with an error says why in its own output)")
        return [p for _, p in out]

    def gather(self, obj: Any, what: str = "the exchange of finished units") -> list:
        """Every rank's ``obj`` in rank order (on every rank)."""
        return self._all(what, obj) if self.distributed else [obj]

    def broadcast(self, obj: Any, what: str = "a message from rank 0") -> Any:
        """Rank 0's ``obj`` on every rank."""
        return self._all(what, obj if self.rank == 0 else None)[0] if self.distributed else obj

    def check_same(self, record: dict) -> None:
        """Refuse, on every rank, a sweep whose ranks hold different records (configuration, plan, model,
        versions): a :class:`DistributedError` names the first rank that differs from rank 0 and the first field
        (``config.steps``, ``plan.images``, ``model.fingerprint``, ``versions.plugins``...)."""
        if not self.distributed:
            return
        digests = self.gather(digest(record), "the comparison of the ranks' plans")
        if len(set(digests)) == 1:
            return
        records = self.gather(record, "the comparison of the ranks' plans")
        other = next(r for r, d in enumerate(digests) if d != digests[0])
        found = first_difference(records[0], records[other]) or ("record", None, None)
        field, a, b = found
        raise DistributedError(
            f"rank {other} runs a different sweep than rank 0: {field} is {_short(a)} on rank 0 but {_short(b)} "
            f"on rank {other}; start every rank with the same options, model, plugins and data")

    def rounds(self, batches: Sequence) -> Iterator[tuple[int, Optional[Any]]]:
        """``(first, batch)`` per round: the round's first batch index and this rank's whole batch of ``batches``
        (None when the round has none for it); every rank goes through the same number of rounds."""
        for first in range(0, len(batches), self.world):
            k = first + self.rank
            yield first, (batches[k] if k < len(batches) else None)

    def close(self) -> None:
        """Leave together (a bounded exchange, so that rank 0, which serves the rendezvous store, does not exit
        while another rank still tears down; a rank still waiting for units learns that this one left), then
        destroy the group this object created."""
        if not self.distributed:
            return
        import torch.distributed as dist

        try:
            self._all("the end of the sweep", None)
        except DistributedError:  # another rank is gone or elsewhere: nothing to wait for
            pass
        if self._control is not None:
            dist.destroy_process_group(self._control)
        if self._owned:
            dist.destroy_process_group()


def _short(v: Any) -> str:
    import json

    text = json.dumps(v, default=repr)
    return text if len(text) < 120 else text[:117] + "..."
