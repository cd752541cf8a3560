"""The child process of ``lmforge bench``: one system trained and measured (``python -m lmforge.perf.bench_worker``).

``lmforge.perf.bench`` starts one worker per system and sequence length, so each process's peak RSS is its
own; the worker builds that system's trainer on the shared, pre-ordered micro-batches, times the
optimizer steps with :class:`StepMeter`, and writes a :class:`~lmforge.perf.bench.BenchResult` as JSON.
What the systems are and how MFU is counted: the docstring of ``lmforge.perf.bench``.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lmforge.hardware import cpu_peak_flops
from lmforge.perf.bench import BenchResult, BenchSettings
from lmforge.rundir import atomic_write_text


class StepMeter:
    """Counts the non-padding tokens each micro-batch carries and times the optimizer steps.

    The collator wrapper queues each batch's count as it is built; the training-step wrapper takes
    them in the same order, so a prefetching data loader cannot shift the counts between steps.
    """

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.queue: deque[tuple[int, int]] = deque()
        self.tokens = 0
        self.padded = 0
        self.step_tokens: dict[int, int] = {}
        self.begin: dict[int, float] = {}
        self.end: dict[int, float] = {}

    def wrap_collator(self, collate: Any) -> Any:
        def counting_collate(features: list[dict[str, Any]]) -> Any:
            real = sum(sum(f["attention_mask"]) if "attention_mask" in f else len(f["input_ids"]) for f in features)
            batch = collate(features)
            self.queue.append((real, int(batch["input_ids"].numel())))
            return batch

        return counting_collate

    def wrap_training_step(self, trainer: Any) -> None:
        original = trainer.training_step

        def training_step(*args: Any, **kwargs: Any) -> Any:
            real, padded = self.queue.popleft()
            step = trainer.state.global_step
            if step >= self.warmup:
                self.tokens += real
                self.padded += padded
                self.step_tokens[step] = self.step_tokens.get(step, 0) + real
            return original(*args, **kwargs)

        trainer.training_step = training_step

    def callback(self) -> Any:
        from transformers import TrainerCallback

        meter = self

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                meter.begin[state.global_step] = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                meter.end[state.global_step - 1] = time.perf_counter()

        return Clock()

    def timed(self) -> tuple[float, list[float]]:
        """Seconds from the start of the first timed step to the end of the last, and each step's time."""
        last = max(self.end)
        steps = [round(self.end[i] - self.begin[i], 3) for i in sorted(self.end) if i >= self.warmup]
        return self.end[last] - self.begin[self.warmup], steps

    def median_rate(self) -> float:
        """Median over the timed steps of tokens / seconds."""
        import statistics

        rates = [
            self.step_tokens.get(i, 0) / (self.end[i] - self.begin[i]) for i in sorted(self.end) if i >= self.warmup
        ]
        return statistics.median(rates)


def worker(config: dict[str, Any]) -> BenchResult:
    """Train one system and measure it (runs in a child process; see :func:`run_bench`)."""
    import torch

    from lmforge.engine.compute import configure_threads

    system = config["system"]
    settings = BenchSettings(**config["settings"])
    if settings.warmup >= settings.steps:
        raise ValueError(f"warmup ({settings.warmup}) must be below steps ({settings.steps})")
    threads = configure_threads()
    setup = _setup(settings, system)
    torch.manual_seed(setup["recipe"].seed)
    if system == "baseline":
        trainer, notes = _baseline(setup, settings)
    elif system in ("trl", "trl-fp32"):
        trainer, notes = _trl(setup, settings, fp32=system == "trl-fp32")
    else:
        trainer, notes = _lmforge(setup, settings)
    meter = StepMeter(settings.warmup)
    trainer.data_collator = meter.wrap_collator(trainer.data_collator)
    meter.wrap_training_step(trainer)
    trainer.add_callback(meter.callback())
    trainer.train()
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    seconds, step_seconds = meter.timed()
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    heldout = heldout_loss(trainer.model, setup["heldout"], setup["pad_id"])
    flops = flops_per_token(trainer.model)
    tokens_per_s = meter.median_rate()
    peak = settings.peak_tflops * 1e12 if settings.peak_tflops else cpu_peak_flops()
    return BenchResult(
        system=system,
        seq_len=settings.seq_len,
        steps=trainer.state.global_step,
        micro_batch=trainer.args.per_device_train_batch_size,
        tokens=meter.tokens,
        padded_tokens=meter.padded,
        seconds=round(seconds, 2),
        tokens_per_s=round(tokens_per_s, 1),
        mean_tokens_per_s=round(meter.tokens / seconds, 1),
        step_seconds=step_seconds,
        peak_rss_mb=round(peak_rss_mb, 1),
        train_loss=round(sum(losses[-3:]) / max(len(losses[-3:]), 1), 5),
        heldout_loss=round(heldout, 5),
        mfu=round(tokens_per_s * flops / peak, 4),
        flops_per_token=flops,
        notes=f"{notes}; {threads} threads",
        losses=[round(x, 5) for x in losses],
    )


