"""The fast training path: padding-free batches, a chunked loss and a lean LoRA forward.

Measured on a 2-core AMX CPU with SmolLM2-135M (see docs/PERFORMANCE.md), the time of a LoRA
step goes to three places besides the matmuls: the ``tokens x vocab`` logits (allocating, filling
and soft-maxing a 50 MB fp32 tensor costs more than the lm_head matmul), attention kernels on
padded or block-masked rows, and the element-wise glue of the LoRA layers. Each gets a fix here.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.engine.tokenize import IGNORE

# Models whose logits are exactly ``hidden @ lm_head.T`` (no soft-capping or scaling), so the loss
# can be computed from the hidden states. Others fall back to the plain logits path.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets``, ``chunk`` rows at a time.

    The gradients are computed during the forward pass, chunk by chunk, so the full
    ``(rows, vocab)`` logits never exist: peak extra memory is ``chunk x vocab`` fp32 (``chunk``: by
    default :func:`loss_chunk_rows`). Softmax and
    the loss are computed in fp32 whatever the input dtype.

    Written by hand because ``torch.nn.functional.linear_cross_entropy``'s chunked path (torch 2.13)
    accumulated the loss in bf16 on CPU (off by ~6% on a test batch) and ran ~10x slower here.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        matmul_dtype = hidden.dtype if hidden.dtype == weight.dtype else torch.float32
        w = weight.to(matmul_dtype)
        chunk = chunk or loss_chunk_rows(matmul_dtype)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk].to(matmul_dtype)
            rows = targets[start : start + chunk]
            logits = F.linear(h, w).float()  # (chunk, vocab)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, rows[:, None]).squeeze(1)).sum()
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            probs[torch.arange(rows.shape[0], device=rows.device), rows] -= 1.0  # d loss / d logits
            grad_logits = probs.to(matmul_dtype)
            grad_hidden[start : start + chunk] = (grad_logits @ w).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += (grad_logits.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight if grad_weight is not None else torch.empty(0))
        ctx.has_weight_grad = grad_weight is not None
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output.to(grad_hidden.dtype)
        weight_grad = (grad_weight * grad_output).to(ctx.weight_dtype) if ctx.has_weight_grad else None
        return grad_hidden * scale, weight_grad, None, None


def loss_chunk_rows(matmul_dtype: torch.dtype) -> int:
    """Rows of logits per chunk: 256 in fp32, where the CPU's sgemm needs tall matrices to run fast (the
    lm_head step of a 340-row loss took 577 ms with 64-row chunks, 362 ms with 256, on a 2-core Zen 5
    capped to AVX2), 64 in bf16 (no faster with more rows; less memory)."""
    return 256 if matmul_dtype == torch.float32 else 64


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """Sum over rows of CE(hidden @ weight.T, targets); see :class:`ChunkedCrossEntropy`."""
    return ChunkedCrossEntropy.apply(hidden, weight, targets, chunk)


def supports_hidden_state_loss(model: Any) -> bool:
    """True when the loss can be computed from the final hidden states and the output embedding."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if any(getattr(config, name, None) not in (None, 1.0) for name in _LOGIT_TRANSFORMS):
        return False
    head = model.get_output_embeddings()
    return isinstance(head, torch.nn.Linear) and head.bias is None and hasattr(model, model.base_model_prefix)


def trained_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions whose next token is trained (a bool mask shaped like ``labels``) and those tokens.

    Targets come in row-major order, the order of ``hidden[mask]``.
    """
    shifted = labels[:, 1:]
    trained = shifted != IGNORE
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = trained
    return keep, shifted[trained]


def backbone_inputs(inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The keyword arguments of a causal LM's forward pass for a training micro-batch (no KV cache)."""
    return {
        "input_ids": inputs["input_ids"],
        "position_ids": inputs.get("position_ids"),
        "attention_mask": inputs.get("attention_mask"),
        "use_cache": False,
    }


