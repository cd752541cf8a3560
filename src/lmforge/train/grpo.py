"""The ``grpo`` stage: reinforcement learning with verifiable rewards (GRPO, Shao et al. 2024) on the domain's
own questions, after sft.

setup (start point as dpo's; questions with a short gold answer, optionally with retrieved passages) ->
train (HF Trainer, ``trainer.py``; each micro-batch samples and scores its own answers) -> save.

* **Questions.** Chat records of ``grpo.splits`` with a short gold answer (:func:`lmforge.records.short_answer`), the
  same selection as ``dpo.build`` (:func:`lmforge.train.pairs.checkable`). With ``rag`` each is asked
  with the passages the run's index retrieves, and a question whose source document is not among them is
  left out (counted).
* **Sampling.** Per micro-batch, the policy as it is now answers every question ``samples`` times
  (left-padded prompts, the KV cache, the stage's temperature). An answer ends at the first end-of-turn
  token; its tokens after that are masked.
* **Reward** (:func:`reward`): eval's rule, no learned model — ``reward.answer`` for containing the gold
  answer, ``reward.citation`` for citing a passage of the source document (with passages), minus
  ``reward.invented_citation`` for citing a number the prompt did not show, minus ``reward.length_penalty``
  per token. The advantage of an answer is its reward minus its group's mean, over the group's standard
  deviation (TRL's default ``scale_rewards="group"``).
* **Loss** (:func:`sequence_losses`): the clipped surrogate of PPO with the ratio to the policy that
  sampled (one update per sample, so the ratio is 1 and only its gradient counts) plus ``beta`` times
  the k3 estimate of KL to the starting model (LoRA: the adapter switched off; full: a frozen copy) times
  the ratio (the unbiased reverse-KL gradient of DeepSeek-V3.2, TRL's default),
  averaged over each answer's tokens, then over answers — TRL's ``loss_type="grpo"``, checked against
  TRL's own ``_compute_loss`` on the same batch in ``tests/unit/test_grpo.py``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any

from lmforge.config import GRPOSpec, Recipe, RewardSpec
from lmforge.distributed import all_reduce_sum
from lmforge.engine.causal import build_causal_model
from lmforge.engine.compute import seed_everything
from lmforge.engine.lora import trainable_summary
from lmforge.engine.stage import TrainResult, training_summary
from lmforge.engine.start import open_after_latest, save_tuned
from lmforge.engine.templates import install_template, template_kwargs
from lmforge.engine.tokenize import IGNORE
from lmforge.engine.trainer import build_trainer, run_training, training_metrics
from lmforge.errors import StageError
from lmforge.evaluate.metrics import contains_answer
from lmforge.log import stage_log
from lmforge.models import eos_ids, load_tokenizer
from lmforge.records import CITATION, Record, invented_citation, read_records
from lmforge.train.pairs import checkable, retrieved_contexts


def run(recipe: Recipe) -> TrainResult:
    """Tune the run's current model on its own sampled answers to the training questions, rewarded by eval's rule."""
    spec = recipe.grpo
    opened = open_after_latest(recipe, spec, "grpo")
    if opened.resuming is None:
        return opened.setup.earlier_result()
    setup, start, resuming, template = opened.setup, opened.start, opened.resuming, opened.template
    stage, trust = setup.stage, recipe.model.trust_remote_code
    tokenizer = load_tokenizer(start.base_dir, trust_remote_code=trust)
    records = [r for path in setup.train_paths for r in read_records(path) if r["kind"] == "chat"]
    if start.stage is None:
        install_template(tokenizer, template, records, recipe.model.ref)
    contexts = retrieved_contexts(recipe, records, "grpo.rag") if spec.rag else None
    questions, counts = grpo_questions(tokenizer, records, spec, template, contexts, recipe.index.gold_key)

    seed_everything(recipe.seed)
    longest = max(len(q.prompt_ids) for q in questions) + spec.max_new_tokens
    model = build_causal_model(
        start.base_dir, spec, longest, spec.attention, recipe, rows=spec.batch_size * spec.samples
    )
    reference = _frozen_copy(model) if spec.method == "full" and spec.beta > 0 else None
    stage_log("grpo").info(
        f"{counts['asked']} questions x {spec.samples} answers, beta {spec.beta:g}, {spec.method}, "
        f"{trainable_summary(model)}"
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    objective = GroupObjective(spec, questions, tokenizer, pad_id, eos_ids(model, tokenizer), reference)
    trainer = build_trainer(
        model=model,
        spec=spec,
        seed=recipe.seed,
        distributed_spec=recipe.distributed,
        stage=stage,
        label="grpo",
        train_dataset=QuestionDataset(questions),
        eval_dataset=None,
        collator=partial(collate_questions, pad_id=pad_id),
        loss_sum=objective,
    )
    result, seconds = run_training(trainer, stage, resuming, "grpo")
    outputs = save_tuned(model, tokenizer, spec, stage, start)
    metrics = training_metrics(trainer, result, seconds)
    metrics.update(counts, samples=spec.samples, beta=spec.beta, **objective.totals())
    setup.wrap_up(trainer)
    stage.finish(metrics, outputs=outputs)
    return TrainResult.from_outputs(outputs, metrics, skipped=False)


def _frozen_copy(model: Any) -> Any:
    """The starting weights of a fully trained model, kept for the KL term (no gradient, eval mode)."""
    import copy

    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


# ---------------------------------------------------------------- questions


@dataclass(frozen=True)
class Question:
    """A training question as the policy is asked it, and what its answers are checked against."""

    prompt_ids: list[int]
    answer: str
    aliases: tuple[str, ...] = ()
    cites: tuple[int, ...] | None = None
    """With passages: the numbers of the passages from the question's source document."""
    shown: int = 0
    """Passages in the prompt (0: closed-book, where any citation is invented)."""