def _setup(settings: BenchSettings, system: str) -> dict[str, Any]:
    """The recipe, model folder, tokenizer, ordered training examples and held-out examples."""
    from lmforge.config import load_recipe, shipped_recipe
    from lmforge.data.stage import prepare_records
    from lmforge.engine import schedule
    from lmforge.engine.templates import install_template
    from lmforge.engine.tokenize import tokenize_records
    from lmforge.models import load_tokenizer, resolve_model

    overrides = [
        *settings.overrides,
        f"sft.max_length={settings.seq_len}",
        f"sft.batch_size={settings.batch_size}",
        "sft.grad_accum=1",
        f"sft.max_steps={settings.steps}",
        "sft.scheduler=constant",
        "sft.warmup_ratio=0",
        "sft.logging_steps=1",
        "sft.report_to=[]",
        f"sft.save_steps={settings.steps + 1}",  # no checkpoint inside the run
    ]
    if system == "lmforge-lowmem":
        overrides.append("sft.gradient_checkpointing=true")
    if settings.model:
        overrides.append(f"model.ref={settings.model}")
    recipe = load_recipe(settings.recipe or shipped_recipe("demo"), overrides)
    model_dir = resolve_model(recipe.model.ref, recipe.model.revision, recipe.model.trust_remote_code)
    # Every system runs sft.max_steps steps, so only `lr: auto` matters here; it is the stage's own value.
    sft = schedule.resolved(recipe.sft, settings.steps * settings.batch_size, schedule.model_parameters(model_dir))
    recipe = recipe.model_copy(update={"sft": sft})
    tokenizer = load_tokenizer(model_dir, trust_remote_code=recipe.model.trust_remote_code)
    splits = prepare_records(recipe.data, recipe.seed).splits
    if settings.workload == "cpt":
        return _cpt_setup(settings, recipe, model_dir, tokenizer, splits)
    records = [r for r in sft_records(recipe, splits) if r["kind"] == "chat"]
    if not records:
        raise ValueError(f"the recipe's sft.splits {recipe.sft.splits} hold no chat records (splits: {sorted(splits)})")
    install_template(tokenizer, recipe.sft.template, records, recipe.model.ref)
    spec = recipe.sft
    examples, _ = tokenize_records(tokenizer, records, spec.max_length, spec.train_on_inputs, spec.template)
    order = bench_order([len(e.input_ids) for e in examples], settings.steps * settings.batch_size, recipe.seed)
    held = [r for r in splits.get("test", []) if r["kind"] == "chat"][: settings.heldout]
    held_examples, _ = tokenize_records(tokenizer, held, spec.max_length, False, spec.template) if held else ([], {})
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {
        "recipe": recipe,
        "model_dir": model_dir,
        "tokenizer": tokenizer,
        "records": [records[i] for i in order],
        "examples": [examples[i] for i in order],
        "heldout": held_examples,
        "pad_id": pad_id,
    }


