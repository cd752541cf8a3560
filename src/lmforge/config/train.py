"""Recipe models of the training stages: shared :class:`TrainSpec`, LoRA, distillation, and the
``sft``, ``cpt``, ``mlm``, ``seq2seq`` and ``dpo`` stage specs."""

# Mutable field defaults are safe here: pydantic copies them per instance; ruff only sees that
# when the BaseModel subclass is defined in the same file, and Strict lives in base.py.
# ruff: noqa: RUF012

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from lmforge.config.base import Strict, resolve_path
from lmforge.config.synth import TeacherSpec


class LoraSpec(Strict):
    """LoRA adapter settings."""

    r: int = Field(16, ge=1)
    """Rank of the update matrices."""
    alpha: int = Field(32, ge=1)
    """Scaling numerator; the update is scaled by alpha / r."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter input."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt, or ``all-linear`` for every linear layer but the output head."""
    use_dora: bool = False
    """DoRA (weight-decomposed LoRA): also learns a magnitude per output feature. Often closer to full
    fine-tuning at the same rank; each step is slower."""
    top_layers: int | None = Field(None, ge=1)
    """Adapt only the last N transformer blocks (default: every block). The backward pass then stops
    below them: with a third of SmolLM2's 30 blocks left out a LoRA step computes about 17% less."""
    train_embeddings: bool = False
    """Also train the input embeddings and the output head in full (saved with the adapter): for a domain
    with many unseen words. Adds vocab x hidden trainable weights (twice that when they are not tied)."""


def _yaml_off(value: Any) -> Any:
    """YAML reads a bare ``off`` as false (``no``/``false`` too): take it as ``off``; true as ``auto``."""
    if value is False:
        return "off"
    return "auto" if value is True else value


MicroBatchTokens = Annotated[Annotated[int, Field(ge=16)] | Literal["auto", "off"], BeforeValidator(_yaml_off)]
"""Token budget of one forward/backward pass: a number, ``auto`` (from free memory) or ``off``."""

TrainOptimizer = Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd"]
"""Optimizers; the 8-bit and paged ones come from bitsandbytes and need CUDA."""


class TrainSpec(Strict):
    """Settings every training stage shares (``cpt``, ``mlm``, ``sft``, ``seq2seq``)."""

    method: Literal["lora", "full"] = "lora"
    """``lora`` trains an adapter; ``full`` trains every weight."""
    lora: LoraSpec = LoraSpec()
    """Adapter settings (``method: lora``)."""
    epochs: float = Field(3.0, gt=0)
    """Passes over the training split."""
    max_steps: int = Field(-1, ge=-1)
    """Stop after this many optimizer steps (-1: run all epochs)."""
    lr: float = Field(2e-4, gt=0)
    """Peak learning rate."""
    batch_size: int = Field(8, ge=1)
    """Examples (or packed rows) per micro-batch."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step. The loss is a mean over every trained token of the whole
    step, so micro-batches of different lengths weigh by their token counts."""
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    """Share of steps with a linear warm-up."""
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warm-up."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping threshold (global L2 norm)."""
    optimizer: TrainOptimizer = "adamw"
    """``adamw`` (torch), ``adafactor``, ``sgd``; on CUDA also ``adamw_8bit``, ``paged_adamw_8bit``,
    ``paged_adamw_32bit`` (bitsandbytes)."""
    quantization: Literal["none", "4bit", "8bit"] = "none"
    """Load the frozen base weights quantized with bitsandbytes (``4bit``: QLoRA, NF4 with double
    quantization). CUDA only; needs ``method: lora``."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """``auto``: bf16 autocast on CUDA and on CPUs with AMX/avx512_bf16, fp32 otherwise."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory for long rows, about 30% slower."""
    compile: bool = False
    """``torch.compile`` each transformer block before training; the compile time is reported in the
    stage's metrics (``compile_seconds``). Pays off on long runs with few distinct row lengths."""
    logging_steps: int = Field(5, ge=1)
    """Log the loss every N optimizer steps."""
    save_steps: int = Field(0, ge=0)
    """Checkpoint every N steps (0: once per epoch). An interrupted run resumes from the last one."""
    save_total_limit: int = Field(2, ge=1)
    """Checkpoints kept on disk (the best one by validation loss is always kept)."""
    eval_split: str | None = None
    """Split to compute the validation loss on; default: ``val`` when the data stage wrote one
    (``data.val_fraction``), else no validation."""
    eval_steps: int = Field(0, ge=0)
    """Validate every N optimizer steps (0: once per epoch). Checkpoints follow the same schedule."""
    load_best: bool = True
    """With validation: finish with the weights of the lowest validation loss, not the last ones."""
    early_stopping_patience: int | None = Field(None, ge=1)
    """Stop after this many validations without improvement (needs a validation split)."""
    early_stopping_threshold: float = Field(0.0, ge=0.0)
    """Least decrease of the validation loss that counts as an improvement."""
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = ["tensorboard"]
    """Where to log losses and learning rates besides ``train_log.jsonl``: TensorBoard event files
    in ``<stage>/tensorboard`` (``tensorboard --logdir runs``); W&B and MLflow when installed."""

    @field_validator("quantization")
    @classmethod
    def _quantization_needs_lora(cls, value: str, info: ValidationInfo) -> str:
        if value != "none" and info.data.get("method") == "full":
            raise ValueError(f"quantization {value!r} freezes the base weights, so it needs method 'lora', not 'full'")
        return value