def causal_lm_loss_sum(
    model: Any, inputs: dict[str, torch.Tensor], chunk: int | None = None
) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over labelled positions, and the number of those positions.

    ``model`` is a causal LM (a PEFT model is unwrapped). The hidden states are taken from the
    backbone and only the rows that have a label go through the output head.
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    keep, targets = trained_positions(inputs["labels"])
    forward_args = backbone_inputs(inputs)
    if supports_hidden_state_loss(causal_lm):
        backbone = getattr(causal_lm, causal_lm.base_model_prefix)
        hidden = backbone(**forward_args).last_hidden_state[keep]  # (trained tokens, hidden)
        loss = chunked_cross_entropy(hidden, causal_lm.get_output_embeddings().weight, targets, chunk)
    else:
        logits = model(**forward_args, logits_to_keep=keep).logits
        logits = logits.reshape(-1, logits.shape[-1])
        loss = F.cross_entropy(logits.float(), targets, reduction="sum")
    return loss, int(targets.numel())


# ---------------------------------------------------------------- batching


def pad_batch(features: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch, with no attention mask.

    Causal attention never looks forward, so real tokens never see the padding that follows them;
    the pad positions carry no label. Without a mask the attention kernels take their fast causal
    path. Use with length-grouped sampling so little padding is computed.
    """
    longest = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(features), longest), IGNORE, dtype=torch.long)
    for row, feature in enumerate(features):
        n = len(feature["input_ids"])
        input_ids[row, :n] = torch.tensor(feature["input_ids"])
        labels[row, 1:n] = torch.tensor(feature["labels"][1:n])
    return {"input_ids": input_ids, "labels": labels}


def pack_batch(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Concatenate a micro-batch into one row, padding-free.

    ``position_ids`` restart at 0 for each example and no 2-D attention mask is passed, which is
    how transformers' sdpa/eager attention detect packed sequences and keep them apart. The first
    label of every example is IGNORE so no token is predicted across a boundary.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for feature in features:
        ids = feature["input_ids"]
        input_ids.extend(ids)
        labels.extend([IGNORE, *feature["labels"][1:]])
        positions.extend(range(len(ids)))
    return {
        "input_ids": torch.tensor([input_ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([positions]),
    }


def collate_rows(rows: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack packed rows, right-padding with ``pad_id`` (positions keep counting, labels IGNORE)."""
    batch = pad_batch(rows, pad_id)
    longest = batch["input_ids"].shape[1]
    positions = torch.zeros((len(rows), longest), dtype=torch.long)
    for r, row in enumerate(rows):
        n = len(row["position_ids"])
        positions[r, :n] = torch.tensor(row["position_ids"])
        positions[r, n:] = torch.arange(row["position_ids"][-1] + 1, row["position_ids"][-1] + 1 + longest - n)
    batch["position_ids"] = positions
    return batch


# ---------------------------------------------------------------- LoRA


def _lean_lora_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``W x + B (A x) * scale`` with the scale applied to the rank-r product (cheap) and no dtype round trips.

    PEFT's generic forward casts the input to the adapter dtype (fp32) and scales the full-width
    output; on a memory-bound CPU those element-wise passes cost as much as the adapter matmuls.
    """
    name = self.active_adapters[0]
    out = F.linear(x, self.base_layer.weight, self.base_layer.bias)
    if self.disable_adapters:  # inside PEFT's disable_adapter(): the base model (a reference policy)
        return out
    low_rank = F.linear(x, self.lora_A[name].weight) * self.scaling[name]
    return out + F.linear(low_rank, self.lora_B[name].weight)


def enable_lean_lora(model: Any) -> int:
    """Give every plain LoRA linear layer the lean forward (instance-level, training only).

    Layers with dropout, DoRA or several adapters keep PEFT's forward. Returns how many changed.
    """
    from peft.tuners.lora.layer import Linear as LoraLinear

    changed = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear) or len(module.active_adapters) != 1:
            continue
        name = module.active_adapters[0]
        plain = (
            name in module.lora_A
            and isinstance(module.lora_dropout[name], torch.nn.Identity)
            and name not in getattr(module, "lora_variant", {})
            and not module.merged
            and not getattr(module, "fan_in_fan_out", False)  # GPT-2's Conv1D stores its weight transposed
        )
        if plain:
            module.forward = types.MethodType(_lean_lora_forward, module)
            changed += 1
    return changed


def disable_lean_lora(model: Any) -> None:
    """Restore PEFT's own forward (before saving or merging)."""
    for module in model.modules():
        if "forward" in vars(module):
            del module.forward
