"""The ``dpo`` stage: preference tuning of the model the run trained so far (DPO, IPO, ORPO, SimPO or KTO).

setup (start point; pairs read from the splits and/or built from the model's own answers, ``pairs.py``)
-> reference log-probabilities (one pass without gradients) -> train (HF Trainer, ``trainer.py``) -> save.

* **Start.** The run's last finished training stage before dpo (:func:`lmforge.rundir.final_model`), or
  the base model. An adapter is merged into its base once (``dpo/base``); with ``method: lora`` a fresh
  adapter trains on top, so the starting model is exactly the adapter switched off.
* **Reference.** Every completion's log-probability under the starting model is computed once, before
  the first step (LoRA: adapter off; full: the weights before training), and kept in
  ``dpo/prepared/reference.json``: neither a second copy of the weights nor a second forward pass per
  step. ``orpo`` and ``simpo`` need none.
* **Batches.** A micro-batch of n pairs is 2n right-padded rows, ``[chosen..., rejected...]``; for
  ``kto``, n completions then n mismatched ones (each prompt with the next example's completion) whose
  policy/reference log-ratio is the KL baseline. Log-probabilities come from the backbone's hidden
  states through the chunked head (``preference.py``: no full-vocabulary logits). The loss is a mean per
  pair over the whole optimizer step (``labels`` holds one entry per pair, which the Trainer counts).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from lmforge.config import DPOSpec, Recipe
from lmforge.distributed import all_reduce_sum, share
from lmforge.engine.causal import build_causal_model
from lmforge.engine.compute import attention_row, seed_everything, use_bf16
from lmforge.engine.fast import disable_lean_lora, enable_lean_lora
from lmforge.engine.lora import trainable_summary
from lmforge.engine.stage import TrainResult, tokens_per_s, training_summary
from lmforge.engine.start import StartingPoint, open_after_latest, save_tuned
from lmforge.engine.templates import install_template, template_kwargs
from lmforge.engine.tokenize import IGNORE, TokenizedExample, tokenize_chat
from lmforge.engine.trainer import build_trainer, run_training, training_metrics
from lmforge.errors import StageError
from lmforge.log import stage_log
from lmforge.models import load_causal_lm, load_tokenizer
from lmforge.records import Message, Record, dumps_record, read_records
from lmforge.rundir import StageDir, atomic_write_json, atomic_write_text, read_json
from lmforge.train import preference


def run(recipe: Recipe) -> TrainResult:
    """Tune the run's current model on preference pairs (read from ``dpo.splits``, built with ``dpo.build``)."""
    spec = recipe.dpo
    opened = open_after_latest(recipe, spec, "dpo", "prepared")
    if opened.resuming is None:
        return opened.setup.earlier_result()
    setup, start, resuming, template = opened.setup, opened.start, opened.resuming, opened.template
    stage = setup.stage
    tokenizer = load_tokenizer(start.base_dir, trust_remote_code=trust(recipe))
    read, built_counts = _preference_records(recipe, setup.train_paths, start, tokenizer, stage, resuming)
    if start.stage is None:
        install_template(tokenizer, template, read, recipe.model.ref)
    examples, counts = preference_examples(tokenizer, read, spec, template)
    eval_records = [r for r in setup.validation_records("chat") if is_preference(r)]
    eval_examples = preference_examples(tokenizer, eval_records, spec, template)[0] if eval_records else []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    seed_everything(recipe.seed)
    rows = 2 * spec.batch_size
    _, longest = attention_row([e.length for e in [*examples, *eval_examples]], rows, False)
    model = build_causal_model(start.base_dir, spec, longest, spec.attention, recipe, rows=rows)
    stage_log("dpo").info(
        f"{spec.loss} (beta {spec.beta:g}), {spec.method}, {trainable_summary(model)}; {_shown(counts)}"
    )
    started = time.perf_counter()
    examples = _with_references(model, examples, pad_id, spec, stage.path("prepared", "reference.json"))
    eval_examples = _with_references(model, eval_examples, pad_id, spec, stage.path("prepared", "reference-val.json"))
    ref_seconds = round(time.perf_counter() - started, 1) if spec.loss not in preference.REFERENCE_FREE else 0.0
    collate = partial(collate_pairs, pad_id=pad_id)
    trainer = build_trainer(
        model=model,
        spec=spec,
        seed=recipe.seed,
        distributed_spec=recipe.distributed,
        stage=stage,
        label="dpo",
        train_dataset=PreferenceDataset(examples),
        eval_dataset=PreferenceDataset(eval_examples) if eval_examples else None,
        collator=collate,
        loss_sum=PreferenceObjective(spec),
        eval_loss_sum=PreferenceObjective(spec),
        sampling="group_by_length",
        lengths=[e.length for e in examples],
    )
    result, seconds = run_training(trainer, stage, resuming, "dpo")

    outputs = save_tuned(model, tokenizer, spec, stage, start)
    if built_counts is not None:
        outputs["splits"] = {"pairs": str(stage.path("prepared", "pairs.jsonl"))}
    metrics = training_metrics(trainer, result, seconds)
    metrics.update(counts, loss=spec.loss, beta=spec.beta, reference_seconds=ref_seconds)
    metrics.update(_last_rewards(trainer))
    if built_counts is not None:
        metrics["built"] = built_counts
    epochs_run = metrics["epochs"] or trainer.args.num_train_epochs
    metrics["tokens_per_s"] = tokens_per_s(counts["tokens"], epochs_run, seconds)
    setup.wrap_up(trainer)
    stage.finish(metrics, outputs=outputs)
    return TrainResult.from_outputs(outputs, metrics, skipped=False)


