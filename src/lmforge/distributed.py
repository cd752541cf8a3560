"""The process group a run belongs to: who am I (rank), how many are we, and the few collectives
lmforge itself needs (a barrier, the leader's decision, answers gathered in order).

lmforge never starts training processes by itself: ``torchrun`` (or ``accelerate launch``, or
``lmforge run --nproc N``, which calls torch's elastic launcher) starts them and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without
those variables a run is one process and every function here is a cheap no-op, so single-process
code paths never touch ``torch.distributed``.

Rank 0 is the *leader*: it alone writes the run directory (``rundir`` consults :func:`is_leader`),
prints, and runs the stages that are not split across processes; the others follow.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from lmforge.errors import LaunchError

T = TypeVar("T")

DEFAULT_TIMEOUT_MINUTES = 120
"""How long a collective (a follower waiting at a barrier while the leader prepares data) may wait."""


@dataclass(frozen=True)
class World:
    """This process's place in the job, as the launcher described it in the environment."""

    rank: int
    """Global rank, 0 .. size-1."""
    size: int
    """Processes in the job (all nodes)."""
    local_rank: int
    """Rank among the processes of this machine."""
    local_size: int
    """Processes on this machine."""
    node_rank: int
    """Index of this machine (``GROUP_RANK`` under torchrun)."""

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def as_manifest(self) -> dict[str, Any]:
        """What a manifest records about the layout (also for a single process: world size 1)."""
        return {"world_size": self.size, "nodes": max(1, self.size // max(self.local_size, 1))}


def world() -> World:
    """This process's :class:`World`, read from the launcher's environment variables.

    Raises:
        LaunchError: variables that contradict each other (a rank outside the world, a local world
            larger than the whole one) — a launcher misconfiguration.
    """
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_size = _env_int("LOCAL_WORLD_SIZE", size)
    local_rank = _env_int("LOCAL_RANK", rank)
    node_rank = _env_int("GROUP_RANK", 0)
    if size < 1 or not 0 <= rank < size or local_size > size or not 0 <= local_rank < max(local_size, 1):
        raise LaunchError(
            f"inconsistent launcher environment: RANK={rank}, WORLD_SIZE={size}, LOCAL_RANK={local_rank}, "
            f"LOCAL_WORLD_SIZE={local_size}; start the job with torchrun, accelerate launch or lmforge run --nproc"
        )
    return World(rank, size, local_rank, local_size, node_rank)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"environment variable {name}={value!r} is not an integer (set by the launcher)") from None


def is_leader() -> bool:
    """True on rank 0, and in a single-process run."""
    return _env_int("RANK", 0) == 0


def backend_for_device() -> str:
    """``nccl`` when this process drives a CUDA GPU, ``gloo`` on CPUs."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group(timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> World:
    """Join the launcher's process group (once); a no-op for a single process. Returns :func:`world`.

    The backend follows the device (nccl on CUDA, gloo on CPU). The timeout bounds every collective,
    including a follower's wait while the leader runs a stage that is not split (data, index).

    Raises:
        LaunchError: the rendezvous failed (the master port is taken, a peer never came); the
            message names MASTER_ADDR:MASTER_PORT and the world size it waited for.
    """
    current = world()
    if not current.distributed:
        return current
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return current
    backend = backend_for_device()
    if backend == "nccl":
        torch.cuda.set_device(current.local_rank)
    address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    except (RuntimeError, ValueError) as exc:
        raise LaunchError(
            f"rank {current.rank} of {current.size} could not join the process group at {address} "
            f"({backend}): {exc}. Check that the port is free and that every node was started with the "
            "same --nnodes / --nproc-per-node and rendezvous endpoint"
        ) from exc
    return current


_together = False
"""True while every process runs the same stage (see :func:`together`)."""


@contextlib.contextmanager
def together() -> Iterator[None]:
    """Mark a stage that every process runs at once (training, eval): only inside it do the collectives
    below (:func:`barrier`, :func:`leader_decides`, :func:`share` ...) talk to the other processes.
    Elsewhere — a stage the leader runs alone while the others wait — they act as in a single process,
    so code shared by both kinds of stage can never wait for a process that is not coming."""
    global _together
    _together = True
    try:
        yield
    finally:
        _together = False


def _group_ready() -> bool:
    if not world().distributed:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _collective() -> bool:
    return _together and _group_ready()


def wait_for_all() -> None:
    """Wait until every process of the job gets here (the pipeline, between stages)."""
    if _group_ready():
        import torch.distributed as dist

        dist.barrier()


def barrier() -> None:
    """Inside :func:`together`: wait until every process gets here. Otherwise a no-op."""
    if _collective():
        import torch.distributed as dist

        dist.barrier()


def leader_decides(value: T) -> T:
    """The leader's ``value``, on every process: a decision (resume or not, from which checkpoint) taken
    once, before the leader changes anything the followers would otherwise read half-way."""
    if not _collective():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def leader_runs(work: Callable[[], T]) -> T:
    """``work()`` on the leader alone (a file operation of the run directory); every process gets its
    result once it is done."""
    # The broadcast waits for the leader, which sends only once ``work`` is done.
    return leader_decides(work() if is_leader() else None)  # type: ignore[return-value]


def share(items: list[T]) -> list[T]:
    """This process's share of ``items``: every ``size``-th item from its rank (all of them for one process)."""
    current = world()
    if not _collective():
        return list(items)
    return list(items[current.rank :: current.size])


def gather_shares(mine: list[T]) -> list[T]:
    """Undo :func:`share`: every process's results, interleaved back into the original order."""
    if not _collective():
        return list(mine)
    import torch.distributed as dist

    current = world()
    gathered: list[Any] = [None] * current.size
    dist.all_gather_object(gathered, mine)
    merged: list[T] = []
    for index in range(max(len(part) for part in gathered)):
        merged.extend(part[index] for part in gathered if index < len(part))
    return merged


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over every process (as float64)."""
    if not _collective():
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    if backend_for_device() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()