def grpo_questions(
    tokenizer: Any,
    records: list[Record],
    spec: GRPOSpec,
    template: str,
    contexts: dict[str, list[dict[str, Any]]] | None = None,
    gold_key: str = "article",
) -> tuple[list[Question], dict[str, int]]:
    """The checkable questions of ``records``, tokenized with the generation prompt (the prompt's end kept when
    longer than ``spec.max_length``), and counts: ``questions``, ``no_short_answer``, ``gold_not_retrieved``,
    ``asked``.

    Raises:
        StageError: no record has a short gold answer to reward against.
    """
    counts: Counter[str] = Counter(questions=len(records))
    gold_numbers: dict[str, list[int]] = {}
    asked = checkable(records, contexts, gold_key, counts, {}, gold_numbers)
    asked = asked[: spec.limit] if spec.limit else asked
    questions = []
    for record, prompt, answer, aliases, _ in asked:
        text = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=False, **template_kwargs(template, record)
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][-spec.max_length :]
        cites = gold_numbers.get(record["id"])
        shown = len(contexts.get(record["id"], [])) if contexts is not None else 0
        questions.append(Question(ids, answer, tuple(aliases), tuple(cites) if cites else None, shown))
    if not questions:
        raise StageError(
            f"grpo found no question to reward in the split(s) {spec.splits} ({len(records)} chat records): it "
            "needs records with a short gold answer (meta.answer, or an answer of at most 10 words)"
            + ("; with grpo.rag, also their source document among the retrieved passages" if spec.rag else "")
        )
    counts["asked"] = len(questions)
    keys = ("questions", "no_short_answer", "gold_not_retrieved", "asked")
    return questions, {key: counts[key] for key in keys}


class QuestionDataset:
    """Questions as the dicts the Trainer's sampler (``input_ids``: the prompt) and :func:`collate_questions` read."""

    def __init__(self, questions: list[Question]):
        self.questions = questions

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.questions[index].prompt_ids, "item": index}