class DistillSpec(Strict):
    """Logit-level distillation: the student also matches a teacher's next-token distribution."""

    teacher: str
    """Model reference (alias, folder, .gguf, hub id) or a run directory (its tuned model). It must
    share the student's tokenizer; for other teachers distill at sequence level (synth, then sft)."""
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    """Weight of the KL term: loss = (1 - alpha) * CE + alpha * T^2 * KL(teacher || student)."""
    temperature: float = Field(1.0, gt=0.0)
    """Softmax temperature T of both distributions in the KL term."""
    top_k: int = Field(20, ge=1, le=1024)
    """Teacher log-probabilities kept per trained position; they are computed once, before training,
    and stored on disk, so the teacher is not in memory while the student trains."""
    batch_size: int = Field(8, ge=1)
    """Examples per teacher forward pass while precomputing."""


class ReplaySpec(Strict):
    """``sft.replay``: the base model's own replies to general prompts, mixed into training (lmforge.train.replay)."""

    enabled: bool | Literal["auto"] = "auto"
    """``auto``: on with the chat template, unless the training splits already hold records of the domain
    ``general`` (a recipe that brings its own replay, as the demo's ``qa/replay.jsonl``)."""
    prompts: str = "lmforge://demo/replay_prompts.yaml"
    """YAML list of ``{prompt, answer?, aliases?}``; a reply missing a known ``answer`` is not replayed."""
    weight: float = Field(3.0, gt=0.0)
    """Times each replay record is repeated in training (fractions sample a seeded share); 3 kept more general
    answers than 2 on a real domain (docs/TRAINING.md, "Real documents with these defaults")."""
    max_new_tokens: int = Field(48, ge=8)
    """Longest reply generated (cut back to its last full sentence)."""

    @field_validator("prompts")
    @classmethod
    def _prompts_exist(cls, value: str, info: ValidationInfo) -> str:
        base_dir = (info.context or {}).get("base_dir")
        if base_dir is None:
            return value
        resolved = resolve_path(value, Path(base_dir))
        if not resolved.is_file():
            raise ValueError(f"file not found: {str(resolved)!r}; give a YAML list of {{prompt, answer}} items")
        return str(resolved)


class RewordSpec(Strict):
    """``sft.reword``: the base model rewords the rule-made questions (``data.questions``) in its own words
    (lmforge.train.rewording)."""

    enabled: bool = False
    """Add the base model's rewordings of every generated question to training."""
    per_question: int = Field(1, ge=1, le=4)
    """Rewordings asked per question, each after another set of example rewrites (a fact's wordings start at
    different sets); kept where they pass the checks."""
    max_new_tokens: int = Field(40, ge=8)
    """Longest rewording generated."""
    raft: bool = True
    """Also train each kept rewording with the passages of its fact's RAFT example (when the RAFT split holds
    one), so the reader learns the reworded questions too."""


