"""Recipe model of the ``distributed`` section: how the training stages (cpt, mlm, sft, seq2seq) use
several processes when the job was started by ``torchrun``, ``accelerate launch`` or
``lmforge run --nproc N``. In a one-process run the section changes nothing.

Everything here is handed to the HF Trainer / accelerate (DDP, FSDP2, DeepSpeed); lmforge does not
re-implement any of them. None of these settings is part of a stage's fingerprint: a run started
with one layout resumes with another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from lmforge.config.base import Strict, resolve_path


class FSDPSpec(Strict):
    """FSDP2 (``torch.distributed.fsdp.fully_shard``) settings, passed to accelerate's FSDP plugin."""

    sharding: Literal["full_shard", "shard_grad_op"] = "full_shard"
    """``full_shard``: parameters, gradients and optimizer states sharded, parameters re-gathered for the
    backward pass (least memory). ``shard_grad_op``: parameters stay gathered between forward and
    backward (one all-gather less per step, more memory)."""
    cpu_offload: bool = False
    """Keep sharded parameters and gradients in CPU memory between uses (GPU memory for time)."""
    activation_checkpointing: bool = False
    """FSDP's own activation checkpointing of the wrapped layers (prefer it to the stage's
    ``gradient_checkpointing`` under FSDP: no extra all-gather in the backward pass)."""
    auto_wrap: bool = True
    """Shard each decoder layer as its own unit (the model's ``_no_split_modules``); off: one unit."""
    state_dict: Literal["full", "sharded"] = "full"
    """Checkpoint format: ``full`` (one file, resumable with any number of processes) or ``sharded``
    (one file per rank, faster to write for large models; resume with the same number of processes)."""


class DeepSpeedSpec(Strict):
    """DeepSpeed through the Trainer's integration (``pip install deepspeed``)."""

    config: str | None = None
    """A DeepSpeed JSON config file (relative to the recipe). Its ``"auto"`` values are filled in from
    the stage's settings by transformers. When unset, a config for ``zero_stage`` is made."""
    zero_stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage of the generated config: 1 shards optimizer states, 2 also gradients, 3 also weights."""
    offload_optimizer: bool = False
    """Generated config: keep optimizer states in CPU memory (ZeRO-Offload)."""

    @field_validator("config")
    @classmethod
    def _config_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        base_dir = (info.context or {}).get("base_dir")
        if value is None or base_dir is None:
            return value
        resolved = resolve_path(value, Path(base_dir))
        if not resolved.is_file():
            raise ValueError(f"DeepSpeed config not found: {str(resolved)!r}; give a .json file or set zero_stage")
        return str(resolved)


class DistributedSpec(Strict):
    """How training stages run on several processes (see docs/DISTRIBUTED.md)."""

    strategy: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    """``ddp``: every process holds the whole model, gradients are averaged (LoRA or small models).
    ``fsdp``: FSDP2, weights, gradients and optimizer states sharded across processes (models that do
    not fit one device). ``deepspeed``: ZeRO through the Trainer's DeepSpeed integration."""
    global_batch: Literal["keep", "grow"] = "keep"
    """``keep``: the optimizer step sees ``batch_size x grad_accum`` examples whatever the number of
    processes, so a run with N processes trains on the same steps (and logs the same losses) as one
    process: accumulation is divided by N, or else the micro-batch. ``grow``: every process does
    ``batch_size x grad_accum``, so the step grows N-fold (fewer, larger steps)."""
    threads_per_process: int | None = Field(None, ge=1)
    """CPU threads of each training process; default: this machine's usable cores divided by the
    processes started on it (never more threads than cores in all)."""
    timeout_minutes: float = Field(120.0, gt=0)
    """Longest wait on a collective, e.g. followers waiting while rank 0 prepares data or builds the
    index. A dead process stops the job at once regardless (the launcher ends the others)."""
    fsdp: FSDPSpec = FSDPSpec()
    """FSDP2 settings (``strategy: fsdp``)."""
    deepspeed: DeepSpeedSpec = DeepSpeedSpec()
    """DeepSpeed settings (``strategy: deepspeed``)."""
