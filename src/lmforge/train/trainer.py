"""What every training stage shares: the HF Trainer set up once, the way all of them need it.

Each stage (``cpt``, ``mlm``, ``sft``, ``seq2seq``) supplies a dataset, a collator and a function
that returns the *summed* loss of a micro-batch and the number of trained positions in it. The
Trainer divides by the number of trained positions of the whole optimizer step (all accumulated
micro-batches together), so a step's loss is a per-token mean however the tokens fall into
micro-batches. Around that: validation per epoch or every N steps with the best checkpoint kept,
early stopping, clipping, warm-up and schedules, seeds, TensorBoard (W&B / MLflow on request), and
resuming an interrupted run from its last complete checkpoint with the optimizer, scheduler, RNG
and data position it had.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge import distributed
from lmforge.config import DistributedSpec, TrainSpec
from lmforge.distributed import all_reduce_sum
from lmforge.errors import ConfigError, Problem, StageError
from lmforge.hardware import MB, peak_rss_mb, usable_cores
from lmforge.models import cpu_supports_bf16
from lmforge.rundir import StageDir, atomic_write_text, remove_tree, split_path, stage_folder
from lmforge.train.batches import (
    EpochSeededLengthSampler,
    StepBatches,
    WithFillers,
    blank_fillers,
    call_loss,
    is_filler,
)
from lmforge.train.budget import MicroBatching
from lmforge.train.layout import ProcessLayout, process_layout
from lmforge.train.progress import progress_callback, tensorboard_callback

LossSum = Callable[[Any, dict[str, Any]], tuple[Any, int]]
"""``(model, batch) -> (summed loss tensor, trained positions)``. A loss that also has a ``drain()``
method returning ``{name: value}`` (e.g. preference tuning's reward margin and accuracy, averaged since
the last call) gets those logged next to the loss, and next to the validation loss for ``eval_loss_sum``
(give the two different objects, so the validation passes do not mix into the training figures)."""

_BNB_OPTIMIZERS = {"adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit"}
_BNB_OPTIMIZERS["paged_adamw_32bit"] = "paged_adamw_32bit"
_OPTIMIZERS = {"adamw": "adamw_torch_fused", "adafactor": "adafactor", "sgd": "sgd", **_BNB_OPTIMIZERS}


# ---------------------------------------------------------------- setup checks


def check_training_setup(spec: TrainSpec, where: str, source: str) -> None:
    """Refuse settings this machine cannot honour, all at once, before any model is loaded.

    Raises:
        ConfigError: CUDA-only features on a machine without CUDA, missing optional packages.
    """
    import torch

    problems: list[Problem] = []
    cuda = torch.cuda.is_available()
    needs_bnb = spec.quantization != "none" or spec.optimizer in _BNB_OPTIMIZERS
    if spec.quantization != "none" and not cuda:
        problems.append(
            Problem(
                f"{where}.quantization",
                f"got {spec.quantization!r}; bitsandbytes quantization (QLoRA) needs a CUDA GPU and none is "
                f"visible here; set {where}.quantization: none (plain LoRA trains on CPU)",
            )
        )
    if spec.optimizer in _BNB_OPTIMIZERS and not cuda:
        problems.append(
            Problem(
                f"{where}.optimizer",
                f"got {spec.optimizer!r}; 8-bit and paged optimizers (bitsandbytes) need a CUDA GPU and none is "
                f"visible here; use adamw, adafactor or sgd",
            )
        )
    if needs_bnb and cuda and importlib.util.find_spec("bitsandbytes") is None:
        problems.append(Problem(where, "quantization / 8-bit optimizers need bitsandbytes: pip install bitsandbytes"))
    for backend in spec.report_to:
        if backend != "tensorboard" and importlib.util.find_spec(backend) is None:
            problems.append(Problem(f"{where}.report_to", f"{backend!r} is not installed: pip install {backend}"))
    if problems:
        raise ConfigError(source, problems)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch before a model is built, so adapter initialisation is reproducible."""
    from transformers import set_seed

    set_seed(seed)