class DocumentsMixSpec(Strict):
    """``sft.documents``: the documents' own text trained on together with the questions (lmforge.train.documents)."""

    enabled: bool = False
    """Mix the text of the ``split`` in (loss on every token; chat records keep the loss on answers only)."""
    split: str = "documents"
    """The data stage's split of ``text`` records to mix in."""
    copies: int = Field(2, ge=1, le=16)
    """Forms of each document chunk: as written, then with its paragraphs in other seeded orders."""
    headings: bool = True
    """Start every chunk with its document's heading (and the collection's title, when a document defines
    one: ``This Code is the ...``), so a fact is never read without what it is about."""
    full_names: bool = True
    """Spell out short names the documents define (``the Fund``, ``this Code``) in each sentence."""
    chunk_words: int = Field(220, ge=20)
    """Most words per chunk (paragraphs are kept whole where they fit)."""
    order: Literal["mixed", "questions_first"] = "mixed"
    """``mixed``: documents and questions shuffled together; ``questions_first``: every epoch presents the
    questions, then the documents (the pre-instruction-tuning order)."""


class SFTSpec(TrainSpec):
    """The ``sft`` stage: supervised fine-tuning on ``chat`` records (optionally distilling a teacher)."""

    epochs: Annotated[float, Field(gt=0)] | Literal["auto"] = "auto"
    """Passes over the training splits; ``auto``: 3, more for a split under 200 examples so that training sees
    600 examples at least (10 passes at most): a few dozen questions need the steps (lmforge.engine.schedule)."""
    lr: Annotated[float, Field(gt=0)] | Literal["auto"] = "auto"
    """Peak learning rate; ``auto``: 1e-3 for LoRA on a model under 1B parameters (measured on SmolLM2-135M:
    2e-4 left small real QA sets unlearnt), 2e-4 for LoRA on larger models and for full training."""

    batch_size: int = Field(8, ge=1)
    """Examples per micro-batch (right-padded and length-grouped, or packed into one row)."""
    max_length: int = Field(1024, ge=16)
    """Longest example in tokens after templating; longer ones are truncated (and reported)."""
    template: Literal["chat", "alpaca", "domain_tag"] = "chat"
    """Prompt format: ``chat`` is the tokenizer's own chat template; ``alpaca`` (### Instruction /
    ### Input / ### Response) and ``domain_tag`` (``[DOMAIN: X] question`` then the answer) suit base
    models without one. The format is saved as the tuned tokenizer's chat template, so chat, serve,
    export and eval use it too."""
    train_on_inputs: bool = False
    """Also compute the loss on prompt tokens (default: assistant tokens only)."""
    packing: bool = False
    """Pack each micro-batch into one row (best for long, uneven examples); off: length-grouped
    right-padded batches (best for short chat examples)."""
    micro_batch_tokens: MicroBatchTokens = "auto"
    """Most tokens (padding included) one forward/backward pass may hold: a micro-batch of ``batch_size``
    long rows is cut into smaller passes (same examples per step, same loss, less memory). ``auto``: from
    the memory free when the stage starts (a quarter of it, at most 2 GB of activations; more rows at
    once are no faster on a CPU); ``off``: always ``batch_size`` rows."""
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    """Attention kernel; ``auto``: sdpa on CUDA; on a CPU eager (faster there on short rows) while the rows
    are at most 512 tokens and the attention scores it keeps for the backward pass (all layers', or one
    layer's under activation checkpointing) stay under 1 GiB, else sdpa (less memory)."""
    splits: list[str] = Field(["train"], min_length=1)
    """Splits to train on, mixed: ``train`` of the data stage, plus e.g. ``raft`` written by the index
    stage (``index.raft.enabled``) or ``synth`` written by the synth stage (sequence-level distillation)."""
    chain: Literal["merge", "stack"] = "merge"
    """How sft starts from a cpt LoRA adapter when the recipe runs cpt first. ``merge``: the adapter
    is folded into the base weights (saved as ``sft/base``) and the new adapter sits on that;
    ``stack``: a new adapter is trained over the cpt one and both are saved as one adapter on the
    original base (ranks concatenated; plain LoRA without trained embeddings only)."""
    distill: DistillSpec | None = None
    """Logit-level distillation from a teacher that shares the tokenizer (off when unset)."""
    replay: ReplaySpec = ReplaySpec()
    """Replay of the base model's own replies to general prompts, so tuning does not erase what it knew."""
    reword: RewordSpec = RewordSpec()
    """The base model's own rewordings of the rule-made questions, trained with them (docs/TRAINING.md)."""
    documents: DocumentsMixSpec = DocumentsMixSpec()
    """The documents' text itself in the same training as the questions (off by default; docs/TRAINING.md)."""


