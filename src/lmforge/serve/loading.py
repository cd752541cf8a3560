"""Load what ``lmforge serve`` serves: a base model, the LoRA adapters on it, and their tokenizers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError, ModelError, Problem


@dataclass
class ServedModel:
    """One id clients can put in ``model``."""

    id: str
    adapter: str | None
    """peft adapter name, or None for the base model."""
    tokenizer: Any
    description: str


@dataclass
class ModelSet:
    """The loaded base model, the ids it serves and its limits."""

    model: Any
    served: dict[str, ServedModel]
    context_length: int
    eos_ids: list[int]
    pad_id: int
    has_adapters: bool
    created: int = field(default_factory=lambda: int(time.time()))


def load_models(
    target: str, adapters: list[str] | None = None, name: str | None = None, dtype: str = "auto"
) -> ModelSet:
    """Load the base model of ``target`` (a run directory or a model reference) and every adapter.

    Args:
        target: ``runs/NAME`` (its tuned model: base + adapter, or full weights) or a model reference.
        adapters: extra ``NAME=PATH`` entries; PATH is a run directory or a LoRA adapter folder.
        name: id of the base model (default: ``base`` for a LoRA run, else the reference's name).
        dtype: ``auto``, ``fp32`` or ``bf16``.
    """

    from lmforge.models import eos_ids, load_causal_lm, load_tokenizer
    from lmforge.rundir import is_run_dir
    from lmforge.serve.chat import resolve_target

    model_dir, run_adapter, _ = resolve_target(target)
    entries: list[tuple[str, Path]] = []
    if run_adapter is not None:
        entries.append((Path(target).resolve().name, run_adapter))
        base_id = name or "base"
    elif is_run_dir(target):
        base_id = name or Path(target).resolve().name  # a full fine-tune: the run's own weights
    else:
        base_id = name or (Path(target).name if Path(target).exists() else target)
    for item in adapters or []:
        entries.append(_adapter_entry(item, model_dir))
    ids = [base_id] + [entry[0] for entry in entries]
    if len(set(ids)) != len(ids):
        raise ConfigError("lmforge serve", [Problem("--adapter", f"model ids must be unique, got {ids}")])

    device, weights = serving_device(dtype)
    model = load_causal_lm(model_dir, dtype=weights).to(device)
    base_tokenizer = load_tokenizer(model_dir)
    served = {base_id: ServedModel(base_id, None, base_tokenizer, f"base model {model_dir}")}
    if entries:
        from peft import PeftModel

        for index, (adapter_id, path) in enumerate(entries):
            if index == 0:
                model = PeftModel.from_pretrained(model, str(path), adapter_name=adapter_id)
            else:
                model.load_adapter(str(path), adapter_name=adapter_id)
            tokenizer = load_tokenizer(path) if (path / "tokenizer_config.json").is_file() else base_tokenizer
            served[adapter_id] = ServedModel(adapter_id, adapter_id, tokenizer, f"LoRA adapter {path}")
    model.eval()
    for entry in served.values():
        if not entry.tokenizer.chat_template:
            print(f"serve: warning: {entry.id!r} has no chat template; only /v1/completions will work for it")
    config = model.config if not entries else model.get_base_model().config
    stop_ids = eos_ids(model, base_tokenizer)
    if not stop_ids:
        raise ModelError("the model defines no end-of-sequence token; set eos_token_id in its generation_config.json")
    pad_id = base_tokenizer.pad_token_id if base_tokenizer.pad_token_id is not None else stop_ids[0]
    context = int(getattr(config, "max_position_embeddings", 2048) or 2048)
    return ModelSet(model, served, context, stop_ids, pad_id, has_adapters=bool(entries))


def serving_device(dtype: str) -> tuple[str, Any]:
    """(device, torch dtype) a server loads its model with: ``auto`` is bf16 on CUDA, fp32 on a CPU."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = dtype == "bf16" or (dtype == "auto" and device == "cuda")
    return device, torch.bfloat16 if bf16 else torch.float32


def _adapter_entry(item: str, base_dir: Path) -> tuple[str, Path]:
    from lmforge.rundir import final_model, is_run_dir

    adapter_id, sep, raw_path = item.partition("=")
    if not sep or not adapter_id or not raw_path:
        raise ConfigError("lmforge serve", [Problem("--adapter", f"got {item!r}; expected NAME=PATH")])
    path = Path(raw_path).expanduser()
    if is_run_dir(path):
        tuned = final_model(path, kinds=("causal",))
        if tuned is None or tuned.adapter_dir is None:
            raise ModelError(f"--adapter {item}: {path} is a run without a finished LoRA training stage")
        if Path(tuned.model_dir).resolve() != Path(base_dir).resolve():
            raise ModelError(
                f"--adapter {item}: that run's adapter was trained on {tuned.model_dir}, but the server's base model "
                f"is {base_dir}; serve adapters of the same base together"
            )
        path = tuned.adapter_dir
    if not (path / "adapter_config.json").is_file():
        raise ModelError(f"--adapter {item}: {path} has no adapter_config.json; expected a LoRA adapter or a run")
    return adapter_id, path
