"""Token-budget micro-batches: a step keeps its examples, cut into passes that fit the budget, and
trains exactly as the uncut step does."""

from __future__ import annotations

import itertools
from functools import partial

import pytest
import torch

from lmforge.config import SFTSpec
from lmforge.engine import budget
from lmforge.engine.batches import StepBatches, even_parts
from lmforge.engine.fast import causal_lm_loss_sum, pad_batch
from lmforge.engine.tokenize import IGNORE, TokenizedExample
from lmforge.engine.trainer import build_trainer
from lmforge.rundir import StageDir
from lmforge.train.sft import ExampleDataset

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30}


def steps_of(plan: list[list[int]], passes: int) -> list[list[int]]:
    return [sorted(i for batch in plan[s : s + passes] for i in batch if i >= 0) for s in range(0, len(plan), passes)]


CASES = [(13, 4, 1, 2), (13, 4, 2, 3), (5, 8, 1, 4), (8, 3, 1, 5)]


@pytest.mark.parametrize(("n", "per_device", "accum", "pieces"), CASES)
def test_pieces_keep_every_step_and_fit_the_rows(n, per_device, accum, pieces):
    lengths = [(7 * i) % 11 + 1 for i in range(n)]
    whole = StepBatches(range(n), per_device, accum).plan()
    cut = StepBatches(range(n), per_device, accum, pieces=pieces, lengths=lengths).plan()
    assert len(cut) == len(StepBatches(range(n), per_device, accum, pieces=pieces, lengths=lengths))
    assert len(cut) == len(whole) * pieces
    assert steps_of(cut, accum * pieces) == steps_of(whole, accum)
    assert max(len(batch) for batch in cut) <= -(-per_device // pieces)
    assert sorted(i for i in itertools.chain.from_iterable(cut) if i >= 0) == list(range(n))
    for batch in cut:  # an empty pass is a filler: the step's shortest example, labels ignored later
        if batch[0] < 0:
            assert len(batch) == 1


def test_long_rows_go_together_in_the_smallest_passes():
    lengths = [10, 900, 12, 800, 11, 13]
    plan = StepBatches(range(6), 6, 1, pieces=4, lengths=lengths).plan()
    assert plan[0] == [1] and plan[1] == [3]  # the two long rows alone
    assert sorted(plan[2] + plan[3]) == [0, 2, 4, 5]
    assert even_parts([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4, 5]]


def test_the_budget_cuts_rows_to_fit_and_says_why():
    auto = budget.micro_batching(2000, 8, [100] * 5 + [650], False, SMOLLM2, False, 32)
    assert auto.rows == 3 and auto.budget == 2000
    assert "3 micro-batches of <= 3" in auto.reason
    alone = budget.micro_batching(500, 8, [100, 650], False, SMOLLM2, False, 32)
    assert alone.rows == 1 and "trains alone" in alone.reason
    off = budget.micro_batching("off", 8, [650] * 8, False, SMOLLM2, False, 32)
    assert off.rows == 8 and off.budget is None
    short = budget.micro_batching(2000, 16, [80] * 40, False, SMOLLM2, False, 32)
    assert short.rows == 16  # demo-sized rows are not cut


def test_auto_follows_free_memory_and_the_cap(monkeypatch):
    per_token = budget.activation_bytes_per_token(SMOLLM2, False, 32)
    assert 1.5e6 < per_token < 2.0e6  # ~1.75 MB per token in fp32 over SmolLM2's 30 layers, heap slack included
    monkeypatch.setattr(budget, "free_memory_mb", lambda: 4096.0)
    small, why = budget.token_budget("auto", SMOLLM2, False, 32)
    assert small == int(1024 * budget.MB / per_token) and "4.0 GiB free" in why
    monkeypatch.setattr(budget, "free_memory_mb", lambda: 64 * 1024.0)
    big, _ = budget.token_budget("auto", SMOLLM2, False, 32)
    assert big == int(budget.AUTO_ACTIVATION_CAP_MB * budget.MB / per_token)
    bf16, _ = budget.token_budget("auto", SMOLLM2, True, 32)
    assert bf16 > big  # bf16 activations take less memory per token
    monkeypatch.setattr(budget, "free_memory_mb", lambda: 10.0)
    assert budget.token_budget("auto", SMOLLM2, False, 32)[0] == budget.MIN_AUTO_TOKENS


def test_a_gpu_gives_activations_their_share_of_free_memory_without_the_cpus_cap():
    """The 2 GB cap is a CPU measurement (no faster past ~2k tokens); a GPU with 60 GB free gets a quarter."""
    per_token = budget.activation_bytes_per_token(SMOLLM2, True, 32)
    gpu, _ = budget.token_budget("auto", SMOLLM2, True, 32, free_mb=60 * 1024.0, device="cuda")
    cpu, _ = budget.token_budget("auto", SMOLLM2, True, 32, free_mb=60 * 1024.0, device="cpu")
    assert gpu == int(0.25 * 60 * 1024 * budget.MB / per_token) > 7 * cpu
    assert cpu == int(budget.AUTO_ACTIVATION_CAP_MB * budget.MB / per_token)


def test_the_recipe_key_takes_a_number_auto_or_off():
    assert SFTSpec().micro_batch_tokens == "auto"
    assert SFTSpec(micro_batch_tokens=4096).micro_batch_tokens == 4096
    assert SFTSpec(micro_batch_tokens="off").micro_batch_tokens == "off"
    assert SFTSpec(micro_batch_tokens=False).micro_batch_tokens == "off"  # YAML's bare `off`
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        SFTSpec(micro_batch_tokens="lots")
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        SFTSpec(micro_batch_tokens=8)


def losses_and_weights(tiny_tokenizer, tmp_path, examples, rows: int | None, name: str):
    from conftest import build_tiny_llama

    spec = SFTSpec(
        method="full", batch_size=4, max_steps=3, lr=1e-2, precision="fp32", report_to=[], warmup_ratio=0.0,
        logging_steps=1, micro_batch_tokens="off",
    )  # fmt: skip
    micro = None if rows is None else budget.MicroBatching(rows * 40, rows, "test")
    model = build_tiny_llama(tiny_tokenizer, 0)
    trainer = build_trainer(
        model=model, spec=spec, seed=0, stage=StageDir.open(tmp_path / name, "sft"), label="test",
        train_dataset=ExampleDataset(examples), eval_dataset=None, collator=partial(pad_batch, pad_id=0),
        loss_sum=causal_lm_loss_sum, sampling="group_by_length", loss_shifts_labels=True, micro_batching=micro,
    )  # fmt: skip
    sizes: list[int] = []
    collate = trainer.data_collator

    def counting(items):
        sizes.append(len(items))
        return collate(items)

    trainer.data_collator = counting
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}, sizes, trainer