class CPTSpec(TrainSpec):
    """The ``cpt`` stage: continued pretraining of a causal LM on ``text`` records."""

    max_length: int = Field(1024, ge=16)
    """Context length: the texts are packed into rows of exactly this many tokens."""
    splits: list[str] = Field(["train"], min_length=1)
    """Splits whose ``text`` records are trained on (chat records in them are left to sft)."""
    micro_batch_tokens: MicroBatchTokens = "auto"
    """Most tokens one forward/backward pass may hold (``batch_size`` rows of ``max_length`` are cut into
    smaller passes, same loss, less memory); ``auto``: from the memory free when the stage starts (a
    quarter of it, at most 2 GB of activations); ``off``: always ``batch_size`` rows."""
    isolate_documents: bool = True
    """Restart positions at every document inside a packed row, so attention never crosses from one
    document into the next; off: plain concatenation."""
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    """Attention kernel; ``auto``: sdpa on CUDA; on a CPU eager (faster there on short rows) while the rows
    are at most 512 tokens and the attention scores it keeps for the backward pass (all layers', or one
    layer's under activation checkpointing) stay under 1 GiB, else sdpa (less memory)."""


class MLMSpec(TrainSpec):
    """The ``mlm`` stage: masked-language-model pretraining of an encoder (BERT family) on ``text`` records."""

    method: Literal["lora", "full"] = "full"
    """``full`` (default for small encoders) trains every weight; ``lora`` an adapter (merged on save)."""
    max_length: int = Field(512, ge=16)
    """Tokens per packed row, special tokens included (BERT-style encoders stop at 512)."""
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0)
    """Share of tokens chosen for prediction (of those: 80% masked, 10% random, 10% kept)."""
    splits: list[str] = Field(["train"], min_length=1)
    """Splits whose ``text`` records are trained on."""


class Seq2SeqSpec(TrainSpec):
    """The ``seq2seq`` stage: an encoder-decoder (T5/BART family) learns to turn documents into JSON fields."""

    method: Literal["lora", "full"] = "full"
    """``full`` (default for small encoder-decoders) trains every weight; ``lora`` an adapter."""
    lr: float = Field(3e-4, gt=0)
    """Peak learning rate."""
    splits: list[str] = Field(["train"], min_length=1)
    """Splits of chat records to train on: the user turn is the document, the assistant turn the JSON
    object of fields to extract."""
    eval_sets: list[str] | None = None
    """Splits extracted and scored after training (valid-JSON rate, exact match per field); default:
    ``test`` when the data stage wrote one."""
    input_format: Literal["prompt", "schema"] = "prompt"
    """``prompt``: an instruction naming the fields precedes the document; ``schema``: the JSON schema
    of the output is given in the input."""
    instruction: str | None = None
    """Instruction placed before the document; ``{fields}`` and ``{schema}`` are filled in. Default:
    one that lists the fields (``prompt``) or shows the schema (``schema``)."""
    json_schema: dict[str, Any] | str | None = None
    """JSON schema of the output: a mapping, or a .json file (relative to the recipe). Default:
    inferred from the training targets (their keys and value types)."""
    max_input_length: int = Field(2048, ge=16)
    """Longest input in tokens (longer documents are truncated and counted)."""
    max_output_length: int = Field(512, ge=8)
    """Longest output in tokens, in training and generation."""
    num_beams: int = Field(1, ge=1)
    """Beams when generating for evaluation (1: greedy)."""
    eval_batch_size: int = Field(8, ge=1)
    """Documents generated together in evaluation."""
    compare_base: bool = True
    """Also score the untrained base model on the eval sets, as the baseline."""

    @field_validator("json_schema")
    @classmethod
    def _schema_file(cls, value: dict[str, Any] | str | None, info: ValidationInfo) -> dict[str, Any] | str | None:
        base_dir = (info.context or {}).get("base_dir")
        if not isinstance(value, str) or base_dir is None:
            return value
        resolved = resolve_path(value, Path(base_dir))
        if not resolved.is_file():
            raise ValueError(f"JSON schema file not found: {str(resolved)!r}; give a .json file or an inline mapping")
        return str(resolved)