def _preference_records(
    recipe: Recipe, paths: list[Path], start: StartingPoint, tokenizer: Any, stage: StageDir, resuming: bool
) -> tuple[list[Record], dict[str, Any] | None]:
    """The pairs (and KTO completions) of ``dpo.splits``, plus those ``dpo.build`` makes; the build's counts."""
    spec = recipe.dpo
    read = [r for path in paths for r in read_records(path) if is_preference(r)]
    built_counts = None
    if spec.build is not None:
        built, built_counts = _built_pairs(recipe, start, tokenizer, stage, resuming)
        read += built
    if not read:
        files = ", ".join(map(str, paths))
        raise StageError(
            f"dpo found no preference records in the split(s) {spec.splits} ({files}): "
            "it trains on chat records with meta.rejected (data formats 'preference', 'preference_implicit') or "
            "meta.label ('kto'); add such a source, or set dpo.build to make pairs from the model's own answers"
        )
    return read, built_counts


def _with_references(model: Any, examples: list[Any], pad_id: int, spec: DPOSpec, path: Path) -> list[Any]:
    """``examples`` with the reference model's log-probabilities (a loss without a reference: unchanged)."""
    if spec.loss in preference.REFERENCE_FREE:
        return examples
    references = reference_table(model, examples, pad_id, spec, path)
    return [e.with_reference(r) for e, r in zip(examples, references, strict=True)]


def trust(recipe: Recipe) -> bool:
    return recipe.model.trust_remote_code


# ---------------------------------------------------------------- pairs


def is_preference(record: Record) -> bool:
    """A chat record dpo trains on: a pair (``meta.rejected``) or a labelled KTO completion (``meta.label``)."""
    meta = record.get("meta") or {}
    last = record.get("messages", [{}])[-1] if record.get("kind") == "chat" else {}
    return last.get("role") == "assistant" and (
        isinstance(meta.get("rejected"), str) or isinstance(meta.get("label"), bool)
    )


@dataclass
class PreferenceExample:
    """Two rows trained together: chosen and rejected (paired losses), or for KTO a completion and the
    mismatched completion of the KL baseline; with their reference log-probabilities once computed."""

    first: TokenizedExample
    second: TokenizedExample
    desirable: bool = True
    """KTO: whether ``first`` is a desirable completion."""
    reference: tuple[float, float] | None = None

    @property
    def length(self) -> int:
        return max(len(self.first.input_ids), len(self.second.input_ids))

    def with_reference(self, values: tuple[float, float]) -> PreferenceExample:
        return PreferenceExample(self.first, self.second, self.desirable, values)


def _with_answer(messages: list[Message], answer: str) -> list[Message]:
    return [*messages[:-1], Message(role="assistant", content=answer)]


def _prompt_key(messages: list[Message]) -> str:
    return json.dumps([[m["role"], m["content"]] for m in messages[:-1]])


