"""Logit-level distillation for sft: the student matches the teacher's next-token distribution.

Before training, the teacher reads every training example once and its top-k log-probabilities at
each trained position are written to ``sft/teacher/topk.safetensors``; the teacher is then freed,
so only the student is in memory while it trains, and a re-run (or a resumed run) reuses the file.
The loss per trained token is ``(1 - alpha) * CE + alpha * T^2 * KL(p_teacher || p_student)``, the
KL taken over the teacher's top-k tokens (its distribution renormalised over them; the student's
log-probabilities are over the whole vocabulary). Teacher and student must share a tokenizer, so
the same token ids mean the same thing to both.

Sequence-level distillation needs nothing here: the ``synth`` stage has a teacher answer prompts
and sft trains on that split (``sft.splits: [synth]``).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.config import DistillSpec
from lmforge.engine.fast import backbone_inputs, supports_hidden_state_loss, trained_positions
from lmforge.engine.tokenize import IGNORE, TokenizedExample
from lmforge.errors import StageError
from lmforge.log import stage_log
from lmforge.models import load_causal_lm, load_for_inference, load_tokenizer, resolve_model
from lmforge.rundir import StageDir, atomic_write_json, final_model, fingerprint_data, is_run_dir, read_json


@dataclass
class TeacherTopK:
    """Top-k teacher log-probabilities for every trained position of every example, concatenated.

    ``ids`` and ``logprobs`` are (positions, k); example ``i`` owns rows ``offsets[i]:offsets[i + 1]``.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    offsets: torch.Tensor

    def rows(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.ids[start:end], self.logprobs[start:end]


def teacher_topk(
    spec: DistillSpec, student_tokenizer: Any, examples: list[TokenizedExample], stage: StageDir, trust: bool
) -> TeacherTopK:
    """Compute (or reuse from disk) the teacher's top-k log-probabilities for ``examples``."""
    from safetensors.torch import load_file, save_file

    folder = stage.path("teacher")
    key = fingerprint_data([spec.teacher, spec.top_k, [(e.input_ids, e.labels) for e in examples]])
    meta_path = folder / "meta.json"
    if meta_path.is_file() and read_json(meta_path).get("key") == key:
        stage_log("sft").info(f"reusing the teacher's top-{spec.top_k} log-probabilities from {folder}")
        return TeacherTopK(**load_file(folder / "topk.safetensors"))
    model, tokenizer, described = load_teacher(spec.teacher, trust)
    check_same_tokenizer(tokenizer, student_tokenizer, spec.teacher)
    stage_log("sft").info(
        f"teacher {described}: top-{spec.top_k} log-probabilities of {len(examples)} examples -> {folder}"
    )
    topk = _run_teacher(model, examples, spec.top_k, spec.batch_size)
    del model
    gc.collect()
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"ids": topk.ids, "logprobs": topk.logprobs, "offsets": topk.offsets}, str(folder / "topk.safetensors"))
    atomic_write_json(meta_path, {"key": key, "teacher": described, "top_k": spec.top_k})
    return topk


def load_teacher(ref: str, trust: bool) -> tuple[Any, Any, str]:
    """The teacher in eval mode: a run directory's tuned model, or any model reference."""
    run = Path(ref).expanduser()
    if is_run_dir(run):
        tuned = final_model(run, kinds=("causal",))
        if tuned is None:
            raise StageError(f"sft.distill.teacher {ref!r} is a run directory without a finished cpt or sft stage")
        model, tokenizer = load_for_inference(tuned.model_dir, tuned.adapter_dir, trust_remote_code=trust)
        return model, tokenizer, f"{ref} (its tuned model)"
    path = resolve_model(ref)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = load_causal_lm(path, dtype=dtype, trust_remote_code=trust).eval()
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, load_tokenizer(path, trust_remote_code=trust), ref


