"""LoRA (and DoRA) adapters for every training stage: which modules, which extra weights, how many trained."""

from __future__ import annotations

from typing import Any

from lmforge.config import TrainSpec


def add_lora(model: Any, spec: TrainSpec, task_type: str | None) -> Any:
    """Wrap ``model`` in a LoRA (or DoRA) adapter per ``spec.lora``; embeddings/head trained in full on request."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if spec.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing)
    modules_to_save = embedding_module_names(model) if spec.lora.train_embeddings else None
    layers, targets = None, spec.lora.target_modules
    if spec.lora.top_layers is not None:
        layers = top_layer_indices(int(model.config.num_hidden_layers), spec.lora.top_layers)
        if targets == "all-linear":  # PEFT takes a layer range with module names only
            targets = linear_module_names(model)
    config = LoraConfig(
        layers_to_transform=layers,
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=targets,
        use_dora=spec.lora.use_dora,
        modules_to_save=modules_to_save,
        ensure_weight_tying=bool(modules_to_save),
        task_type=task_type,
    )
    return get_peft_model(model, config, autocast_adapter_dtype=True)


def top_layer_indices(total: int, top: int) -> list[int]:
    """Indices of the last ``top`` of ``total`` blocks (PEFT's ``layers_to_transform``)."""
    return list(range(max(0, total - top), total))


def linear_module_names(model: Any) -> list[str]:
    """Names (last part) of the linear layers inside the transformer blocks: what ``all-linear`` adapts."""
    import torch

    head = model.get_output_embeddings()
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    return sorted(names)


def embedding_module_names(model: Any) -> list[str]:
    """Names of the input embedding and (when it is a separate module) the output head."""
    modules = {id(module): name for name, module in model.named_modules()}
    names = [modules[id(model.get_input_embeddings())].rsplit(".", 1)[-1]]
    head = model.get_output_embeddings()
    if head is not None and id(head) in modules:
        names.append(modules[id(head)].rsplit(".", 1)[-1])
    return sorted(set(names))


def trainable_summary(model: Any) -> str:
    """``1.2M of 135M weights trainable (0.9%)``."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{_short(trainable)} of {_short(total)} weights trainable ({100 * trainable / max(total, 1):.2f}%)"


def _short(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"