def test_a_budget_trains_the_same_steps_as_whole_micro_batches(tmp_path, tiny_tokenizer):
    """Same losses and weights (fp32, within float noise) with 4-row micro-batches or 1-2 row passes."""
    g = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(12):
        n = int(torch.randint(6, 30, (1,), generator=g))
        ids = torch.randint(3, 200, (n,), generator=g).tolist()
        examples.append(TokenizedExample(input_ids=ids, labels=[IGNORE] * 3 + ids[3:], truncated=False))
    whole, whole_weights, whole_sizes, _ = losses_and_weights(tiny_tokenizer, tmp_path, examples, None, "whole")
    cut, cut_weights, cut_sizes, trainer = losses_and_weights(tiny_tokenizer, tmp_path, examples, 2, "cut")
    assert max(whole_sizes) == 4 and max(cut_sizes) == 2
    assert trainer.args.gradient_accumulation_steps == 2 and trainer.state.global_step == 3
    assert len(whole) == len(cut) == 3
    for a, b in zip(whole, cut, strict=True):
        assert abs(a - b) < 1e-5
    for name, weight in whole_weights.items():
        # Adam divides by sqrt(v): where a gradient is near zero, float noise of the summation order (oneDNN's
        # AMX kernels sum in another order than AVX2's) moves a weight by up to ~1% of lr (1e-2); a wrong
        # split of the step would move weights by lr-sized amounts everywhere.
        torch.testing.assert_close(cut_weights[name], weight, atol=1e-4, rtol=1e-4)
    assert trainer.layout.as_manifest()["passes_per_step"] == 2


def test_the_budget_counts_only_the_blocks_that_keep_activations():
    lora = SFTSpec(lora={"r": 32, "top_layers": 20})
    assert budget.backward_config(SMOLLM2, lora)["num_hidden_layers"] == 20
    assert budget.backward_config(SMOLLM2, SFTSpec())["num_hidden_layers"] == SMOLLM2["num_hidden_layers"]
    checkpointed = SFTSpec(lora={"r": 32, "top_layers": 20}, gradient_checkpointing=True)
    assert budget.backward_config(SMOLLM2, checkpointed) is SMOLLM2
    whole = budget.token_budget(100_000, SMOLLM2, False, 32)[0]
    assert whole == 100_000  # a number is taken as it is; auto scales with the kept blocks:
    every = budget.token_budget("auto", SMOLLM2, False, 32, free_mb=64 * 1024.0)[0]
    top = budget.token_budget("auto", budget.backward_config(SMOLLM2, lora), False, 32, free_mb=64 * 1024.0)[0]
    assert abs(top / every - 30 / 20) < 0.01
