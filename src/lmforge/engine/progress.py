"""What a training stage shows while it runs: a rich progress bar with a line per logged loss, the log
itself growing in ``train_log.jsonl`` (what ``lmforge studio`` draws its live curves from), and
TensorBoard event files in the stage folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def live_log_callback(path: Path) -> Any:
    """Keep ``path`` (the stage's ``train_log.jsonl``) current while training: the history so far when training
    starts (after a resume: up to the checkpoint, without the steps that are trained again), then one line
    per logged entry. The stage rewrites the file whole when it finishes. Written by the leader alone."""
    from transformers import TrainerCallback

    class LiveLog(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(json.dumps(entry) + "\n" for entry in state.log_history), encoding="utf-8")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and state.log_history:
                with path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(state.log_history[-1]) + "\n")

    return LiveLog()


def tensorboard_callback(log_dir: Path) -> Any:
    """TensorBoard event files in the stage folder (the Trainer's default sits in the checkpoints folder)."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)))


SHOWN_STATISTICS = ("reward_margin", "reward_accuracy", "reward", "accuracy", "kl")
"""Statistics of a stage's loss that the progress line shows after the gradient norm, when logged."""


def progress_callback(label: str) -> Any:
    """A rich progress bar over optimizer steps, with a compact line per logged loss."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        def __init__(self) -> None:
            self.console = Console()
            self.progress: Progress | None = None
            self.task: Any = None

        def on_train_begin(self, args, state, control, **kwargs):
            columns = (BarColumn(), MofNCompleteColumn(), TextColumn("steps"), TimeElapsedColumn())
            self.progress = Progress(
                TextColumn(label), *columns, TimeRemainingColumn(), console=self.console, transient=True
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step, total=state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.progress is None or not logs:
                return
            parts = [f"step {state.global_step}/{state.max_steps}", f"epoch {state.epoch:.2f}"]
            if "loss" in logs:
                parts.append(f"loss {logs['loss']:.4f}")
            elif "eval_loss" in logs:
                parts.append(f"validation loss {logs['eval_loss']:.4f}")
            else:
                return
            if "learning_rate" in logs:
                parts.append(f"lr {logs['learning_rate']:.2e}")
            if "grad_norm" in logs:
                parts.append(f"grad {logs['grad_norm']:.3f}")
            # what a loss function's drain() adds (dpo's reward margin, grpo's reward and KL)
            parts += [f"{key.replace('_', ' ')} {logs[key]:.3f}" for key in SHOWN_STATISTICS if key in logs]
            self.progress.console.print("  " + "  ".join(parts), highlight=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return RichProgress()
