"""The HF Trainer as every lmforge training stage runs it (:func:`lmforge.engine.trainer.build_trainer` builds it).

Imported only when a stage trains (it imports transformers). The overrides, each for one reason:

* :meth:`SummedLossTrainer.compute_loss`: the stage's loss function returns a *summed* loss and its
  count (trained tokens, or pairs); it runs under bf16 autocast (the stages call backbones directly,
  not ``model.forward``) through the DDP/FSDP/DeepSpeed wrappers (``batches.call_loss``), and is
  divided by the count of the whole optimizer step on every process (``num_items_in_batch``).
* :meth:`~SummedLossTrainer.log`: adds the statistics a loss function keeps (its ``drain()``).
* :meth:`~SummedLossTrainer.get_train_dataloader` / :meth:`~SummedLossTrainer.get_eval_dataloader`:
  lmforge's own step plan (``batches.StepBatches``): this process's micro-batches, fillers where a
  step runs short, accelerate's sharding made a passthrough.
* :meth:`~SummedLossTrainer._run_epoch`: the epoch's order is drawn from its own seed, also when a
  run resumes mid-epoch.
* :meth:`~SummedLossTrainer.evaluation_loop`: a per-token (per-pair) mean over the whole split and
  every process, not a mean of per-batch means.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import EvalLoopOutput

from lmforge.distributed import World, all_reduce_sum
from lmforge.engine.batches import StepBatches, WithFillers, blank_fillers, call_loss, is_filler


class SummedLossTrainer(Trainer):
    """An HF Trainer whose loss is a stage's summed loss normalised over each optimizer step's count."""

    def __init__(
        self,
        *args: Any,
        loss_sum: Callable,
        eval_loss_sum: Callable,
        eval_collator: Callable | None,
        train_batches: StepBatches,
        bf16: bool,
        world: World,
        layout: Any = None,
        micro_batching: Any = None,
        loss_shifts_labels: bool = False,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.lm_loss_sum, self.lm_eval_loss_sum, self.lm_eval_collator = loss_sum, eval_loss_sum, eval_collator
        self.lm_train_batches, self.lm_bf16, self.lm_world = train_batches, bf16, world
        self.layout, self.micro_batching = layout, micro_batching  # recorded in the manifest (training_metrics)
        # The loss is already a per-token mean over the whole accumulated step (num_items_in_batch).
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        # Read by transformers when it counts a step's trained positions (num_items_in_batch): over
        # labels[..., 1:] when True. It guesses it from the model's own loss type, which the stage's loss replaces.
        self._loss_shifts_labels = loss_shifts_labels

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        device = inputs["input_ids"].device.type
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=self.lm_bf16):
            loss, count = call_loss(model, self.lm_loss_sum, inputs)
        if num_items_in_batch is None:
            loss = loss / max(count, 1)
        else:
            # num_items_in_batch counts the trained positions of the whole step on every process
            # (average_tokens_across_devices); DDP/FSDP/DeepSpeed average gradients over processes,
            # so each process's share is scaled back up by their number.
            loss = loss * self.accelerator.num_processes / num_items_in_batch
        return (loss, None) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and hasattr(self.lm_loss_sum, "drain"):
            logs = {**logs, **self.lm_loss_sum.drain()}
        return super().log(logs, *args, **kwargs)

    def get_train_dataloader(self):
        return self._step_loader(self.train_dataset, self.lm_train_batches, self.data_collator)

    def get_eval_dataloader(self, eval_dataset=None):
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        world = self.lm_world
        batches = StepBatches(range(len(dataset)), self.args.per_device_eval_batch_size, 1, world.rank, world.size)
        return self._step_loader(dataset, batches, self.lm_eval_collator or self.data_collator)

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
        self.lm_train_batches.set_epoch(epoch)  # before the epoch's batches are drawn, also when resuming
        return super()._run_epoch(model, epoch, *args, **kwargs)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, **kw):
        prefix = kw.get("metric_key_prefix", "eval")
        model = self._wrap_model(self.model, training=False, dataloader=dataloader)
        model.eval()
        total, count, samples = 0.0, 0, 0
        with torch.no_grad():
            for inputs in dataloader:
                inputs = self._prepare_inputs(inputs)
                device = inputs["input_ids"].device.type
                with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=self.lm_bf16):
                    loss, n = call_loss(model, self.lm_eval_loss_sum, inputs)
                total, count = total + float(loss), count + n
                samples += 0 if n == 0 and is_filler(inputs) else int(inputs["input_ids"].shape[0])
        total, count, samples = all_reduce_sum([total, count, samples])
        metrics = {f"{prefix}_loss": total / max(count, 1)}
        if hasattr(self.lm_eval_loss_sum, "drain"):
            metrics.update({f"{prefix}_{name}": value for name, value in self.lm_eval_loss_sum.drain().items()})
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=int(samples))