def kl_partners(prompts: list[str]) -> list[int]:
    """For each KTO item, the item whose completion its KL baseline pairs it with: the next one asked with
    another prompt (a pair's two completions share one, and pairing them would make the baseline a matched,
    not a mismatched, estimate); the next item at all when every item has the same prompt."""
    n = len(prompts)
    partners = []
    for i, prompt in enumerate(prompts):
        shift = next((k for k in range(1, n) if prompts[(i + k) % n] != prompt), 1)
        partners.append((i + shift) % n)
    return partners


def preference_examples(
    tokenizer: Any, records: list[Record], spec: DPOSpec, template: str
) -> tuple[list[PreferenceExample], dict[str, int]]:
    """Tokenize the records for ``spec.loss`` (the loss on the last assistant turn only).

    Pairs train the paired losses; for ``kto`` a pair counts as a desirable and an undesirable completion,
    and a KTO record as one of either. Items left with no completion token after truncation to
    ``max_length`` are dropped, as are pairs whose two answers are the same; all are counted.

    Returns:
        The examples and counts: ``pairs`` (or ``completions`` for kto), ``tokens``, ``dropped_truncated``,
        ``dropped_identical``.
    """
    counts = {"tokens": 0, "dropped_truncated": 0, "dropped_identical": 0}
    items: list[tuple[Record, list[Message], list[Message] | None, bool]] = []
    for record in records:
        meta = record.get("meta") or {}
        messages = record["messages"]
        if isinstance(meta.get("rejected"), str):
            if meta["rejected"].strip() == messages[-1]["content"].strip():
                counts["dropped_identical"] += 1
                continue
            rejected = _with_answer(messages, meta["rejected"])
            if spec.loss == "kto":
                items += [(record, messages, None, True), (record, rejected, None, False)]
            else:
                items.append((record, messages, rejected, True))
        elif spec.loss == "kto":
            items.append((record, messages, None, bool(meta["label"])))
    if spec.loss == "kto":  # each prompt with another prompt's completion: the KL baseline's mismatched pair
        partners = kl_partners([_prompt_key(messages) for _, messages, _, _ in items])
        items = [
            (record, messages, _with_answer(messages, items[partners[i]][1][-1]["content"]), desirable)
            for i, (record, messages, _, desirable) in enumerate(items)
        ]
    examples = []
    for record, first, second, desirable in items:
        assert second is not None
        extra = template_kwargs(template, record)
        rows = [tokenize_chat(tokenizer, m, spec.max_length, False, extra, True) for m in (first, second)]
        if any(row.trainable == 0 for row in rows):
            counts["dropped_truncated"] += 1
            continue
        counts["tokens"] += sum(len(row.input_ids) for row in rows)
        examples.append(PreferenceExample(rows[0], rows[1], desirable))
    if not examples:
        raise StageError(
            f"dpo: none of the {len(records)} preference record(s) is left to train on ({_shown(counts)}); "
            "raise dpo.max_length or check that chosen and rejected answers differ"
        )
    counts["completions" if spec.loss == "kto" else "pairs"] = len(examples)
    return examples, counts


def _shown(counts: dict[str, int]) -> str:
    kept = f"{counts['pairs']} pairs" if "pairs" in counts else f"{counts.get('completions', 0)} completions"
    dropped = [f"{counts[k]} {k[8:]}" for k in ("dropped_truncated", "dropped_identical") if counts[k]]
    return kept + (f" (dropped: {', '.join(dropped)})" if dropped else "")