class PairJudgeSpec(Strict):
    """``dpo.build.judge``: a teacher grades every candidate answer against the gold one, and the grades rank them."""

    teacher: TeacherSpec
    """The judge: an OpenAI-compatible endpoint or a local model, as ``synth.teacher`` (set ``temperature: 0``
    for steady grades). Its replies are cached in ``dpo/prepared/judge.sqlite``."""
    min_score: int = Field(4, ge=1, le=5)
    """Least grade (1-5) of a right answer: one that contains the gold answer but is graded lower is wrong."""
    template: str | None = None
    """The grading prompt (default: synth's ``judge`` template; fields ``{chunk}`` (the gold answer, after the
    cited passages with retrieval), ``{question}``, ``{answer}``), replying ``{"score": 1-5, "reason": "..."}``."""


class PairsSpec(Strict):
    """``dpo.build``: preference pairs made from the starting model's own answers to training questions."""

    splits: list[str] = Field(["train"], min_length=1)
    """Splits whose chat records are asked. Only records with a short gold answer (``meta.answer``, else a reply
    of at most 10 words) are used: a sampled answer is judged by whether it contains it; the others are counted."""
    samples: int = Field(4, ge=1, le=32)
    """Answers sampled per question, besides the greedy one."""
    temperature: float = Field(1.0, gt=0.0, le=2.0)
    """Sampling temperature (higher: more varied, more wrong answers to learn from)."""
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    """Nucleus sampling threshold."""
    max_new_tokens: int = Field(64, ge=1)
    """Longest sampled answer."""
    batch_size: int = Field(16, ge=1)
    """Questions generated together."""
    chosen: Literal["gold", "sample"] = "gold"
    """The preferred answer: the record's own (gold) answer, or (``sample``) a sampled answer that contains
    the gold one when there is one (on-policy text), else the gold answer."""
    limit: int | None = Field(None, ge=1)
    """Ask at most this many questions (quick checks)."""
    rag: bool = False
    """Ask with the passages the run's index retrieves for each question (the prompt of ``lmforge ask`` and of
    eval's rag variants; needs the ``index`` stage). An answer is then right only when it also cites a
    passage of the question's source document (``meta.<index.gold_key>``): a correct fact with no citation,
    or citing another document, is rejected; the gold answer is chosen with that passage's number cited.
    Questions whose source document is not among the passages are left out (counted)."""
    judge: PairJudgeSpec | None = None
    """Also grade each candidate with a judge (synth's judge): an answer must then be graded at least
    ``min_score`` to be right; the lowest-graded wrong answer is rejected and (``chosen: sample``) the
    highest-graded right one chosen. A candidate the judge gives no usable grade keeps the rule above."""


DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "kto": 0.1, "orpo": 0.1, "simpo": 2.0}
"""``dpo.beta`` when unset, per loss (DPO, IPO, KTO and ORPO papers and TRL: 0.1; SimPO's paper: 2.0)."""