def use_bf16(precision: str) -> bool:
    """bf16 autocast: on request, or (auto) on CUDA and on CPUs with native bf16 matmuls."""
    import torch

    if precision == "auto":
        return torch.cuda.is_available() or cpu_supports_bf16()
    return precision == "bf16"


EAGER_SCORES_BUDGET_MB = 1024.0
"""Most memory ``attention: auto`` lets the eager kernel keep in attention scores on a CPU (MB)."""


def eager_scores_bytes(rows: int, longest: int, heads: int, width: int = 2) -> float:
    """Bytes eager attention keeps for the backward pass in one layer: the fp32 softmax output, its
    copy in the compute dtype (``width`` bytes) and the mask, per head and token pair of a micro-batch."""
    return float(rows * longest**2 * heads * (5 + width))


def eager_scores_mb(spec: TrainSpec, rows: int, longest: int, heads: int, layers: int) -> float:
    """MB of attention scores eager attention would hold for the backward pass of a micro-batch: every
    layer's, or under activation checkpointing about one layer's (the layers are recomputed one by one)."""
    width = 2 if use_bf16(spec.precision) else 4
    kept_layers = 1 if spec.gradient_checkpointing else layers
    return eager_scores_bytes(rows, longest, heads, width) * kept_layers / MB


def attention_row(lengths: list[int], batch_size: int, packing: bool) -> tuple[int, int]:
    """(rows, tokens per row) of the largest micro-batch attention sees, from the examples' lengths:
    ``batch_size`` rows padded to the longest example, or — packed — one row that can hold the
    ``batch_size`` longest examples together (judging by ``max_length`` alone underestimates it)."""
    ordered = sorted(lengths, reverse=True)
    if packing:
        return 1, sum(ordered[:batch_size])
    return min(batch_size, len(ordered)), ordered[0] if ordered else 0


def attention_kernel(attention: str, longest: int, scores_mb: float = 0.0) -> str:
    """The attention implementation to train with (``auto``: see ``SFTSpec.attention``).

    ``longest`` is the longest row trained on; ``scores_mb`` what eager attention would keep over all
    layers for the largest micro-batch (:func:`eager_scores_mb`).
    """
    import torch

    if attention != "auto":
        return attention
    if torch.cuda.is_available():
        return "sdpa"
    # CPU: the eager kernel beat sdpa's flash backward on short rows, but it keeps the score matrices
    # of every layer: on demo-rag (16 rows up to 385 tokens, 4.5 GB of scores) sdpa peaked at 8.5 GB
    # against eager's 13.2 GB for 5% more time (docs/PERFORMANCE.md).
    return "eager" if longest <= 512 and scores_mb <= EAGER_SCORES_BUDGET_MB else "sdpa"


def quantization_config(spec: TrainSpec) -> Any:
    """bitsandbytes settings for QLoRA (4-bit NF4, double quantization, bf16 compute) or 8-bit; None for none."""
    if spec.quantization == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if spec.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        # Packed 4-bit weights stored as bf16 elements, so FSDP can shard them with the bf16 weights
        # (the layout transformers and PEFT document for FSDP + QLoRA); the same bits otherwise.
        bnb_4bit_quant_storage=torch.bfloat16,
    )


def eval_split_path(run_path: Path, spec: TrainSpec, needed_by: str) -> Path | None:
    """The validation split: ``spec.eval_split``, else ``val`` when the data stage wrote one, else None."""
    if spec.eval_split is not None:
        return split_path(run_path, spec.eval_split, needed_by=needed_by)
    data = StageDir.open(run_path, "data")
    splits = data.manifest.get("outputs", {}).get("splits", {})
    if "val" in splits:
        return Path(splits["val"])
    if spec.early_stopping_patience is not None:
        raise StageError(
            f"{needed_by}.early_stopping_patience needs a validation split, and the data stage wrote none; "
            "set data.val_fraction (e.g. 0.1) or name one with eval_split"
        )
    return None


# ---------------------------------------------------------------- threads and compilation