def _built_pairs(
    recipe: Recipe, start: StartingPoint, tokenizer: Any, stage: StageDir, resuming: bool
) -> tuple[list[Record], dict[str, int]]:
    """Pairs from the starting model's answers (``dpo.build``), written to ``dpo/prepared/pairs.jsonl`` (split
    ``pairs``); an interrupted attempt's file is reused."""
    from lmforge.rundir import split_path
    from lmforge.train.pairs import build_pairs, retrieved_contexts

    spec = recipe.dpo.build
    assert spec is not None
    path, counts_path = stage.path("prepared", "pairs.jsonl"), stage.path("prepared", "pairs-counts.json")
    if resuming and path.is_file() and counts_path.is_file():
        counts = read_json(counts_path)
        return list(read_records(path)), counts
    records = [r for split in spec.splits for r in read_records(split_path(recipe.run_path(), split, "dpo.build"))]
    records = [r for r in records if r["kind"] == "chat" and not is_preference(r)]
    import torch

    # Sampled in the training precision: bf16 where the CPU has native bf16 matmuls (about 3x fp32's speed).
    dtype = torch.bfloat16 if use_bf16(recipe.dpo.precision) else torch.float32
    model = load_causal_lm(start.base_dir, dtype=dtype, trust_remote_code=trust(recipe))
    model.eval()
    contexts = retrieved_contexts(recipe, records, "dpo.build.rag") if spec.rag else None
    started = time.perf_counter()
    judge = None
    if spec.judge is not None:
        from lmforge.synth.asking import judge_answers

        judge_spec, templates = spec.judge, {"judge": spec.judge.template} if spec.judge.template else {}
        cache = stage.path("prepared", "judge.sqlite")

        def judge(cases: list[tuple[str, str, str]]) -> list[tuple[int | None, str]]:
            return judge_answers(judge_spec.teacher, recipe.model.ref, cache, cases, templates)

    built = build_pairs(model, tokenizer, records, spec, recipe.seed, contexts, recipe.index.gold_key, judge)
    del model
    counts = {**built.counts, "seconds": round(time.perf_counter() - started, 1)}
    stage_log("dpo").info(
        f"asked {counts['asked']} training questions ({spec.samples} samples each): {counts['pairs']} pairs, "
        f"{counts['always_right']} always answered right, {counts['no_short_answer']} without a short answer to check"
    )
    if spec.judge is not None:
        stage_log("dpo").info(
            f"the judge graded {counts['judged']} answers ({counts['judge_unusable']} without a usable grade); "
            f"{counts['graded_wrong']} containing the gold answer were graded below {spec.judge.min_score}"
        )
    atomic_write_text(path, "".join(dumps_record(r) + "\n" for r in built.records))
    atomic_write_json(counts_path, counts)
    return built.records, counts


# ---------------------------------------------------------------- reference, batches, loss


def reference_table(
    model: Any, examples: list[PreferenceExample], pad_id: int, spec: DPOSpec, path: Path
) -> list[tuple[float, float]]:
    """Each example's two summed completion log-probabilities under the starting model (LoRA: adapter off),
    in the training precision; computed once, shared out over the processes, kept in ``path``."""
    import torch

    if not examples:
        return []
    if path.is_file():
        saved = read_json(path)
        if len(saved) == len(examples):
            return [tuple(pair) for pair in saved]  # type: ignore[misc]
    bf16 = use_bf16(spec.precision)
    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    batches = share([order[i : i + spec.batch_size] for i in range(0, len(order), spec.batch_size)])
    values = [0.0] * (2 * len(examples))
    dataset, device = PreferenceDataset(examples), next(model.parameters()).device
    disable_lean_lora(model)  # PEFT's own forward honours disable_adapter
    model.eval()
    try:
        for batch in batches:
            collated = collate_pairs([dataset[i] for i in batch], pad_id)
            collated = {k: v.to(device) for k, v in collated.items()}
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                logps = preference.reference_logps(model, collated).tolist()
            for position, index in enumerate(batch):
                values[2 * index], values[2 * index + 1] = logps[position], logps[len(batch) + position]
    finally:
        model.train()
        if spec.method == "lora" and spec.quantization == "none":
            enable_lean_lora(model)
    values = all_reduce_sum(values)
    table = [(values[2 * i], values[2 * i + 1]) for i in range(len(examples))]
    atomic_write_json(path, table)
    return table


