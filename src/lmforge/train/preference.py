"""Preference losses (DPO, IPO, SimPO, ORPO) on sequence log-probabilities computed without full logits.

A batch holds each pair's chosen completion in the first half and its rejected one in the second, as
``input_ids`` / ``attention_mask`` rows with a ``completion_mask`` marking the completion tokens.
:func:`sequence_logps` runs the backbone once and sends only the completion positions through the
output head, a chunk of rows at a time (:class:`ChunkedTokenLogps`), so the ``(tokens, vocab)`` fp32
logits of the batch never exist; the reference model of DPO/IPO is the same network with its LoRA
adapter switched off (:func:`reference_logps`), not a second copy of the weights.

The losses follow the papers and TRL's implementations (``tests/unit/test_preference.py`` checks DPO
and KTO against TRL's ``DPOTrainer`` and ``KTOTrainer`` on the same batch):

- ``dpo``: ``-log sigmoid(beta * ((c - c_ref) - (r - r_ref)))`` (Rafailov et al., 2023);
- ``ipo``: ``((c - c_ref) / |c| - (r - r_ref) / |r| - 1 / (2 beta))^2``, log-ratios averaged over the
  completion tokens as TRL does (Azar et al., 2023);
- ``simpo``: ``-log sigmoid(beta * (c / |c| - r / |r|) - gamma)``, no reference (Meng et al., 2024);
- ``orpo``: ``NLL(chosen) - beta * log sigmoid(log odds(c / |c|) - log odds(r / |r|))``, no reference
  (Hong et al., 2024);

where ``c``, ``r`` are the summed log-probabilities of the chosen and rejected completions; and, for
unpaired completions labelled desirable or not, :func:`kto_loss` (Ethayarajh et al., 2024; TRL's
``KTOTrainer``): ``1 - sigmoid(beta * (ratio - KL))`` for a desirable one, ``1 - sigmoid(beta * (KL -
ratio))`` for an undesirable one, where ``KL`` is the batch's mean policy/reference log-ratio on
mismatched completions, clamped at 0 and not differentiated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F

from lmforge.engine.fast import backbone_inputs, loss_chunk_rows, supports_hidden_state_loss

PreferenceLoss = Literal["dpo", "ipo", "simpo", "orpo"]
"""Paired losses of :func:`preference_loss`; KTO (unpaired) is :func:`kto_loss`."""
REFERENCE_FREE = ("simpo", "orpo")


class ChunkedTokenLogps(torch.autograd.Function):
    """``log_softmax(hidden @ weight.T)[row, target]`` per row, ``chunk`` rows at a time.

    The backward pass recomputes each chunk's logits rather than keeping them: peak extra memory is
    ``chunk x vocab`` fp32 in both passes. Softmax is computed in fp32 whatever the input dtype.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        matmul_dtype = hidden.dtype if hidden.dtype == weight.dtype else torch.float32
        chunk = chunk or loss_chunk_rows(matmul_dtype)
        w = weight.to(matmul_dtype)
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            logits = F.linear(hidden[start : start + chunk].to(matmul_dtype), w).float()
            rows = targets[start : start + chunk]
            out[start : start + chunk] = logits.gather(1, rows[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hidden, weight, targets = ctx.saved_tensors
        matmul_dtype = hidden.dtype if hidden.dtype == weight.dtype else torch.float32
        w = weight.to(matmul_dtype)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[start : start + ctx.chunk].to(matmul_dtype)
            rows = targets[start : start + ctx.chunk]
            g = grad_out[start : start + ctx.chunk].float()
            probs = torch.softmax(F.linear(h, w).float(), dim=-1)
            # d logp[target] / d logits = onehot(target) - softmax
            grad_logits = probs.mul_(-g[:, None])
            grad_logits[torch.arange(rows.shape[0], device=rows.device), rows] += g
            grad_logits = grad_logits.to(matmul_dtype)
            grad_hidden[start : start + ctx.chunk] = (grad_logits @ w).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += (grad_logits.t() @ h).float()
        return grad_hidden, grad_weight.to(weight.dtype) if grad_weight is not None else None, None, None


def sequence_logps(
    model: Any, batch: dict[str, torch.Tensor], chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each row's completion tokens, number of those tokens) for a batch with
    ``input_ids``, ``attention_mask`` and ``completion_mask`` (1 on completion tokens)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    targets_mask = batch["completion_mask"][:, 1:].bool() & batch["attention_mask"][:, 1:].bool()
    keep = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    keep[:, :-1] = targets_mask  # position i predicts token i + 1
    targets = batch["input_ids"][:, 1:][targets_mask]
    rows = keep.nonzero()[:, 0]
    forward_args = backbone_inputs(batch)
    if supports_hidden_state_loss(causal_lm):
        backbone = getattr(causal_lm, causal_lm.base_model_prefix)
        hidden = backbone(**forward_args).last_hidden_state[keep]
        token_logps = ChunkedTokenLogps.apply(hidden, causal_lm.get_output_embeddings().weight, targets, chunk or 0)
    else:
        logits = model(**forward_args).logits[keep].float()
        token_logps = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
    size = batch["input_ids"].shape[0]
    summed = torch.zeros(size, dtype=torch.float32, device=token_logps.device).index_add(0, rows, token_logps)
    counts = torch.zeros(size, dtype=torch.float32, device=token_logps.device).index_add(
        0, rows, torch.ones_like(token_logps)
    )
    return summed, counts


@contextlib.contextmanager
def adapter_off(model: Any) -> Iterator[None]:
    """The base model under a LoRA adapter: the reference policy without a second copy of the weights."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield
    else:
        yield


def reference_logps(model: Any, batch: dict[str, torch.Tensor], ref_model: Any | None = None) -> torch.Tensor:
    """Summed completion log-probabilities under the reference policy: ``ref_model`` when given, else
    ``model`` with its adapter switched off. No gradient."""
    with torch.no_grad():
        if ref_model is not None:
            return sequence_logps(ref_model, batch)[0]
        with adapter_off(model):
            return sequence_logps(model, batch)[0]


def preference_loss(
    kind: PreferenceLoss,
    logps: torch.Tensor,
    counts: torch.Tensor,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.1,
    simpo_gamma: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Each pair's loss for a batch laid out ``[chosen..., rejected...]``, and per-pair statistics
    (``margin``: the chosen minus rejected reward, ``accuracy``: margin > 0). The caller reduces (the
    stage sums and divides by the pairs of the whole optimizer step)."""
    chosen, rejected = logps.chunk(2)
    n_chosen, n_rejected = counts.clamp(min=1.0).chunk(2)
    if kind in REFERENCE_FREE:
        chosen_avg, rejected_avg = chosen / n_chosen, rejected / n_rejected
        if kind == "simpo":
            margin = beta * (chosen_avg - rejected_avg)
            losses = -F.logsigmoid(margin - simpo_gamma)  # gamma in reward units, as TRL's simpo_gamma
        else:  # orpo: log odds of the average token probability; the chosen NLL keeps the sft objective
            log_odds = (chosen_avg - rejected_avg) - (
                torch.log1p(-torch.exp(chosen_avg).clamp(max=1 - 1e-7))
                - torch.log1p(-torch.exp(rejected_avg).clamp(max=1 - 1e-7))
            )
            margin = log_odds
            losses = -chosen_avg - beta * F.logsigmoid(log_odds)
    else:
        if ref_logps is None:
            raise ValueError(f"loss {kind!r} needs the reference log-probabilities")
        ref_chosen, ref_rejected = ref_logps.chunk(2)
        chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
        if kind == "dpo":
            margin = beta * (chosen_ratio - rejected_ratio)
            losses = -F.logsigmoid(margin)
        else:  # ipo
            margin = chosen_ratio / n_chosen - rejected_ratio / n_rejected
            losses = (margin - 1 / (2 * beta)) ** 2
    stats = {"margin": margin.detach(), "accuracy": (margin.detach() > 0).float()}
    return losses, stats


def kto_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_logps: torch.Tensor,
    kl_ref_logps: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The KTO loss of each completion of a batch of unpaired ones (weighted; the caller reduces).

    Args:
        logps, ref_logps: summed completion log-probabilities under the policy and the reference.
        desirable: bool per completion (a KTO row's ``label``, ``meta.label`` in lmforge's records).
        kl_logps, kl_ref_logps: the same for mismatched prompt/completion pairs (each prompt with another
            row's completion), whose mean log-ratio is the reference point ``KL``.
    """
    kl = (kl_logps - kl_ref_logps).mean().detach().clamp(min=0)
    ratio = logps - ref_logps
    losses = torch.where(desirable, 1 - torch.sigmoid(beta * (ratio - kl)), 1 - torch.sigmoid(beta * (kl - ratio)))
    weights = torch.where(desirable, desirable_weight, undesirable_weight).to(losses.dtype)
    return weights * losses, {"kl": kl, "reward": (beta * ratio).detach()}