def _cpt_setup(settings: BenchSettings, recipe: Any, model_dir: Any, tokenizer: Any, splits: dict[str, Any]) -> dict:
    """The ``cpt`` workload: rows of exactly ``seq_len`` tokens packed from the recipe's text records
    (documents restart their positions inside a row, as the cpt stage packs them), the texts cycled
    until every step has its rows."""
    from lmforge.engine.tokenize import pack_texts

    texts = [r["text"] for records in splits.values() for r in records if r["kind"] == "text"]
    if not texts:
        raise ValueError(
            f"the cpt workload needs text records (documents); the recipe's splits {sorted(splits)} hold none"
        )
    needed = settings.steps * settings.batch_size
    tokens = pack_texts(tokenizer, texts, settings.seq_len)[1]["tokens"]
    # Fewest copies whose stream holds more than `needed` rows (its last row is short: one spare).
    cycle = texts * (needed * settings.seq_len // tokens + 1)
    rows, _ = pack_texts(tokenizer, cycle, settings.seq_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {
        "recipe": recipe,
        "model_dir": model_dir,
        "tokenizer": tokenizer,
        "texts": cycle,
        "examples": rows[:needed],
        "heldout": [],
        "pad_id": pad_id,
    }


def sft_records(recipe: Any, splits: dict[str, list[Any]]) -> list[Any]:
    """The records of every split the recipe's sft trains on (``sft.splits``), what the bench must time.

    Splits of the data stage come from ``splits``; the others (``raft`` from the index stage, ``synth``)
    from the recipe's run directory when that stage has finished there; a RAFT split not written yet is
    previewed as ``lmforge plan`` does (:func:`lmforge.rag.raft.preview_raft_split`: the same examples
    and lengths, BM25 distractors).

    Raises:
        ValueError: a split no stage of the run has written yet and none can preview, with the command
            that writes it.
    """
    from lmforge.errors import StageError
    from lmforge.rag.raft import preview_raft_split
    from lmforge.records import read_records
    from lmforge.rundir import split_path

    records: list[Any] = []
    for name in recipe.sft.splits:
        if name in splits:
            records += splits[name]
            continue
        try:
            path = split_path(recipe.run_path(), name, needed_by="bench")
        except StageError:
            preview = preview_raft_split(recipe, splits) if name == recipe.index.raft.split else None
            if preview is not None:
                print(f"bench: {preview[1]}")
                records += preview[0]
                continue
            raise ValueError(
                f"the recipe's sft trains on the split {name!r}, which a later stage writes (index for raft, synth "
                f"for synth) and {recipe.run_path()} does not hold yet; run the recipe up to that stage first "
                f"(e.g. lmforge run RECIPE --set 'stages=[data,index]'), then bench"
            ) from None
        records += list(read_records(path))
    return records


def bench_order(lengths: list[int], count: int, seed: int) -> list[int]:
    """``count`` example indices: a seeded shuffle (cycled when there are fewer examples), sorted by
    length inside groups of 64, so consecutive micro-batches hold similar lengths (as with lmforge's
    length-grouped sampler) and systems that pad to a batch's longest row pad little."""
    import random

    rng = random.Random(seed)
    pool: list[int] = []
    while len(pool) < count:
        shuffled = list(range(len(lengths)))
        rng.shuffle(shuffled)
        pool.extend(shuffled)
    chosen = pool[:count]
    # Mega-batches of 64 examples sorted by length inside: similar lengths meet, the order stays mixed.
    ordered: list[int] = []
    for start in range(0, count, 64):
        ordered.extend(sorted(chosen[start : start + 64], key=lambda i: -lengths[i]))
    return ordered


def flops_per_token(model: Any) -> float:
    """2 N + 2 N' + 2 T: the matmul weights N in the transformer blocks (forward), N' those of the blocks
    the backward pass goes through (from the lowest block with a trained weight up: all of them unless
    ``lora.top_layers``), T the trainable ones (see the module docstring)."""
    import re

    weights: list[tuple[int, int, bool]] = []  # (block, size, trainable)
    for name, param in model.named_parameters():
        if param.dim() != 2 or "embed" in name or "lm_head" in name:
            continue
        block = re.search(r"\.layers\.(\d+)\.", name)
        weights.append((int(block.group(1)) if block else 0, param.numel(), param.requires_grad))
    lowest = min((b for b, _, trained in weights if trained), default=0)
    total = sum(n for _, n, _ in weights)
    backward = sum(n for b, n, _ in weights if b >= lowest)
    trainable = sum(n for _, n, trained in weights if trained)
    return float(2 * total + 2 * backward + 2 * trainable)


def heldout_loss(model: Any, examples: list[Any], pad_id: int) -> float:
    """Mean answer-only loss on held-out examples, computed the same way for every system."""
    import torch

    from lmforge.engine.fast import causal_lm_loss_sum, pad_batch
    from lmforge.models import cpu_supports_bf16

    if not examples:
        return float("nan")
    bf16 = torch.cuda.is_available() or cpu_supports_bf16()
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(examples), 16):
            chunk = examples[start : start + 16]
            batch = pad_batch([{"input_ids": e.input_ids, "labels": e.labels} for e in chunk], pad_id)
            loss, n = causal_lm_loss_sum(model, {k: v.to(model.device) for k, v in batch.items()})
            total += float(loss)
            count += n
    return total / max(count, 1)


def _common_args(settings: BenchSettings, spec: Any, micro_batch: int) -> dict[str, Any]:
    """TrainingArguments shared by the baseline and TRL (the lmforge systems take them from the sft spec)."""
    import torch

    return {
        "output_dir": tempfile.mkdtemp(prefix="lmforge-bench-"),
        "per_device_train_batch_size": micro_batch,
        "gradient_accumulation_steps": settings.batch_size // micro_batch,
        "max_steps": settings.steps,
        "learning_rate": spec.lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": spec.weight_decay,
        "max_grad_norm": spec.max_grad_norm,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "use_cpu": not torch.cuda.is_available(),
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def _lora_config(spec: Any, model_dir: Any) -> Any:
    """The recipe's adapter for PEFT, as lmforge's sft sets it up (``lora.top_layers`` included)."""
    import json
    from pathlib import Path

    from peft import LoraConfig

    lora = spec.lora
    layers, targets = None, lora.target_modules
    if lora.top_layers is not None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from lmforge.engine.lora import linear_module_names, top_layer_indices

        total = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"]
        layers = top_layer_indices(total, lora.top_layers)
        if targets == "all-linear":
            with torch.device("meta"):
                skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_dir)))
            targets = linear_module_names(skeleton)
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )


def _in_order(trainer: Any) -> Any:
    """Make a Trainer read its dataset in order (the bench has ordered it already)."""
    from torch.utils.data import SequentialSampler

    trainer._get_train_sampler = lambda *args, **kwargs: SequentialSampler(trainer.train_dataset)
    return trainer


def _baseline(setup: dict[str, Any], settings: BenchSettings) -> tuple[Any, str]:
    """HF Trainer, fp32, every example padded to the sequence length: what the seed scripts do."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    spec = setup["recipe"].sft
    micro = settings.batch_size
    while micro > 1 and (micro * settings.seq_len > settings.baseline_tokens or settings.batch_size % micro):
        micro -= 1
    model = AutoModelForCausalLM.from_pretrained(str(setup["model_dir"]), dtype=torch.float32, use_safetensors=True)
    model = get_peft_model(model, _lora_config(spec, setup["model_dir"]))
    rows = []
    for example in setup["examples"]:
        if settings.workload == "cpt":  # full rows: plain causal LM on the concatenated texts
            ids = example.input_ids
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)})
            continue
        n, pad = len(example.input_ids), settings.seq_len - len(example.input_ids)
        rows.append(
            {
                "input_ids": example.input_ids + [setup["pad_id"]] * pad,
                "attention_mask": [1] * n + [0] * pad,
                "labels": example.labels + [-100] * pad,
            }
        )
    args = TrainingArguments(**_common_args(settings, spec, micro))
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=default_data_collator)
    return _in_order(trainer), f"fp32, padded to {settings.seq_len}, micro-batch {micro}"


def _trl(setup: dict[str, Any], settings: BenchSettings, fp32: bool = False) -> tuple[Any, str]:
    """TRL's SFTTrainer with its defaults (``fp32``: but without bf16 autocast), on prompt/completion
    pairs (loss on the completion), or for the ``cpt`` workload on the texts with TRL's packing."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    spec = setup["recipe"].sft
    extra: dict[str, Any] = {"bf16": False} if fp32 else {}
    if settings.workload == "cpt":
        rows = [{"text": text} for text in setup["texts"]]
        extra["packing"] = True
    else:
        rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in setup["records"]]
    args = SFTConfig(**_common_args(settings, spec, settings.batch_size), max_length=settings.seq_len, **extra)
    trainer = SFTTrainer(
        model=str(setup["model_dir"]),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=setup["tokenizer"],
        peft_config=_lora_config(spec, setup["model_dir"]),
    )
    if settings.workload != "cpt" and len(trainer.train_dataset) != len(rows):
        raise RuntimeError(f"TRL kept {len(trainer.train_dataset)} of {len(rows)} examples; the bench needs all")
    checkpointing = "activation checkpointing" if args.gradient_checkpointing else "no checkpointing"
    packing = f", TRL packing ({args.packing_strategy})" if settings.workload == "cpt" else ""
    what = "TRL defaults but fp32" if fp32 else "TRL defaults"
    return _in_order(trainer), f"{what}: {'bf16 autocast' if args.bf16 else 'fp32'}, {checkpointing}{packing}"


