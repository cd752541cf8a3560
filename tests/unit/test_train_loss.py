"""Loss normalisation across micro-batches, the distillation loss, seeded data order and MLM masking."""

from functools import partial

import pytest
import torch

from lmforge.config import SFTSpec
from lmforge.engine.batches import EpochSeededLengthSampler
from lmforge.engine.fast import causal_lm_loss_sum, pad_batch
from lmforge.engine.tokenize import IGNORE, TokenizedExample
from lmforge.engine.trainer import build_trainer
from lmforge.rundir import StageDir
from lmforge.train.distill import distill_loss_sum
from lmforge.train.mlm import EpochTaggedSampler, MaskedRows, mask_tokens
from lmforge.train.sft import ExampleDataset


def example(ids: list[int], trained_from: int) -> TokenizedExample:
    return TokenizedExample(input_ids=ids, labels=[IGNORE] * trained_from + ids[trained_from:], truncated=False)


def step_gradients(model_factory, examples, batch_size: int, grad_accum: int, tmp_path) -> dict[str, torch.Tensor]:
    """Gradients of the first optimizer step (before clipping) for the given batching."""
    from transformers import TrainerCallback

    spec = SFTSpec(
        method="full", batch_size=batch_size, grad_accum=grad_accum, max_steps=1, lr=1e-3,
        max_grad_norm=1e6, precision="fp32", report_to=[], warmup_ratio=0.0,
    )  # fmt: skip
    grads: dict[str, torch.Tensor] = {}

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})

    trainer = build_trainer(
        model=model_factory(),
        spec=spec,
        seed=0,
        stage=StageDir.open(tmp_path / f"bs{batch_size}", "sft"),
        label="test",
        train_dataset=ExampleDataset(examples),
        eval_dataset=None,
        collator=partial(pad_batch, pad_id=0),
        loss_sum=causal_lm_loss_sum,
        sampling="random",
        loss_shifts_labels=True,
    )
    trainer.add_callback(Capture())
    trainer.train()
    return grads


def test_gradient_accumulation_weighs_micro_batches_by_their_tokens(tmp_path, tiny_tokenizer):
    from conftest import build_tiny_llama

    short = example([11, 12, 13, 14], trained_from=2)  # 2 trained tokens
    long = example(list(range(20, 60)), trained_from=2)  # 38 trained tokens
    factory = partial(build_tiny_llama, tiny_tokenizer, 0)
    together = step_gradients(factory, [short, long], batch_size=2, grad_accum=1, tmp_path=tmp_path)
    accumulated = step_gradients(factory, [short, long], batch_size=1, grad_accum=2, tmp_path=tmp_path)
    assert together.keys() == accumulated.keys()
    for name in together:
        torch.testing.assert_close(accumulated[name], together[name], atol=1e-6, rtol=1e-4)

    # The reference: one per-token mean over all 40 trained tokens; a mean of the two micro-batch
    # means (what naive accumulation computes) weighs the 2 short tokens like the 38 long ones.
    model = factory()
    batches = [pad_batch([{"input_ids": e.input_ids, "labels": e.labels}], 0) for e in (short, long)]
    sums = [causal_lm_loss_sum(model, batch) for batch in batches]
    per_token = (sums[0][0] + sums[1][0]) / (sums[0][1] + sums[1][1])
    naive = (sums[0][0] / sums[0][1] + sums[1][0] / sums[1][1]) / 2
    name = "model.embed_tokens.weight"
    want = torch.autograd.grad(per_token, dict(model.named_parameters())[name], retain_graph=True)[0]
    wrong = torch.autograd.grad(naive, dict(model.named_parameters())[name])[0]
    torch.testing.assert_close(accumulated[name], want, atol=1e-6, rtol=1e-4)
    assert not torch.allclose(accumulated[name], wrong, atol=1e-5)


def test_distill_loss_mixes_cross_entropy_and_kl(tiny_tokenizer):
    from conftest import build_tiny_llama

    torch.manual_seed(0)
    model = build_tiny_llama(tiny_tokenizer).eval()
    ids = torch.randint(5, 300, (2, 9))
    labels = ids.clone()
    labels[:, :4] = IGNORE
    batch = {"input_ids": ids, "labels": labels}
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1][labels[:, 1:] != IGNORE]
    vocab = logits.shape[-1]
    own = torch.log_softmax(logits, dim=-1).topk(vocab, dim=-1)  # the student as its own teacher, full support
    with torch.no_grad():
        ce, n = causal_lm_loss_sum(model, batch)
        batch.update(teacher_ids=own.indices, teacher_lp=own.values)
        only_ce, _ = distill_loss_sum(model, batch, alpha=0.0, temperature=1.0)
        no_gap, count = distill_loss_sum(model, batch, alpha=1.0, temperature=2.0)
    assert count == n == 10
    torch.testing.assert_close(only_ce, ce, atol=1e-3, rtol=1e-5)
    assert abs(float(no_gap)) < 1e-3  # KL(p || p) = 0
    sharp = torch.full_like(own.values, -30.0)
    sharp[:, -1] = 0.0  # a teacher sure of the token the student finds least likely
    with torch.no_grad():
        gap, _ = distill_loss_sum(model, {**batch, "teacher_lp": sharp}, alpha=1.0, temperature=1.0)
    assert float(gap) > 10 * 5.0  # 10 positions, each -log p_student(least likely token) > ln(vocab ~400)


def test_epoch_seeded_length_sampler_is_a_function_of_the_epoch():
    lengths = [5, 60, 7, 33, 12, 90, 41, 3, 18, 27]
    sampler = EpochSeededLengthSampler(lengths, batch_size=2, seed=0)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and first == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_masking_draws_per_row_and_never_masks_special_tokens():
    ids = torch.tensor([2, *range(10, 210), 3])
    generator = torch.Generator().manual_seed(0)
    masked, labels = mask_tokens(ids, 0.3, mask_id=4, vocab_size=300, special_ids=[0, 2, 3, 4], generator=generator)
    chosen = labels != IGNORE
    assert not chosen[0] and not chosen[-1]
    assert 40 <= int(chosen.sum()) <= 80  # about 30% of 200
    assert torch.equal(labels[chosen], ids[chosen])
    assert (masked[chosen] == 4).float().mean() > 0.6 and torch.equal(masked[~chosen], ids[~chosen])

    class Tok:
        mask_token_id, all_special_ids = 4, [0, 2, 3, 4]

        def __len__(self):
            return 300

    rows = MaskedRows([ids.tolist()] * 3, Tok(), 0.3, seed=5)
    assert rows[4] == rows[4] and rows[4] != rows[1]  # key 4 = epoch 1, row 1: masked afresh
    sampler = EpochTaggedSampler(3, seed=5)
    sampler.set_epoch(2)
    assert sorted(sampler) == [6, 7, 8]


@pytest.mark.parametrize("bad", [{"optimizer": "paged_adamw_8bit"}, {"quantization": "4bit"}])
def test_cuda_only_settings_fail_clearly_on_cpu(bad):
    from lmforge.engine.compute import check_training_setup
    from lmforge.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA GPU") as caught:
        check_training_setup(SFTSpec(**bad, report_to=["tensorboard"]), "sft", "recipe 'x'")
    assert f"sft.{next(iter(bad))}" in str(caught.value)