class DPOSpec(TrainSpec):
    """The ``dpo`` stage: preference tuning after sft (DPO, IPO, ORPO, SimPO or KTO) on pairs of answers."""

    loss: Literal["dpo", "ipo", "orpo", "simpo", "kto"] = "dpo"
    """``dpo`` (Rafailov et al.), ``ipo`` (Azar et al.), ``orpo`` (Hong et al.; no reference, keeps an sft term),
    ``simpo`` (Meng et al.; no reference, length-normalised) or ``kto`` (Ethayarajh et al.; unpaired completions
    labelled desirable or not: a pair counts as one of each)."""
    beta: float | None = Field(None, gt=0.0)
    """Strength of the preference term: how far the policy may move from the reference (dpo, ipo, kto), the
    reward scale (simpo), the weight of the odds-ratio term (orpo). Unset: each loss's usual value
    (:data:`DEFAULT_BETA`: 0.1, and 2.0 for simpo as in its paper)."""
    simpo_gamma: float = Field(1.0, ge=0.0)
    """SimPO's target reward margin, in reward units as TRL's ``simpo_gamma``: the loss is
    ``-log sigmoid(beta * (c/|c| - r/|r|) - simpo_gamma)`` (the paper's setups: beta 2.0, gamma 1.0)."""
    desirable_weight: float = Field(1.0, gt=0.0)
    """KTO: weight of desirable completions (raise it when they are fewer than the undesirable ones)."""
    undesirable_weight: float = Field(1.0, gt=0.0)
    """KTO: weight of undesirable completions."""
    epochs: float = Field(2.0, gt=0)
    """Passes over the pairs."""
    lr: float = Field(5e-5, gt=0)
    """Peak learning rate (preference tuning moves less than sft: 5e-5 for LoRA; for full training 5e-7
    is the usual order)."""
    batch_size: int = Field(4, ge=1)
    """Pairs per micro-batch (each pair is two rows: its chosen and its rejected completion)."""
    max_length: int = Field(1024, ge=16)
    """Longest prompt + completion in tokens; longer rows are cut at the end (a pair left with no completion
    token is dropped and counted)."""
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    """Attention kernel (see ``sft.attention``)."""
    splits: list[str] = Field(["train"], min_length=1)
    """Splits whose preference records are trained on: chat records with ``meta.rejected`` (the formats
    ``preference`` and ``preference_implicit``) or ``meta.label`` (``kto``); other records are ignored."""
    build: PairsSpec | None = None
    """Also make pairs from the starting model's answers to training questions (off when unset): the gold
    answer is chosen, a wrong sampled answer rejected. Written to ``dpo/pairs.jsonl`` (split ``pairs``)."""

    @model_validator(mode="after")
    def _beta_of_the_loss(self) -> DPOSpec:
        """An unset ``beta`` becomes the loss's usual value (:data:`DEFAULT_BETA`)."""
        if self.beta is None:
            self.beta = DEFAULT_BETA[self.loss]
        return self


class RewardSpec(Strict):
    """``grpo.reward``: what an answer earns, checked the way eval scores it (no learned reward model)."""

    answer: float = Field(1.0, ge=0.0)
    """For containing the gold answer (``meta.answer`` or an alias), eval's ``qa`` rule."""
    citation: float = Field(0.5, ge=0.0)
    """With passages (``grpo.rag``): for citing a passage of the question's source document as ``[n]``."""
    invented_citation: float = Field(0.5, ge=0.0)
    """Taken off for citing a passage number the prompt did not show (any number, without passages)."""
    length_penalty: float = Field(0.002, ge=0.0)
    """Taken off per generated token: of two right answers, the shorter earns more."""


class GRPOSpec(TrainSpec):
    """The ``grpo`` stage: reinforcement learning on the domain's own checkable answers (GRPO, Shao et al. 2024)
    after sft. Each training question with a short gold answer is answered ``samples`` times; each answer's
    reward (``reward``) is compared with its group's mean, and the policy moves toward the better answers,
    held near the model it started from by a KL term (``beta``)."""

    samples: int = Field(4, ge=2, le=64)
    """Answers sampled per question (the group whose mean reward is the baseline)."""
    temperature: float = Field(1.0, gt=0.0, le=2.0)
    """Sampling temperature of the answers (and of the log-probabilities the loss uses, as in TRL)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling threshold of the answers (1: the whole distribution, the one the loss assumes)."""
    max_new_tokens: int = Field(48, ge=1)
    """Longest sampled answer."""
    beta: float = Field(0.04, ge=0.0)
    """Weight of the per-token KL estimate to the starting model (0: none, and no reference pass)."""
    epsilon: float = Field(0.2, gt=0.0, lt=1.0)
    """Clipping range of the probability ratio (PPO-style)."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the questions."""
    lr: float = Field(2e-5, gt=0)
    """Peak learning rate (RL moves less than sft)."""
    batch_size: int = Field(4, ge=1)
    """Questions per micro-batch (``batch_size x samples`` answers are generated and trained together)."""
    max_length: int = Field(1024, ge=16)
    """Longest prompt in tokens (longer prompts keep their end)."""
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    """Attention kernel (see ``sft.attention``)."""
    splits: list[str] = Field(["train"], min_length=1)
    """Splits whose chat records with a short gold answer (``meta.answer``, else a reply of at most 10 words) are
    the questions."""
    limit: int | None = Field(None, ge=1)
    """Ask at most this many questions (quick checks)."""
    rag: bool = False
    """Ask with the passages the run's index retrieves (eval's rag prompt; needs the ``index`` stage): an answer
    then also earns ``reward.citation`` for citing its source document; questions whose source document is not
    retrieved are left out (counted)."""
    reward: RewardSpec = RewardSpec()