def configure_threads(per_process: int | None = None) -> int:
    """One torch thread per usable physical core, unless the user chose a number; returns the count.

    With several processes on this machine (``LOCAL_WORLD_SIZE``), each gets its share of the cores
    (at least one), so processes x threads never oversubscribe them; ``per_process`` overrides that.

    A choice is OMP_NUM_THREADS / MKL_NUM_THREADS in the environment, or ``torch.set_num_threads``
    to something other than torch's default. Usable cores are the physical ones in this process's
    CPU affinity, capped by a cgroup CPU quota (containers): torch's default counts every core of
    the host, and more threads than cores makes every parallel region wait for a parked thread.
    """
    import torch

    current = torch.get_num_threads()
    if per_process is not None:
        torch.set_num_threads(per_process)
        return per_process
    local = distributed.world().local_size
    if (os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")) and local == 1:
        return current
    if current not in _default_thread_counts() and local == 1:
        return current  # set by the user in this process
    wanted = max(1, usable_cores() // local)
    if wanted != current:
        torch.set_num_threads(wanted)
    return wanted


def _default_thread_counts() -> set[int]:
    """Thread counts torch may pick by itself (its default follows the host's cores)."""
    counts = {os.cpu_count() or 1}
    try:
        import psutil

        counts.add(psutil.cpu_count(logical=False) or 1)
    except ImportError:
        pass
    return counts


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def compile_blocks(model: Any, label: str, backend: str = "inductor") -> int:
    """``torch.compile`` every block of the model's main stack of layers in place; returns how many.

    Blocks are compiled one by one rather than the whole model: the stages call the backbone and the
    loss directly, and identical blocks share one compiled graph, so compile time does not grow with
    depth. Compilation happens at the first step; :func:`compile_seconds` reports its cost.
    """
    import torch

    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1]
    stacks = [m for m in stacks if len({type(block) for block in m}) == 1]
    if not stacks:
        print(f"{label}: warning: compile is on but no stack of identical layers was found; training uncompiled")
        return 0
    blocks = max(stacks, key=lambda m: sum(p.numel() for p in m.parameters()))
    torch._dynamo.utils.clear_compilation_metrics()
    for block in blocks:
        block.compile(backend=backend)
    print(f"{label}: torch.compile on {len(blocks)} {type(blocks[0]).__name__} blocks (compiled at the first step)")
    return len(blocks)


def compile_seconds() -> float:
    """Seconds spent compiling (dynamo, AOT autograd, inductor) since :func:`compile_blocks`."""
    from torch._dynamo.utils import get_compilation_metrics

    metrics = get_compilation_metrics()
    total_us = sum((m.duration_us or 0) + (m.backward_cumulative_compile_time_us or 0) for m in metrics)
    return round(total_us / 1e6, 1)


# ---------------------------------------------------------------- the Trainer


def build_trainer(
    *,
    model: Any,
    spec: TrainSpec,
    seed: int,
    stage: StageDir,
    label: str,
    train_dataset: Any,
    eval_dataset: Any | None,
    collator: Callable,
    loss_sum: LossSum,
    eval_loss_sum: LossSum | None = None,
    eval_collator: Callable | None = None,
    sampling: str = "random",
    train_sampler: Any | None = None,
    loss_shifts_labels: bool = False,
    distributed_spec: DistributedSpec | None = None,
    micro_batching: MicroBatching | None = None,
    lengths: list[int] | None = None,
) -> Any:
    """An HF Trainer whose loss is ``loss_sum`` normalised over each optimizer step's trained positions.

    Args:
        eval_collator: the validation batches' collator when it differs from ``collator`` (distillation:
            the training batches carry the teacher's distributions, the validation ones do not).
        sampling: ``random`` or ``group_by_length`` (batches of similar lengths, less padding).
        train_sampler: the epoch's order of examples, with ``set_epoch``, to use instead (overrides ``sampling``).
        loss_shifts_labels: the loss predicts ``labels[:, 1:]`` (causal LMs): position 0 is not counted.
        distributed_spec: the recipe's ``distributed`` section (strategy, global batch, threads); it
            matters only when the launcher started several processes.
        micro_batching: rows per forward/backward pass under the stage's token budget
            (:func:`lmforge.train.budget.micro_batching`); None: ``batch_size`` rows.
        lengths: each training example's length for length grouping and token budgets; default: the
            length of its ``input_ids`` (a preference pair passes the longer of its two completions).
    """
    import torch
    from transformers import EarlyStoppingCallback, PrinterCallback, Trainer
    from transformers.trainer_utils import EvalLoopOutput

    from lmforge.train import schedule

    if "auto" in (spec.lr, spec.epochs):  # sft's defaults, resolved for this split and model (train/schedule.py)
        spec = schedule.resolved(spec, len(train_dataset), schedule.config_parameters(model.config.to_dict()))
        shown = f"lr {spec.lr:g}, {spec.epochs:g} epochs over {len(train_dataset)} examples"
        print(f"{label}: {shown} (auto, see docs/TRAINING.md)")
    bf16 = use_bf16(spec.precision)
    eval_loss_sum = eval_loss_sum or loss_sum
    world = distributed.world()
    micro_rows = micro_batching.rows if micro_batching is not None else None
    layout = process_layout(spec, distributed_spec or DistributedSpec(), world, micro_rows=micro_rows)

    class SummedLossTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # Autocast is set here because the stages call backbones directly, not model.forward.
            device = inputs["input_ids"].device.type
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
                loss, count = call_loss(model, loss_sum, inputs)
            if num_items_in_batch is None:
                loss = loss / max(count, 1)
            else:
                # num_items_in_batch counts the trained positions of the whole step on every process
                # (average_tokens_across_devices); DDP/FSDP/DeepSpeed average gradients over processes,
                # so each process's share is scaled back up by their number.
                loss = loss * self.accelerator.num_processes / num_items_in_batch
            return (loss, None) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            if "loss" in logs and hasattr(loss_sum, "drain"):
                logs = {**logs, **loss_sum.drain()}
            return super().log(logs, *args, **kwargs)

        def get_train_dataloader(self):
            return self._step_loader(self.train_dataset, train_batches, self.data_collator)

        def get_eval_dataloader(self, eval_dataset=None):
            dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
            order = range(len(dataset))
            batches = StepBatches(order, self.args.per_device_eval_batch_size, 1, world.rank, world.size)
            return self._step_loader(dataset, batches, eval_collator or self.data_collator)

        def _step_loader(self, dataset, batches, collate):
            from torch.utils.data import DataLoader

            collate = blank_fillers(collate)
            loader = DataLoader(WithFillers(dataset), batch_sampler=batches, collate_fn=collate, num_workers=0)
            prepared = self.accelerator.prepare(loader)
            # The batches are already this process's share: make accelerate's sharding wrapper a passthrough.
            wrapper = getattr(prepared, "batch_sampler", None)
            if wrapper is not None and getattr(wrapper, "batch_sampler", None) is batches:
                wrapper.num_processes, wrapper.process_index = 1, 0
            return prepared

        def _run_epoch(self, model, epoch, *args, **kwargs):
            train_batches.set_epoch(epoch)  # before the epoch's batches are drawn, also when resuming
            return super()._run_epoch(model, epoch, *args, **kwargs)

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, **kw):
            # A per-token mean over the whole split and every process (the stock loop averages per-batch means).
            prefix = kw.get("metric_key_prefix", "eval")
            model = self._wrap_model(self.model, training=False, dataloader=dataloader)
            model.eval()
            total, count, samples = 0.0, 0, 0
            with torch.no_grad():
                for inputs in dataloader:
                    inputs = self._prepare_inputs(inputs)
                    device = inputs["input_ids"].device.type
                    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
                        loss, n = call_loss(model, eval_loss_sum, inputs)
                    total, count = total + float(loss), count + n
                    samples += 0 if n == 0 and is_filler(inputs) else int(inputs["input_ids"].shape[0])
            total, count, samples = all_reduce_sum([total, count, samples])
            metrics = {f"{prefix}_loss": total / max(count, 1)}
            if hasattr(eval_loss_sum, "drain"):
                metrics.update({f"{prefix}_{name}": value for name, value in eval_loss_sum.drain().items()})
            return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=int(samples))

    configure_threads(layout.spec.threads_per_process)
    if spec.compile:
        compile_blocks(model, label)
    has_eval = eval_dataset is not None
    args = training_arguments(spec, seed, stage, has_eval, bf16, sampling, layout)
    order = train_sampler
    if lengths is None and (sampling == "group_by_length" or layout.pieces > 1):
        lengths = [len(train_dataset[i]["input_ids"]) for i in range(len(train_dataset))]
    if order is None and sampling == "group_by_length":
        order = EpochSeededLengthSampler(lengths, layout.per_device * layout.accum * world.size, seed)
    elif order is None:
        order = EpochSeededLengthSampler([1] * len(train_dataset), 1, seed)  # a plain seeded shuffle
    train_batches = StepBatches(order, layout.per_device, layout.accum, world.rank, world.size, layout.pieces, lengths)
    callbacks = [progress_callback(label)]
    if "tensorboard" in spec.report_to and importlib.util.find_spec("tensorboard") is None:
        print(
            f"{label}: warning: tensorboard is not installed (pip install tensorboard); logging to train_log.jsonl only"
        )
    elif "tensorboard" in spec.report_to:
        callbacks.append(tensorboard_callback(stage.path("tensorboard")))
    if spec.early_stopping_patience is not None and has_eval:
        callbacks.append(EarlyStoppingCallback(spec.early_stopping_patience, spec.early_stopping_threshold))
    trainer = SummedLossTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # replaced by the rich progress callback
    trainer.layout = layout
    trainer.micro_batching = micro_batching
    # Our loss is already a per-token mean over the whole accumulated step (num_items_in_batch).
    trainer.model_accepts_loss_kwargs = True
    trainer.loss_is_scaled_for_ga = True
    trainer._loss_shifts_labels = loss_shifts_labels
    return trainer