def collate_questions(items: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Left-padded prompts, the questions' indices and one ``labels`` entry per question (what the Trainer counts)."""
    import torch

    width = max(len(item["input_ids"]) for item in items)
    return {
        "input_ids": torch.tensor([[pad_id] * (width - len(i["input_ids"])) + i["input_ids"] for i in items]),
        "attention_mask": torch.tensor(
            [[0] * (width - len(i["input_ids"])) + [1] * len(i["input_ids"]) for i in items]
        ),
        "item": torch.tensor([item["item"] for item in items]),
        "labels": torch.zeros((len(items), 1), dtype=torch.long),
    }


# ---------------------------------------------------------------- reward


def reward(reply: str, question: Question, spec: RewardSpec, tokens: int) -> tuple[float, bool]:
    """The reward of one answer and whether it contains the gold answer (see the module's docstring)."""
    right = contains_answer(reply, question.answer, list(question.aliases))
    value = spec.answer * right - spec.length_penalty * tokens
    if invented_citation(reply, question.shown):
        value -= spec.invented_citation
    if question.cites:
        cited = {int(match.group(1)) for match in CITATION.finditer(reply)}
        value += spec.citation * bool(cited & set(question.cites))
    return value, right


def group_advantages(rewards: Any, samples: int) -> Any:
    """Each reward minus its group's mean, over the group's (sample) standard deviation plus 1e-4."""
    grouped = rewards.view(-1, samples)
    mean, std = grouped.mean(dim=1, keepdim=True), grouped.std(dim=1, keepdim=True)
    return ((grouped - mean) / (std + 1e-4)).view(-1)


# ---------------------------------------------------------------- loss


def sequence_losses(
    logps: Any, old_logps: Any, ref_logps: Any | None, advantages: Any, mask: Any, beta: float, epsilon: float
) -> Any:
    """Each answer's GRPO loss: the clipped surrogate ``-min(r A, clip(r, 1-eps, 1+eps) A)`` with ``r`` the
    token's probability ratio to the sampling policy, plus ``beta`` times the k3 KL estimate to the reference
    ``exp(ref - logp) - (ref - logp) - 1`` weighted by the same ratio, averaged over the answer's tokens (``mask``)."""
    import torch

    ratio = torch.exp(logps - old_logps)
    surrogate = advantages[:, None]
    per_token = -torch.min(ratio * surrogate, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * surrogate)
    if beta and ref_logps is not None:
        # times the ratio: 1 in value, but its gradient makes the KL gradient the unbiased reverse-KL one
        # (DeepSeek-V3.2; TRL's default use_bias_correction_kl)
        per_token = per_token + beta * (torch.exp(ref_logps - logps) - (ref_logps - logps) - 1) * ratio
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def completion_logps(model: Any, sequences: Any, attention: Any, prompt_width: int, temperature: float) -> Any:
    """Per-token log-probabilities of the completion part of ``sequences`` (after ``prompt_width``) under
    ``model``, the logits divided by the sampling ``temperature``; positions count real tokens only (left padding)."""
    import torch

    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    width = sequences.shape[1] - prompt_width
    out = model(input_ids=sequences, attention_mask=attention, position_ids=positions, logits_to_keep=width + 1)
    logits = out.logits[:, :-1].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(2, sequences[:, prompt_width:, None]).squeeze(2)


def answer_mask(completions: Any, stop_ids: list[int]) -> Any:
    """1 for each answer's tokens up to and including its first stop token, 0 after it."""
    import torch

    stops = torch.isin(completions, torch.tensor(stop_ids, device=completions.device))
    after = (stops.cumsum(dim=1) - stops.long()) > 0  # a token is past the end when a stop came before it
    return (~after).long()


class GroupObjective:
    """``(model, batch) -> (summed loss, questions)``: sample, score and train on one micro-batch of questions;
    :meth:`drain` hands the trainer the reward statistics since the last log line."""

    def __init__(
        self,
        spec: GRPOSpec,
        questions: list[Question],
        tokenizer: Any,
        pad_id: int,
        stop_ids: list[int],
        reference: Any | None = None,
    ):
        self.spec, self.questions, self.tokenizer, self.pad_id = spec, questions, tokenizer, pad_id
        self.stop_ids, self.reference = stop_ids, reference
        self.sums: Counter[str] = Counter()
        self.all: Counter[str] = Counter()

    def __call__(self, model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
        import torch

        spec, samples = self.spec, self.spec.samples
        real = (batch["labels"][:, 0] != IGNORE).repeat_interleave(samples)
        questions = [self.questions[i] for i in batch["item"].tolist() for _ in range(samples)]
        sequences, prompt_mask, width = self.sample(model, batch)
        completions = sequences[:, width:]
        mask = answer_mask(completions, self.stop_ids)
        texts = self.tokenizer.batch_decode(completions * mask + self.pad_id * (1 - mask), skip_special_tokens=True)
        scored = [reward(t, q, spec.reward, int(n)) for t, q, n in zip(texts, questions, mask.sum(1), strict=True)]
        rewards = torch.tensor([value for value, _ in scored], dtype=torch.float32, device=sequences.device)
        advantages = group_advantages(rewards, samples)
        attention = torch.cat([prompt_mask, mask], dim=1)
        logps = completion_logps(model, sequences, attention, width, spec.temperature)
        ref = self.reference_logps(model, sequences, attention, width) if spec.beta > 0 else None
        losses = sequence_losses(logps, logps.detach(), ref, advantages, mask, spec.beta, spec.epsilon)
        weights = real.to(losses.dtype)
        self._keep(rewards, [right for _, right in scored], mask, logps, ref, weights)
        return (losses * weights).sum() / samples, int(real.sum()) // samples

    def sample(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any, int]:
        """``samples`` answers per prompt from the policy as it is: (prompt + answer ids, the prompts' attention
        mask repeated per answer, prompt width)."""
        import torch

        spec = self.spec
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                sequences = model.generate(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    do_sample=True,
                    temperature=spec.temperature,
                    top_p=spec.top_p,
                    top_k=0,
                    max_new_tokens=spec.max_new_tokens,
                    num_return_sequences=spec.samples,
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.pad_id,
                    use_cache=True,
                )
        finally:
            model.train(was_training)
        return sequences, batch["attention_mask"].repeat_interleave(spec.samples, dim=0), batch["input_ids"].shape[1]

    def reference_logps(self, model: Any, sequences: Any, attention: Any, width: int) -> Any:
        """The completion's log-probabilities under the starting model: a frozen copy, or the adapter off."""
        import torch

        from lmforge.train.preference import adapter_off

        with torch.no_grad():
            if self.reference is not None:
                return completion_logps(self.reference, sequences, attention, width, self.spec.temperature)
            with adapter_off(model):
                return completion_logps(model, sequences, attention, width, self.spec.temperature)

    def _keep(self, rewards: Any, right: list[bool], mask: Any, logps: Any, ref: Any, weights: Any) -> None:
        import torch

        tokens = mask.sum(dim=1).float()
        kept = {
            "reward": float((rewards * weights).sum()),
            "accuracy": float((torch.tensor(right, dtype=torch.float32) * weights.cpu()).sum()),
            "answer_tokens": float((tokens * weights).sum()),
            "answers": float(weights.sum()),
        }
        if ref is not None:
            kl = ((torch.exp(ref - logps) - (ref - logps) - 1) * mask).sum(1) / tokens.clamp(min=1.0)
            kept["kl"] = float((kl.detach() * weights).sum())
        for counter in (self.sums, self.all):
            counter.update(kept)

    def drain(self) -> dict[str, float]:
        """Means per answer since the last call, over every process (then reset)."""
        means = _means(self.sums)
        self.sums = Counter()
        return means

    def totals(self) -> dict[str, float]:
        """Means per answer over the whole stage for the manifest: ``mean_reward``, ``mean_accuracy``, ...."""
        return {f"mean_{name}": value for name, value in _means(self.all).items()}


def _means(sums: Counter[str]) -> dict[str, float]:
    names = ["reward", "accuracy", "answer_tokens", "kl"]
    totals = all_reduce_sum([float(sums.get(name, 0.0)) for name in names] + [float(sums.get("answers", 0.0))])
    seen = totals[-1]
    if not seen:
        return {}
    found = {name: round(total / seen, 4) for name, total in zip(names, totals, strict=False)}
    return found if "kl" in sums else {k: v for k, v in found.items() if k != "kl"}


def summary(result: TrainResult, seconds: float) -> str:
    """The line the pipeline prints after the stage."""
    line = training_summary("grpo", result, seconds)
    accuracy = result.metrics.get("mean_accuracy")
    return line + (f"; answers right while training {accuracy:.0%}" if accuracy is not None else "")


__all__ = [
    "GroupObjective",
    "Question",
    "answer_mask",
    "completion_logps",
    "group_advantages",
    "grpo_questions",
    "reward",
    "run",
    "sequence_losses",
]