def _lmforge(setup: dict[str, Any], settings: BenchSettings) -> tuple[Any, str]:
    """lmforge's sft path, built by the same functions as the sft stage."""
    from functools import partial

    from torch.utils.data import SequentialSampler

    from lmforge.engine.budget import stage_micro_batching
    from lmforge.engine.causal import build_causal_model
    from lmforge.engine.compute import attention_row, use_bf16
    from lmforge.engine.fast import causal_lm_loss_sum, pack_batch, pad_batch
    from lmforge.engine.trainer import build_trainer
    from lmforge.rundir import StageDir
    from lmforge.train.sft import ExampleDataset

    recipe = setup["recipe"]
    spec = recipe.sft
    examples, eval_examples = setup["examples"], setup["heldout"]
    bf16 = use_bf16(spec.precision)
    cpt = settings.workload == "cpt"
    micro = stage_micro_batching(spec, setup["model_dir"], [len(e.input_ids) for e in examples], bf16, spec.packing)
    _, longest = attention_row([len(e.input_ids) for e in [*examples, *eval_examples]], micro.rows, spec.packing)
    model = build_causal_model(setup["model_dir"], spec, longest, spec.attention, recipe, rows=micro.rows)
    collate = pack_batch if spec.packing else partial(pad_batch, pad_id=setup["pad_id"])
    dataset = ExampleDataset(examples)
    if cpt:  # the cpt stage's rows and collator
        from lmforge.engine.fast import collate_rows
        from lmforge.train.cpt import RowDataset

        dataset, collate = RowDataset(examples), partial(collate_rows, pad_id=setup["pad_id"])
    trainer = build_trainer(
        model=model,
        spec=spec,
        seed=recipe.seed,
        stage=StageDir.open(tempfile.mkdtemp(prefix="lmforge-bench-"), "sft"),
        label="sft",
        train_dataset=dataset,
        eval_dataset=None,
        collator=collate,
        loss_sum=causal_lm_loss_sum,
        train_sampler=SequentialSampler(dataset),
        loss_shifts_labels=True,
        micro_batching=micro,
    )
    parts = [
        "bf16 autocast, bf16 frozen weights" if bf16 else "fp32",
        "packed documents (cpt rows)" if cpt else "packed rows" if spec.packing else "length-grouped",
        f"{model.config._attn_implementation} attention",
    ]
    if micro.rows < spec.batch_size:
        parts.append(f"{micro.rows}-row passes (token budget {micro.budget})")
    if spec.gradient_checkpointing:
        parts.append("activation checkpointing")
    if getattr(spec, "compile", False):
        parts.append("torch.compile")
    return trainer, ", ".join(parts)


if __name__ == "__main__":  # child process: python -m lmforge.perf.bench_worker '<json config>'
    job = json.loads(sys.argv[1])
    outcome = worker(job)
    atomic_write_text(Path(job["result"]), json.dumps(asdict(outcome), indent=2))