def training_arguments(
    spec: TrainSpec, seed: int, stage: StageDir, has_eval: bool, bf16: bool, sampling: str, layout: ProcessLayout
) -> Any:
    """The Trainer's arguments for ``spec``: schedule, precision, validation, checkpoints, seeds, logging,
    and the multi-process strategy of ``layout`` (DDP, FSDP2 or DeepSpeed, handed to accelerate)."""
    import torch
    from transformers import TrainingArguments

    schedule = "steps" if spec.eval_steps else "epoch"
    save_steps = spec.save_steps or 500
    if has_eval:  # checkpoints follow the validation schedule, so the best one can be kept
        save_steps = spec.eval_steps or save_steps
    return TrainingArguments(
        output_dir=str(stage.path("checkpoints")),
        per_device_train_batch_size=layout.micro_rows,
        per_device_eval_batch_size=layout.micro_rows,
        gradient_accumulation_steps=layout.passes,
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps,
        learning_rate=spec.lr,
        lr_scheduler_type=spec.scheduler,
        warmup_steps=spec.warmup_ratio,  # transformers 5: a value below 1 is a share of the steps
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
        optim=_OPTIMIZERS[spec.optimizer],
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=spec.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if spec.gradient_checkpointing else None,
        logging_steps=spec.logging_steps,
        eval_strategy=schedule if has_eval else "no",
        eval_steps=spec.eval_steps or None,
        save_strategy=schedule if has_eval else ("steps" if spec.save_steps else "epoch"),
        save_steps=save_steps,
        save_total_limit=spec.save_total_limit,
        load_best_model_at_end=has_eval and spec.load_best,
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
        seed=seed,
        data_seed=seed,
        report_to=[name for name in spec.report_to if name != "tensorboard"] or "none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        train_sampling_strategy=sampling,
        **layout.trainer_arguments(),
    )


