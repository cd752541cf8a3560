"""Preference losses: chunked log-probs equal full logits, DPO equals TRL's on the same batch, a step learns."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_llama

from lmforge.train import preference

PAIRS = [
    ("Which river crosses the capital?", "The Vesna river.", "I do not know, maybe a canal."),
    ("How long is the waiting period?", "Three days.", "Thirty days or so."),
    ("Who pays the sickness benefit?", "The insurance fund pays it.", "Nobody."),
]


def pair_batch(tokenizer, pairs=PAIRS) -> dict[str, torch.Tensor]:
    """[chosen..., rejected...] rows, right-padded, completion tokens marked (the prompt is the same)."""
    rows, masks = [], []
    for side in (1, 2):
        for pair in pairs:
            prompt = tokenizer(pair[0] + "\n")["input_ids"]
            completion = tokenizer(pair[side])["input_ids"] + [tokenizer.eos_token_id]
            rows.append(prompt + completion)
            masks.append([0] * len(prompt) + [1] * len(completion))
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "completion_mask": torch.tensor([m + [0] * (width - len(m)) for m in masks]),
    }


def naive_logps(model, batch) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    token = torch.log_softmax(logits, -1).gather(2, batch["input_ids"][:, 1:, None]).squeeze(2)
    return (token * (batch["completion_mask"][:, 1:] * batch["attention_mask"][:, 1:])).sum(1)


def test_chunked_token_logps_and_their_gradients_equal_full_logits():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 50, (37,), generator=g)
    upstream = torch.randn(37, generator=g)
    got = preference.ChunkedTokenLogps.apply(hidden, weight, targets, 8)
    (got * upstream).sum().backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    want = torch.log_softmax(hidden @ weight.T, -1).gather(1, targets[:, None]).squeeze(1)
    (want * upstream).sum().backward()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], hidden.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], weight.grad, atol=1e-5, rtol=1e-5)


def test_sequence_logps_count_only_completion_tokens(tiny_tokenizer):
    model = build_tiny_llama(tiny_tokenizer).eval()
    batch = pair_batch(tiny_tokenizer)
    summed, counts = preference.sequence_logps(model, batch, chunk=5)
    torch.testing.assert_close(summed, naive_logps(model, batch), atol=1e-4, rtol=1e-5)
    expected = (batch["completion_mask"][:, 1:] * batch["attention_mask"][:, 1:]).sum(1).float()
    assert torch.equal(counts, expected) and (counts > 0).all()


def test_losses_on_known_numbers():
    logps = torch.tensor([-2.0, -3.0, -4.0, -2.5])  # chosen -2, -3; rejected -4, -2.5
    counts = torch.tensor([2.0, 3.0, 4.0, 5.0])
    ref = torch.tensor([-3.0, -3.0, -3.0, -3.0])
    dpo, stats = preference.preference_loss("dpo", logps, counts, ref, beta=0.5)
    dpo = dpo.mean()
    margins = torch.tensor([0.5 * ((1.0) - (-1.0)), 0.5 * (0.0 - 0.5)])
    assert dpo.item() == pytest.approx((-torch.nn.functional.logsigmoid(margins)).mean().item())
    assert stats["accuracy"].tolist() == [1.0, 0.0]
    ipo = preference.preference_loss("ipo", logps, counts, ref, beta=0.5)[0].mean()
    deltas = torch.tensor([1.0 / 2 - (-1.0) / 4, 0.0 / 3 - 0.5 / 5])
    assert ipo.item() == pytest.approx(((deltas - 1.0) ** 2).mean().item())
    with pytest.raises(ValueError, match="reference"):
        preference.preference_loss("dpo", logps, counts)
    simpo = preference.preference_loss("simpo", logps, counts, beta=2.0, simpo_gamma=0.5)[0].mean()
    avg = torch.tensor([-1.0 - (-1.0), -1.0 - (-0.5)])
    assert simpo.item() == pytest.approx((-torch.nn.functional.logsigmoid(2.0 * avg - 0.5)).mean().item())


def test_the_simpo_loss_equals_trls_with_the_same_gamma():
    """TRL's CPOTrainer (loss_type simpo) on the same length-averaged log-probabilities: simpo_gamma means the
    same (a margin in reward units), so the losses agree for every beta."""
    from types import SimpleNamespace

    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    logps = torch.tensor([-3.0, -2.0, -4.0, -5.0, -1.5, -6.0])
    counts = torch.tensor([3.0, 2.0, 4.0, 4.0, 3.0, 5.0])
    chosen, rejected = (logps / counts).chunk(2)
    for beta, gamma in [(2.0, 1.0), (0.1, 0.5), (2.5, 1.4)]:
        trl_self = SimpleNamespace(
            alpha=0.0, loss_type="simpo", simpo_gamma=gamma, beta=beta, label_smoothing=0.0,
            accelerator=SimpleNamespace(device="cpu"),
        )  # fmt: skip
        trl_losses = CPOTrainer.cpo_loss(trl_self, chosen, rejected)[0]
        ours = preference.preference_loss("simpo", logps, counts, beta=beta, simpo_gamma=gamma)[0]
        assert torch.allclose(ours, trl_losses, atol=1e-6), (beta, gamma, ours, trl_losses)


def test_each_loss_has_its_own_default_beta():
    from lmforge.config import DPOSpec

    assert DPOSpec(loss="dpo").beta == 0.1 and DPOSpec(loss="kto").beta == 0.1
    assert DPOSpec(loss="simpo").beta == 2.0 and DPOSpec(loss="simpo").simpo_gamma == 1.0
    assert DPOSpec(loss="simpo", beta=0.5).beta == 0.5


def test_the_dpo_loss_equals_trl_on_the_same_batch(tiny_tokenizer, tmp_path):
    import trl  # a dev dependency: this test must run, not skip
    from datasets import Dataset

    policy = build_tiny_llama(tiny_tokenizer, seed=0)
    reference = build_tiny_llama(tiny_tokenizer, seed=1)  # a different reference: the ratios are not zero
    rows = [{"prompt": p + "\n", "chosen": c, "rejected": r} for p, c, r in PAIRS]
    config = trl.DPOConfig(
        output_dir=str(tmp_path), beta=0.3, per_device_train_batch_size=3, report_to=[], use_cpu=True,
        max_length=None, bf16=False,
    )  # fmt: skip
    trainer = trl.DPOTrainer(
        model=policy, ref_model=reference, args=config, train_dataset=Dataset.from_list(rows),
        processing_class=tiny_tokenizer,
    )  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()  # no dropout (there is none; the mode decides TRL's metric names only)
    trl_loss = trainer._compute_loss(trainer.model, batch, return_outputs=False)
    ours_batch = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    logps, counts = preference.sequence_logps(trainer.model, ours_batch)
    ref_logps = preference.reference_logps(trainer.model, ours_batch, ref_model=trainer.ref_model)
    ours = preference.preference_loss("dpo", logps, counts, ref_logps, beta=0.3)[0].mean()
    assert abs(ours.item() - float(trl_loss)) < 1e-5, (ours.item(), float(trl_loss))
    assert abs(ours.item() - 0.6931) > 1e-3  # not the trivial log 2 of identical policies


def test_one_dpo_step_widens_the_margin_with_the_adapter_as_its_own_reference(tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        build_tiny_llama(tiny_tokenizer), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
    )
    batch = pair_batch(tiny_tokenizer)
    ref = preference.reference_logps(model, batch)
    logps, counts = preference.sequence_logps(model, batch)
    torch.testing.assert_close(logps.detach(), ref)  # a fresh adapter (B = 0) is the base model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    before = None
    for _ in range(3):
        logps, counts = preference.sequence_logps(model, batch)
        losses, stats = preference.preference_loss("dpo", logps, counts, ref, beta=0.1)
        loss = losses.mean()
        before = stats["margin"].mean().item() if before is None else before
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = preference.preference_loss("dpo", *preference.sequence_logps(model, batch), ref, beta=0.1)[1]
    assert after["margin"].mean().item() > before + 1e-3
    torch.testing.assert_close(preference.reference_logps(model, batch), ref)  # the reference did not move


def test_kto_pushes_desirable_completions_up_and_the_others_down_against_the_kl_baseline():
    logps = torch.tensor([-2.0, -5.0, -3.0], requires_grad=True)
    ref = torch.tensor([-3.0, -4.0, -3.0])
    desirable = torch.tensor([True, False, True])
    kl_logps, kl_ref = torch.tensor([-6.0, -7.0]), torch.tensor([-6.5, -7.5])  # KL = 0.5
    losses, stats = preference.kto_loss(logps, ref, desirable, kl_logps, kl_ref, beta=0.2, undesirable_weight=2.0)
    loss = losses.mean()
    assert stats["kl"].item() == pytest.approx(0.5)

    def sig(x: float) -> float:
        return torch.sigmoid(torch.tensor(x)).item()

    # desirable, ratio 1: 1 - sig(0.2 (1 - 0.5)); undesirable (weight 2), ratio -1: 2 (1 - sig(0.2 (0.5 + 1)));
    # desirable, ratio 0: 1 - sig(0.2 (0 - 0.5))
    expected = (1 - sig(0.1)) + 2 * (1 - sig(0.3)) + (1 - sig(-0.1))
    assert loss.item() == pytest.approx(expected / 3, rel=1e-6)
    loss.backward()
    assert logps.grad[0] < 0 and logps.grad[2] < 0 and logps.grad[1] > 0  # descent raises 0 and 2, lowers 1
    negative = preference.kto_loss(logps, ref, desirable, kl_ref, kl_logps)[1]["kl"]
    assert negative.item() == 0.0  # the baseline is clamped at zero


def test_the_kto_loss_equals_trl_on_the_same_batch(tiny_tokenizer, tmp_path):
    import trl  # a dev dependency: this test must run, not skip
    from datasets import Dataset

    policy = build_tiny_llama(tiny_tokenizer, seed=0)
    reference = build_tiny_llama(tiny_tokenizer, seed=1)
    rows = [
        {"prompt": p + "\n", "completion": answer, "label": label}
        for p, chosen, rejected in PAIRS
        for answer, label in ((chosen, True), (rejected, False))
    ]
    config = trl.KTOConfig(
        output_dir=str(tmp_path), beta=0.3, per_device_train_batch_size=len(rows), report_to=[], use_cpu=True,
        bf16=False, desirable_weight=1.0, undesirable_weight=1.5,
    )  # fmt: skip
    trainer = trl.KTOTrainer(
        model=policy, ref_model=reference, args=config, train_dataset=Dataset.from_list(rows),
        processing_class=tiny_tokenizer,
    )  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    trl_loss = float(trainer._compute_loss(trainer.model, batch, return_outputs=False))
    rows_of = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    kl_of = {
        "input_ids": batch["KL_input_ids"],
        "attention_mask": batch["KL_attention_mask"],
        "completion_mask": batch["KL_completion_mask"],
    }
    with torch.no_grad():
        logps = preference.sequence_logps(trainer.model, rows_of)[0]
        ref = preference.reference_logps(trainer.model, rows_of, ref_model=trainer.ref_model)
        kl_logps = preference.sequence_logps(trainer.model, kl_of)[0]
        kl_ref = preference.reference_logps(trainer.model, kl_of, ref_model=trainer.ref_model)
    desirable = torch.as_tensor(batch["label"], dtype=torch.bool)
    losses, _ = preference.kto_loss(logps, ref, desirable, kl_logps, kl_ref, beta=0.3, undesirable_weight=1.5)
    assert abs(losses.mean().item() - trl_loss) < 1e-5, (losses.mean().item(), trl_loss)