class PreferenceDataset:
    """Preference examples as the dicts the Trainer's sampler and :func:`collate_pairs` expect."""

    def __init__(self, examples: list[PreferenceExample]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        return {
            "input_ids": example.first.input_ids,
            "rows": (example.first, example.second),
            "desirable": example.desirable,
            "reference": example.reference,
        }


def collate_pairs(items: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """n examples -> 2n right-padded rows ``[first..., second...]`` with ``completion_mask``; ``labels`` holds
    one entry per example (IGNORE for a filler), ``ref_logps`` the reference values in row order."""
    import torch

    rows = [item["rows"][0] for item in items] + [item["rows"][1] for item in items]
    width = max(len(row.input_ids) for row in rows)
    batch: dict[str, Any] = {
        "input_ids": torch.tensor([r.input_ids + [pad_id] * (width - len(r.input_ids)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r.input_ids) + [0] * (width - len(r.input_ids)) for r in rows]),
        "completion_mask": torch.tensor(
            [[int(label != IGNORE) for label in r.labels] + [0] * (width - len(r.labels)) for r in rows]
        ),
        "labels": torch.zeros((len(items), 1), dtype=torch.long),
        "desirable": torch.tensor([bool(item["desirable"]) for item in items]),
    }
    if all(item["reference"] is not None for item in items):
        refs = [item["reference"][0] for item in items] + [item["reference"][1] for item in items]
        batch["ref_logps"] = torch.tensor(refs, dtype=torch.float32)
    return batch


def _half(batch: dict[str, Any], which: int) -> dict[str, Any]:
    n = batch["labels"].shape[0]
    part = slice(0, n) if which == 0 else slice(n, 2 * n)
    return {key: batch[key][part] for key in ("input_ids", "attention_mask", "completion_mask")}


class PreferenceObjective:
    """``(model, batch) -> (summed loss of the batch's real examples, their number)`` for ``spec.loss``; its
    :meth:`drain` hands the trainer the reward statistics since the last log line."""

    def __init__(self, spec: DPOSpec):
        self.spec = spec
        self.sums: dict[str, float] = {}
        self.seen = 0

    def __call__(self, model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
        import torch

        spec = self.spec
        real = batch["labels"][:, 0] != IGNORE
        ref = batch.get("ref_logps")
        if spec.loss == "kto":
            logps = preference.sequence_logps(model, _half(batch, 0))[0]
            with torch.no_grad():
                kl_logps = preference.sequence_logps(model, _half(batch, 1))[0]
            n = real.shape[0]
            mask = real if bool(real.any()) else torch.ones_like(real)  # a filler batch: any finite baseline
            losses, stats = preference.kto_loss(
                logps, ref[:n], batch["desirable"], kl_logps[mask], ref[n:][mask], spec.beta,
                spec.desirable_weight, spec.undesirable_weight,
            )  # fmt: skip
            kept = {"reward": stats["reward"], "kl": stats["kl"].expand_as(stats["reward"])}
        else:
            logps, counts = preference.sequence_logps(model, batch)
            losses, stats = preference.preference_loss(spec.loss, logps, counts, ref, spec.beta, spec.simpo_gamma)
            kept = {"reward_margin": stats["margin"], "reward_accuracy": stats["accuracy"]}
        weights = real.to(losses.dtype)
        for name, values in kept.items():
            self.sums[name] = self.sums.get(name, 0.0) + float((values.float() * weights).sum())
        self.seen += int(real.sum())
        return (losses * weights).sum(), int(real.sum())

    def drain(self) -> dict[str, float]:
        """Means of the statistics since the last call over every process (then reset). The trainer logs on
        every process at the same steps, so the sums are all-reduced here, not taken from rank 0's share."""
        names = ["reward", "kl"] if self.spec.loss == "kto" else ["reward_margin", "reward_accuracy"]
        totals = all_reduce_sum([self.sums.get(name, 0.0) for name in names] + [float(self.seen)])
        seen = totals[-1]
        self.sums, self.seen = {}, 0
        return {name: round(total / seen, 4) for name, total in zip(names, totals, strict=False)} if seen else {}


# ---------------------------------------------------------------- outputs


def _last_rewards(trainer: Any) -> dict[str, float]:
    """The last logged reward statistics (and the validation ones, when there was validation)."""
    found: dict[str, float] = {}
    for entry in trainer.state.log_history:
        for key in ("reward_margin", "reward_accuracy", "eval_reward_margin", "eval_reward_accuracy", "kl"):
            if key in entry:
                found[key] = entry[key]
    return found


def summary(result: TrainResult, seconds: float) -> str:
    """The line the pipeline prints after the stage."""
    line = training_summary("dpo", result, seconds)
    accuracy = result.metrics.get("reward_accuracy")
    return line + (f"; reward accuracy {accuracy:.2f}" if accuracy is not None else "")
