"""How an epoch's examples become each process's micro-batches, and how a loss reaches the model
through DDP / FSDP / DeepSpeed wrappers.

One seeded order per epoch is cut into optimizer steps of ``per_device x accum x processes``
examples, the same steps whatever the layout: one process with accumulation 4, two with 2, or four
with 1 train on the same examples in every step, so with the per-token loss normalised over the
whole step (all micro-batches of all processes) they log the same losses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from lmforge.engine.tokenize import IGNORE

FILLER = "_lmforge_filler"
"""Key marking an item that only fills an empty micro-batch slot (its labels are ignored)."""


class StepBatches:
    """This process's micro-batches of an epoch, cut from one global order (a batch sampler).

    Within a step, micro-batch ``j`` of rank ``r`` holds the examples at
    ``[j * per_device * processes + r * per_device, ... + per_device)`` of the step. The last step of an
    epoch may hold fewer examples: every process still runs the same number of micro-batches (a
    collective would hang otherwise), and a slot that gets no example becomes a *filler*: a real
    example whose labels are all ignored, so it adds nothing to the loss, the gradients or the token
    count. No example is dropped and none is counted twice.

    With ``pieces`` above 1 (a token budget, see :mod:`lmforge.engine.budget`), each of those
    micro-batches is cut into ``pieces`` smaller ones of rows of similar length (the longest rows
    together, in the smallest pieces): the step holds the same examples, in more, smaller passes.

    Args:
        order: an iterable of dataset indices for one epoch; re-iterated per epoch after its
            ``set_epoch`` (when it has one) is called.
        lengths: each example's length, to sort a micro-batch before cutting it into pieces and to
            pick the shortest example of a step as a filler.
    """

    def __init__(
        self,
        order: Iterable[int],
        per_device: int,
        accum: int,
        rank: int = 0,
        processes: int = 1,
        pieces: int = 1,
        lengths: list[int] | None = None,
    ):
        self.order = order
        self.per_device = per_device
        self.accum = accum
        self.rank = rank
        self.processes = processes
        self.pieces = pieces
        self.lengths = lengths

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.order, "set_epoch"):
            self.order.set_epoch(int(epoch))

    def __len__(self) -> int:
        full, rest = divmod(len(self.order), self.per_device * self.accum * self.processes)  # type: ignore[arg-type]
        return (full * self.accum + math.ceil(rest / (self.per_device * self.processes))) * self.pieces

    def __iter__(self):
        return iter(self.plan())

    def plan(self) -> list[list[int]]:
        """This process's micro-batches for the current epoch (negative index ``-1 - i``: a filler of ``i``)."""
        order = list(self.order)
        slot = self.per_device * self.processes
        batches: list[list[int]] = []
        for start in range(0, len(order), slot * self.accum):
            step = order[start : start + slot * self.accum]
            filler = [-1 - (min(step, key=self.lengths.__getitem__) if self.lengths else step[0])]
            for micro in range(math.ceil(len(step) / slot)):
                first = micro * slot + self.rank * self.per_device
                mine = step[first : first + self.per_device]
                if self.pieces == 1:
                    batches.append(mine if mine else filler)
                    continue
                if self.lengths:
                    mine = sorted(mine, key=lambda i: -self.lengths[i])  # type: ignore[index]
                batches.extend(part if part else filler for part in even_parts(mine, self.pieces))
        return batches


def even_parts(items: list[int], parts: int) -> list[list[int]]:
    """``items`` cut in order into ``parts`` runs whose sizes differ by at most one, the larger runs last."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part >= parts - extra else 0)
        out.append(items[start:end])
        start = end
    return out


class WithFillers:
    """A dataset that also answers :class:`StepBatches`' filler indices (``-1 - i``: item ``i``, marked)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index >= 0:
            return self.dataset[index]
        return {**self.dataset[-1 - index], FILLER: True}


def blank_fillers(collate: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> Callable:
    """Wrap a collator so a filler micro-batch comes out with every label ignored (nothing trained)."""

    def collate_with_fillers(items: list[dict[str, Any]]) -> dict[str, Any]:
        filler = False
        for item in items:
            filler = bool(item.pop(FILLER, False)) or filler
        batch = collate(items)
        if filler:
            batch["labels"] = torch.full_like(batch["labels"], IGNORE)
        return batch

    return collate_with_fillers


def is_filler(batch: dict[str, Any]) -> bool:
    """True for a micro-batch with no trained position (a filler)."""
    return not bool((batch["labels"] != IGNORE).any())


def call_loss(model: Any, loss_sum: Callable, inputs: dict[str, Any]) -> Any:
    """``loss_sum(inner_model, inputs)`` called *through* ``model``'s wrappers.

    The stages compute their loss from the backbone's hidden states (no full logits), which skips
    ``model.forward``; but DDP prepares its gradient all-reduce, FSDP2 gathers the root's sharded
    weights and DeepSpeed runs its hooks only in the wrapper's forward. So the innermost model's
    ``forward`` is pointed at the loss function for the duration of one call of the outermost
    wrapper, and every wrapper does its work around it.
    """
    inner = model
    while _is_wrapper(inner):
        inner = inner.module
    own = vars(inner).get("forward")  # accelerate may have set an instance-level forward (autocast)

    def restore() -> None:
        if own is None:
            vars(inner).pop("forward", None)
        else:
            inner.forward = own

    def loss_instead_of_forward(batch: dict[str, Any]) -> Any:
        restore()  # the loss function may call the model's own forward (mlm, seq2seq)
        return loss_sum(inner, batch)

    inner.forward = loss_instead_of_forward
    try:
        return model(inputs)
    finally:
        restore()


def _is_wrapper(module: Any) -> bool:
    """DDP, FSDP1 and DeepSpeed engines wrap the model as ``.module`` (FSDP2 shards in place)."""
    names = {"DistributedDataParallel", "FullyShardedDataParallel", "DeepSpeedEngine", "DataParallel"}
    return type(module).__name__ in names and isinstance(getattr(module, "module", None), torch.nn.Module)


class EpochSeededLengthSampler:
    """Length-grouped order (batches of similar lengths, in random order) drawn from ``seed + epoch``;
    with equal lengths and ``batch_size`` 1, a plain seeded shuffle.

    transformers' LengthGroupedSampler draws from the global RNG when an epoch starts; a run resumed
    mid-epoch restores that RNG only after the epoch's order is drawn, so it would train on another
    order than the uninterrupted run. Seeding per epoch makes the order a function of the epoch alone.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))
