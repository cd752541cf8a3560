"""What every training stage shares: the HF Trainer set up once, the way all of them need it
(:class:`lmforge.engine.hf_trainer.SummedLossTrainer`, its overrides documented there; what a stage
computes with, in ``compute.py``).

Each stage (``cpt``, ``mlm``, ``sft``, ``seq2seq``, ``dpo``) supplies a dataset, a collator and a function
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge import distributed
from lmforge.config import DistributedSpec, TrainSpec
from lmforge.engine.batches import (
    EpochSeededLengthSampler,
    StepBatches,
)
from lmforge.engine.budget import MicroBatching
from lmforge.engine.compute import (
    BNB_OPTIMIZERS,
    compile_blocks,
    compile_seconds,
    compute_choices,
    configure_threads,
    torch_threads,
    use_bf16,
)
from lmforge.engine.deadline import budget_callback
from lmforge.engine.layout import ProcessLayout, process_layout
from lmforge.engine.progress import live_log_callback, progress_callback, tensorboard_callback
from lmforge.errors import StageError
from lmforge.hardware import peak_rss_mb
from lmforge.log import stage_log
from lmforge.rundir import StageDir, atomic_write_text, remove_tree, split_path, stage_folder

LossSum = Callable[[Any, dict[str, Any]], tuple[Any, int]]
"""``(model, batch) -> (summed loss tensor, trained positions)``. A loss that also has a ``drain()``
method returning ``{name: value}`` (e.g. preference tuning's reward margin and accuracy, averaged since
the last call) gets those logged next to the loss, and next to the validation loss for ``eval_loss_sum``
(give the two different objects, so the validation passes do not mix into the training figures)."""

_OPTIMIZERS = {"adamw": "adamw_torch_fused", "adafactor": "adafactor", "sgd": "sgd", **BNB_OPTIMIZERS}


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
    distributed_spec: DistributedSpec | None = None,
    micro_batching: MicroBatching | None = None,
    lengths: list[int] | None = None,
    loss_shifts_labels: bool = False,
) -> Any:
    """An HF Trainer whose loss is ``loss_sum`` normalised over each optimizer step's trained positions.

    Args:
        eval_collator: the validation batches' collator when it differs from ``collator`` (distillation:
            the training batches carry the teacher's distributions, the validation ones do not).
        sampling: ``random`` or ``group_by_length`` (batches of similar lengths, less padding).
        train_sampler: the epoch's order of examples, with ``set_epoch``, to use instead (overrides ``sampling``).
        distributed_spec: the recipe's ``distributed`` section (strategy, global batch, threads); it
            matters only when the launcher started several processes.
        micro_batching: rows per forward/backward pass under the stage's token budget
            (:func:`lmforge.engine.budget.micro_batching`); None: ``batch_size`` rows.
        lengths: each training example's length for length grouping and token budgets; default: the
            length of its ``input_ids`` (a preference pair passes the longer of its two completions).
        loss_shifts_labels: the loss predicts ``labels[:, 1:]`` (causal LMs): position 0 is not counted.
    """
    from transformers import PrinterCallback

    from lmforge.engine.hf_trainer import SummedLossTrainer

    spec = _resolved_auto(spec, model, len(train_dataset), label)
    bf16 = use_bf16(spec.precision)
    eval_loss_sum = eval_loss_sum or loss_sum
    world = distributed.world()
    micro_rows = micro_batching.rows if micro_batching is not None else None
    layout = process_layout(spec, distributed_spec or DistributedSpec(), world, micro_rows=micro_rows)

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
    trainer = SummedLossTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        callbacks=_callbacks(spec, stage, label, has_eval, world.rank),
        loss_sum=loss_sum,
        eval_loss_sum=eval_loss_sum,
        eval_collator=eval_collator,
        train_batches=train_batches,
        bf16=bf16,
        world=world,
        layout=layout,
        micro_batching=micro_batching,
        loss_shifts_labels=loss_shifts_labels,
    )
    trainer.remove_callback(PrinterCallback)  # replaced by the rich progress callback
    return trainer


def _resolved_auto(spec: TrainSpec, model: Any, examples: int, label: str) -> TrainSpec:
    """``spec`` with ``lr: auto`` / ``epochs: auto`` resolved for this split and model (engine/schedule.py)."""
    from lmforge.engine import schedule

    if "auto" not in (spec.lr, spec.epochs):
        return spec
    parameters = schedule.config_parameters(model.config.to_dict())
    unknown = spec.lr == "auto" and parameters <= 0
    spec = schedule.resolved(spec, examples, parameters)
    stage_log(label).info(
        f"lr {spec.lr:g}, {spec.epochs:g} epochs over {examples} examples (auto, see docs/TRAINING.md)"
    )
    if unknown:
        stage_log(label).warning(
            f"the model's size could not be read from its config (no hidden_size / num_hidden_layers): "
            f"lr auto uses the conservative {spec.lr:g}; set {label}.lr to choose another"
        )
    return spec


def _callbacks(spec: TrainSpec, stage: StageDir, label: str, has_eval: bool, rank: int) -> list[Any]:
    """Progress bar, the live train_log.jsonl, TensorBoard (rank 0) and early stopping, as the spec asks."""
    from transformers import EarlyStoppingCallback

    callbacks = [progress_callback(label), live_log_callback(stage.path("train_log.jsonl"))]
    budget = budget_callback(label)  # the run's time budget, when it has one
    if budget is not None:
        callbacks.append(budget)
    if "tensorboard" in spec.report_to and importlib.util.find_spec("tensorboard") is None:
        stage_log(label).warning(
            "tensorboard is not installed (pip install tensorboard); logging to train_log.jsonl only"
        )
    elif "tensorboard" in spec.report_to and rank == 0:  # followers write nothing in the run folder
        callbacks.append(tensorboard_callback(stage.path("tensorboard")))
    if spec.early_stopping_patience is not None and has_eval:
        callbacks.append(EarlyStoppingCallback(spec.early_stopping_patience, spec.early_stopping_threshold))
    return callbacks


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
        stage_log(label).info(
            f"resuming an interrupted run from {checkpoint.name} (step {step}: weights, optimizer, "
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
        "threads": torch_threads(),
        "peak_rss_mb": peak_rss_mb(),
    }
    layout = getattr(trainer, "layout", None)
    if layout is not None and layout.world.distributed:
        metrics["processes"] = layout.as_manifest()
    metrics["compute"] = compute_choices(trainer)
    for callback in trainer.callback_handler.callbacks:
        if hasattr(callback, "outcome"):  # the budget callback: what the run's time budget did to the schedule
            metrics["budget"] = callback.outcome()
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