# ---------------------------------------------------------------- running


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest ``checkpoint-N`` that was written to the end (its trainer state is written last)."""
    complete = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    complete = [p for p in complete if p.name.split("-")[-1].isdigit()]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def clear_stale(stage: StageDir, resuming: bool, *names: str) -> None:
    """Remove what an earlier attempt with *other* inputs left (checkpoints, a merged base): never resume from it."""
    if not resuming:
        for name in ("checkpoints", *names):
            remove_tree(stage.path(name))


def run_training(trainer: Any, stage: StageDir, resuming: bool, label: str) -> tuple[Any, float]:
    """Train, resuming from the last complete checkpoint when an interrupted attempt left one.

    Returns:
        The Trainer's TrainOutput and the wall time in seconds.
    """
    # Every process resumes from the checkpoint the leader found (none may see a half-written newer one).
    checkpoint = distributed.leader_decides(last_complete_checkpoint(stage.path("checkpoints")) if resuming else None)
    if resuming and checkpoint is None:
        remove_tree(stage.path("checkpoints"))  # nothing complete: start over cleanly
    if checkpoint is not None:
        step = checkpoint.name.split("-")[-1]
        print(
            f"{label}: resuming an interrupted run from {checkpoint.name} (step {step}: weights, optimizer, "
            "scheduler, RNG and data position)"
        )
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return result, time.perf_counter() - started


def training_metrics(trainer: Any, result: Any, seconds: float) -> dict[str, Any]:
    """Loss, steps, epochs, time and (with validation) the best validation loss and where it was."""
    state = trainer.state
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    evals = [entry["eval_loss"] for entry in state.log_history if "eval_loss" in entry]
    metrics: dict[str, Any] = {
        "train_loss": round(float(result.training_loss), 5),
        "final_loss": round(float(losses[-1]), 5) if losses else None,
        "steps": state.global_step,
        "epochs": round(float(state.epoch or 0.0), 3),
        "seconds": round(seconds, 1),
        "precision": "bf16" if trainer.args.bf16 else "fp32",
        "threads": _torch_threads(),
        "peak_rss_mb": peak_rss_mb(),
    }
    layout = getattr(trainer, "layout", None)
    if layout is not None and layout.world.distributed:
        metrics["processes"] = layout.as_manifest()
    metrics["compute"] = compute_choices(trainer)
    if any(getattr(m, "_compiled_call_impl", None) is not None for m in trainer.model.modules()):
        metrics["compile_seconds"] = compile_seconds()
    if evals:
        metrics["eval_loss"] = round(float(evals[-1]), 5)
        metrics["best_eval_loss"] = round(float(min(evals)), 5)
        if state.best_global_step:
            metrics["best_step"] = state.best_global_step
        planned = state.max_steps
        metrics["stopped_early"] = bool(planned and state.global_step < planned)
    return metrics


def compute_choices(trainer: Any) -> dict[str, str]:
    """What the stage computed with and why: device, instruction set, precision, attention kernel."""
    import torch

    from lmforge.hardware import cpu_isa

    model = trainer.model
    attention = str(getattr(getattr(model, "config", None), "_attn_implementation", None) or "default")
    if torch.cuda.is_available():
        device, isa = "cuda", torch.cuda.get_device_name(0)
    else:
        device, isa = "cpu", cpu_isa()
    bf16 = bool(trainer.args.bf16)
    native = device == "cuda" or isa in ("amx", "avx512_bf16")
    if bf16:
        why = "bf16 autocast: native bf16 matmuls" if native else "bf16 as the recipe asks (emulated here: slow)"
    else:
        why = "fp32 as the recipe asks" if native else "fp32: this CPU has no native bf16 matmuls (emulated: slower)"
    choices = {"device": device, "isa": isa, "precision": "bf16" if bf16 else "fp32", "why": why}
    choices["attention"] = attention
    micro = getattr(trainer, "micro_batching", None)
    if micro is not None:
        choices["micro_batch"] = micro.reason
    return choices


def write_log(trainer: Any, path: Path) -> None:
    """The Trainer's log history (losses, learning rates, grad norms, validation losses) as JSON Lines."""
    lines = [json.dumps(entry) for entry in trainer.state.log_history]
    atomic_write_text(path, "\n".join(lines) + "\n")


def save_folder(target: Path, *savables: Any) -> Path:
    """``save_pretrained`` every object into ``target``, via a staging folder renamed into place (leader only)."""

    def save(staging: Path) -> None:
        for savable in savables:
            savable.save_pretrained(staging)

    return stage_folder(target, save)
