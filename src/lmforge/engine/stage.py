"""The frame every training stage runs in: open, fingerprint, start or resume, wrap up.

``cpt``, ``mlm``, ``sft`` (``sft.py``) and ``seq2seq`` read top to bottom the same way: open the
stage folder and find the splits to train and validate on (:func:`open_training_stage`); return
the earlier result when a finished attempt had the same fingerprint; else start, resuming an
interrupted attempt with the same fingerprint (:meth:`TrainingStage.start`); load, train
(``trainer.py``) and save; then keep the training log and drop the checkpoints
(:meth:`TrainingStage.wrap_up`). The steps that are the same in every stage live here; what a
stage does differently (its data, its model, what it saves) stays in its own module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import CPTSpec, MLMSpec, Recipe, Seq2SeqSpec, SFTSpec
from lmforge.distributed import leader_decides
from lmforge.engine.compute import check_training_setup
from lmforge.engine.trainer import clear_stale, eval_split_path, write_log
from lmforge.errors import StageError
from lmforge.hardware import reset_peak_rss
from lmforge.log import stage_log
from lmforge.models import load_tokenizer, resolve_model
from lmforge.records import Record, read_records
from lmforge.rundir import StageDir, fingerprint_data, fingerprint_file, remove_tree, split_path

StageSpec = CPTSpec | MLMSpec | SFTSpec | Seq2SeqSpec
"""The recipe section of a training stage."""


@dataclass
class TrainResult:
    """What a training stage hands back: where its weights are, its metrics, and whether it ran."""

    adapter_dir: Path | None
    """The trained LoRA adapter (``method: lora``), or None."""
    model_dir: Path | None
    """Full weights (``method: full``, and mlm's merged model after LoRA), or None."""
    metrics: dict[str, Any]
    skipped: bool
    """True when a finished attempt had the same fingerprint, so nothing ran."""

    @classmethod
    def from_outputs(cls, outputs: dict[str, Any], metrics: dict[str, Any], skipped: bool) -> TrainResult:
        """The result for a manifest's ``outputs`` (paths under ``adapter`` and ``model``)."""
        return cls(_optional_path(outputs.get("adapter")), _optional_path(outputs.get("model")), metrics, skipped)


@dataclass
class TrainingStage:
    """A training stage's folder, the split files it reads and the settings its manifest records."""

    label: str
    """The stage's name (``cpt``, ``mlm``, ``sft``, ``seq2seq``): its folder, recipe section and log prefix."""
    stage: StageDir
    run_path: Path
    train_paths: list[Path]
    """The files of the stage's ``splits``, in the recipe's order."""
    eval_path: Path | None
    """The validation split's file (see :func:`~lmforge.engine.trainer.eval_split_path`), or None."""
    config: dict[str, Any]
    """The settings the manifest records and the fingerprint covers: model, the stage's section, seed."""

    def file_hashes(self, *more: Path) -> dict[str, str]:
        """Content hash of every file the stage trains and validates on, and of ``more``, by path."""
        used = [*self.train_paths, *([self.eval_path] if self.eval_path else []), *more]
        return {str(path): fingerprint_file(path) for path in used}

    def earlier_result(self) -> TrainResult:
        """The result a finished attempt recorded in the manifest (for a stage that is skipped)."""
        return TrainResult.from_outputs(self.stage.manifest["outputs"], self.stage.manifest["metrics"], skipped=True)

    def start(self, fingerprint: str, inputs: dict[str, Any], *stale: str) -> bool:
        """Mark the stage ``running``; True when it resumes an interrupted attempt with this fingerprint.

        A fresh start removes what an attempt with other inputs left: its checkpoints, and the
        folders named in ``stale``, which must never be resumed from.
        """
        # Decided by the leader before it rewrites the manifest, so every process resumes (or not) alike.
        resuming = leader_decides(self.stage.can_resume(fingerprint))
        reset_peak_rss()  # the stage's manifest reports its own peak (metrics.peak_rss_mb)
        self.stage.start(fingerprint, self.config, inputs)
        clear_stale(self.stage, resuming, *stale)
        return resuming

    def base_model(self, recipe: Recipe, reads: str) -> Path:
        """The recipe's model as a local folder, announced with what the stage trains on (``reads``)."""
        base_dir = resolve_model(recipe.model.ref, recipe.model.revision, recipe.model.trust_remote_code)
        shown = ", ".join(map(str, self.train_paths))
        stage_log(self.label).info(f"base model {recipe.model.ref} ({base_dir}); {reads} {shown}")
        return base_dir

    def begin_on_text(self, recipe: Recipe, missing_hint: str) -> TextStart | None:
        """Start a stage that trains on ``text`` records (cpt, mlm); None when a finished attempt
        already had these settings and files (the caller returns :meth:`earlier_result`).

        Raises:
            StageError: the stage's splits hold no text records (``missing_hint`` says what to change).
        """
        fingerprint = fingerprint_data([self.config, self.file_hashes()])
        if self.stage.is_done(fingerprint):
            return None
        inputs = {"train": [str(p) for p in self.train_paths], "eval": str(self.eval_path) if self.eval_path else None}
        resuming = self.start(fingerprint, inputs)
        base_dir = self.base_model(recipe, "text from")
        tokenizer = load_tokenizer(base_dir, trust_remote_code=recipe.model.trust_remote_code)
        texts = read_texts(self.train_paths)
        if not texts:
            splits = getattr(recipe, self.label).splits
            raise StageError(f"{self.label} needs text records, and the split(s) {splits} hold none; {missing_hint}")
        return TextStart(resuming, base_dir, tokenizer, texts)

    def validation_records(self, kind: str) -> list[Record]:
        """The validation split's records of ``kind``; none (with a warning) when it holds none."""
        if self.eval_path is None:
            return []
        records = [r for r in read_records(self.eval_path) if r["kind"] == kind]
        if not records:
            stage_log(self.label).warning(
                f"the validation split {self.eval_path} holds no {kind} records; training without validation"
            )
        return records

    def wrap_up(self, trainer: Any) -> None:
        """Write the Trainer's log to ``train_log.jsonl`` and delete the checkpoints (the result is saved)."""
        write_log(trainer, self.stage.path("train_log.jsonl"))
        remove_tree(self.stage.path("checkpoints"))


@dataclass
class TextStart:
    """What :meth:`TrainingStage.begin_on_text` hands a text-trained stage once it has started."""

    resuming: bool
    base_dir: Path
    tokenizer: Any
    texts: list[str]


def open_training_stage(recipe: Recipe, spec: StageSpec, label: str) -> TrainingStage:
    """Open the stage's folder, refuse settings this machine cannot honour, and find the split files.

    Raises:
        ConfigError: CUDA-only settings on a machine without CUDA, a missing optional package.
        StageError: a split in ``spec.splits`` (or the validation split) that no stage wrote.
    """
    run_path = recipe.run_path()
    stage = StageDir.open(run_path, label)
    check_training_setup(spec, label, f"recipe {recipe.name!r}")
    train_paths = [split_path(run_path, split, needed_by=label) for split in spec.splits]
    eval_path = eval_split_path(run_path, spec, needed_by=label)
    config = {"model": recipe.model.model_dump(mode="json"), label: spec.model_dump(mode="json"), "seed": recipe.seed}
    if recipe.budget is not None:  # a budget can shorten the schedule: another budget is another result
        config["budget"] = recipe.budget
    return TrainingStage(label, stage, run_path, train_paths, eval_path, config)


def read_texts(paths: list[Path]) -> list[str]:
    """The text of every ``text`` record in ``paths``, in order."""
    return [r["text"] for path in paths for r in read_records(path) if r["kind"] == "text"]


def tokens_per_s(tokens: int, epochs: float, seconds: float) -> float:
    """Training throughput: ``tokens`` per pass times the passes run, over the wall time."""
    return round(tokens * epochs / max(seconds, 1e-9), 1)


def _optional_path(value: str | None) -> Path | None:
    """A manifest's output path, or None where the stage wrote none."""
    return Path(value) if value else None


def training_summary(stage: str, result: TrainResult, seconds: float) -> str:
    """The line the pipeline prints after a training stage."""
    m = result.metrics
    speed = f", {m['tokens_per_s']:.0f} tokens/s" if "tokens_per_s" in m else ""
    best = f", best validation loss {m['best_eval_loss']}" if "best_eval_loss" in m else ""
    scores = f"; {m['scores']}" if "scores" in m else ""
    loss = m["final_loss"] if m.get("final_loss") is not None else m.get("train_loss")  # no logged step: the mean
    return (
        f"[green]✔ {stage}[/green]{' ' * max(1, 6 - len(stage))}{m['steps']} steps, loss {loss}{best}"
        f"{speed}, {m['precision']} ({seconds:.0f}s){scores}"
    )