def check_same_tokenizer(teacher: Any, student: Any, ref: str) -> None:
    """Logit distillation compares distributions token by token: the vocabularies must be identical."""
    teacher_vocab, student_vocab = teacher.get_vocab(), student.get_vocab()
    if teacher_vocab != student_vocab:
        differing = len(set(teacher_vocab.items()) ^ set(student_vocab.items()))
        raise StageError(
            f"sft.distill.teacher {ref!r} has a different tokenizer than the student ({len(teacher_vocab)} vs "
            f"{len(student_vocab)} tokens, {differing} entries differ); logit distillation needs a shared "
            "tokenizer. Distill at sequence level instead: a synth stage with the teacher, then sft.splits: [synth]"
        )


def _run_teacher(model: Any, examples: list[TokenizedExample], top_k: int, batch_size: int) -> TeacherTopK:
    """Teacher forward passes over right-padded, length-sorted batches; top-k at trained positions."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    found: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for start in range(0, len(order), batch_size):
        batch = [examples[i] for i in order[start : start + batch_size]]
        longest = max(len(e.input_ids) for e in batch)
        input_ids = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, example in enumerate(batch):
            input_ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        with torch.inference_mode():
            # Right padding needs no mask: causal attention never looks at the padding that follows.
            logits = model(input_ids=input_ids.to(model.device), use_cache=False).logits.float()
        for row, (index, example) in enumerate(zip(order[start : start + batch_size], batch, strict=True)):
            positions = torch.tensor([t - 1 for t in range(1, len(example.labels)) if example.labels[t] != IGNORE])
            logprobs = torch.log_softmax(logits[row, positions.to(logits.device)], dim=-1)
            values, ids = logprobs.topk(top_k, dim=-1)
            found[index] = (ids.to(torch.int32).cpu(), values.cpu())
    ids = [found[i][0] for i in range(len(examples))]
    values = [found[i][1] for i in range(len(examples))]
    counts = torch.tensor([0] + [len(x) for x in ids]).cumsum(0)
    return TeacherTopK(ids=torch.cat(ids), logprobs=torch.cat(values), offsets=counts)


class DistillDataset:
    """Tokenized examples with their teacher top-k rows."""

    def __init__(self, examples: list[TokenizedExample], topk: TeacherTopK):
        self.examples = examples
        self.topk = topk

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        ids, logprobs = self.topk.rows(index)
        return {"input_ids": example.input_ids, "labels": example.labels, "teacher_ids": ids, "teacher_lp": logprobs}


def with_teacher(collate: Any) -> Any:
    """Wrap a collator of input_ids/labels so the teacher rows come along, concatenated in batch order."""

    def collate_with_teacher(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collate([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        batch["teacher_ids"] = torch.cat([f["teacher_ids"] for f in features]).long()
        batch["teacher_lp"] = torch.cat([f["teacher_lp"] for f in features])
        return batch

    return collate_with_teacher


def distill_loss_sum(model: Any, inputs: dict[str, torch.Tensor], alpha: float, temperature: float):
    """Summed ``(1 - alpha) * CE + alpha * T^2 * KL`` over the trained positions, and their number.

    The trained positions are taken in row-major order, the order the teacher rows were concatenated in.
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    keep, targets = trained_positions(inputs["labels"])
    forward_args = backbone_inputs(inputs)
    if supports_hidden_state_loss(causal_lm):
        hidden = getattr(causal_lm, causal_lm.base_model_prefix)(**forward_args).last_hidden_state[keep]
        logits = causal_lm.get_output_embeddings()(hidden).float()  # (trained positions, vocab)
    else:
        logits = model(**forward_args).logits[keep].float()
    teacher_ids, teacher_lp = inputs["teacher_ids"], inputs["teacher_lp"].float()
    if teacher_ids.shape[0] != logits.shape[0]:
        raise StageError(f"teacher rows ({teacher_ids.shape[0]}) do not match trained positions ({logits.shape[0]})")
    ce = F.cross_entropy(logits, targets, reduction="sum")
    student_lp = torch.log_softmax(logits / temperature, dim=-1).gather(1, teacher_ids)
    teacher_p_log = torch.log_softmax(teacher_lp / temperature, dim=-1)  # renormalised over the top-k
    kl = (teacher_p_log.exp() * (teacher_p_log - student_lp)).sum()
    loss = (1.0 - alpha) * ce + alpha * temperature**2 * kl
    return loss, int(targets.numel())
