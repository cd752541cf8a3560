"""How a training stage spreads over the processes the launcher started: the micro-batch and
accumulation of each process, its threads, and the Trainer arguments of the strategy (DDP, FSDP2,
DeepSpeed). Nothing here runs anything: the HF Trainer and accelerate do the distributed work.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any

from lmforge.config import DistributedSpec, TrainSpec
from lmforge.distributed import World, backend_for_device
from lmforge.errors import ConfigError, Problem


@dataclass(frozen=True)
class ProcessLayout:
    """One process's share of a training stage."""

    per_device: int
    """Examples (or packed rows) per micro-batch on this process."""
    accum: int
    """Micro-batches per optimizer step on this process."""
    world: World
    spec: DistributedSpec
    pieces: int = 1
    """Passes each micro-batch is cut into to stay within the token budget (:mod:`lmforge.engine.budget`)."""

    @property
    def global_batch(self) -> int:
        """Examples per optimizer step over every process."""
        return self.per_device * self.accum * self.world.size

    @property
    def micro_rows(self) -> int:
        """Most rows one forward/backward pass holds."""
        return math.ceil(self.per_device / self.pieces)

    @property
    def passes(self) -> int:
        """Forward/backward passes per optimizer step on this process (the Trainer's accumulation)."""
        return self.accum * self.pieces

    def trainer_arguments(self) -> dict[str, Any]:
        """Extra ``TrainingArguments`` for this layout (none for a single process)."""
        if not self.world.distributed:
            return {}
        arguments: dict[str, Any] = {
            "ddp_backend": backend_for_device(),
            "ddp_timeout": int(self.spec.timeout_minutes * 60),
            # Every trained weight gets a gradient in every step (LoRA included): no unused-parameter scan.
            "ddp_find_unused_parameters": False,
        }
        if self.spec.strategy == "fsdp":
            fsdp = self.spec.fsdp
            arguments["fsdp"] = True
            arguments["fsdp_config"] = {
                "version": 2,
                "reshard_after_forward": fsdp.sharding == "full_shard",
                "cpu_offload": fsdp.cpu_offload,
                "activation_checkpointing": fsdp.activation_checkpointing,
                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP" if fsdp.auto_wrap else "NO_WRAP",
                "state_dict_type": "FULL_STATE_DICT" if fsdp.state_dict == "full" else "SHARDED_STATE_DICT",
            }
        elif self.spec.strategy == "deepspeed":
            arguments["deepspeed"] = self.spec.deepspeed.config or deepspeed_config(self.spec)
        return arguments

    def as_manifest(self) -> dict[str, Any]:
        """What a training stage's manifest records about how it ran."""
        return {
            **self.world.as_manifest(),
            "strategy": self.spec.strategy if self.world.distributed else "single",
            "per_device_batch": self.per_device,
            "grad_accum": self.accum,
            "global_batch": self.global_batch,
            "passes_per_step": self.passes,
            "rows_per_pass": self.micro_rows,
        }


def deepspeed_config(spec: DistributedSpec) -> dict[str, Any]:
    """A DeepSpeed config for ``spec.deepspeed.zero_stage``; ``auto`` values are filled in by transformers."""
    zero: dict[str, Any] = {"stage": spec.deepspeed.zero_stage}
    if spec.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
    }


def process_layout(
    spec: TrainSpec, dist: DistributedSpec, world: World, where: str = "distributed", micro_rows: int | None = None
) -> ProcessLayout:
    """Each process's micro-batch and accumulation under ``dist.global_batch``, its micro-batches cut
    into passes of at most ``micro_rows`` rows (a token budget) when given.

    ``keep`` divides the recipe's accumulation by the number of processes when it can, else the
    micro-batch, so the step's examples stay ``batch_size x grad_accum``.

    Raises:
        ConfigError: ``keep`` with neither divisible by the number of processes; DeepSpeed not installed.
    """
    per_device, accum, size = spec.batch_size, spec.grad_accum, world.size
    if size > 1 and dist.global_batch == "keep":
        if accum % size == 0:
            accum //= size
        elif per_device % size == 0:
            per_device //= size
        else:
            raise ConfigError(
                f"{where}.global_batch",
                [
                    Problem(
                        f"{where}.global_batch",
                        f"got 'keep' with {size} processes, but neither grad_accum ({accum}) nor batch_size "
                        f"({per_device}) divides by {size}; make one of them a multiple of {size}, or set "
                        f"{where}.global_batch: grow (each process does batch_size x grad_accum)",
                    )
                ],
            )
    if size > 1:
        check_strategy(dist, where)
    pieces = math.ceil(per_device / micro_rows) if micro_rows else 1
    return ProcessLayout(per_device, accum, world, dist, pieces)


def check_strategy(dist: DistributedSpec, where: str = "distributed") -> None:
    """Refuse a strategy this machine cannot run, before anything runs.

    FSDP and DeepSpeed come through accelerate, which enables them for accelerators only: on a CPU
    it would silently fall back to DDP (every process holding the whole model), so lmforge refuses.

    Raises:
        ConfigError: fsdp / deepspeed without CUDA; deepspeed not installed.
    """
    import torch

    if dist.strategy == "ddp":
        return
    problems = []
    if not torch.cuda.is_available():
        problems.append(
            Problem(
                f"{where}.strategy",
                f"got {dist.strategy!r}, but no CUDA GPU is visible: accelerate (the Trainer's engine) shards with "
                f"{'FSDP' if dist.strategy == 'fsdp' else 'DeepSpeed'} on GPUs only and would silently fall back "
                "to DDP on CPUs; use strategy: ddp here (benchmarks/gpu_check.py runs FSDP on a GPU machine)",
            )
        )
    if dist.strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        problems.append(Problem(f"{where}.strategy", "got 'deepspeed', which is not installed: pip install deepspeed"))
    if problems:
        raise ConfigError(where, problems)
