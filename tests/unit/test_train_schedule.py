"""The ``auto`` learning rate and epochs of sft: what a small QA split and a small model get."""

from __future__ import annotations

import pytest

from lmforge.config import SFTSpec
from lmforge.engine import schedule

SMOLLM2 = {"hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536, "vocab_size": 49152}
SEVEN_B = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008, "vocab_size": 32000}


def test_a_small_split_gets_more_passes_and_a_large_one_three():
    assert schedule.auto_epochs(56) == 10.0  # the Debian QA set: 28 questions + 28 RAFT examples
    assert schedule.auto_epochs(150) == 4.0  # ceil(600 / 150)
    assert schedule.auto_epochs(200) == schedule.auto_epochs(50_000) == 3.0
    assert schedule.auto_epochs(0) == 10.0


def test_lora_on_a_small_model_gets_the_higher_rate():
    assert 100e6 < schedule.config_parameters(SMOLLM2) < 200e6  # SmolLM2-135M
    assert 6e9 < schedule.config_parameters(SEVEN_B) < 8e9
    assert schedule.auto_lr("lora", schedule.config_parameters(SMOLLM2)) == 1e-3
    assert schedule.auto_lr("lora", schedule.config_parameters(SEVEN_B)) == 2e-4
    assert schedule.auto_lr("full", schedule.config_parameters(SMOLLM2)) == 2e-4


def test_a_model_of_unknown_size_gets_the_conservative_rate():
    """A config without the usual keys (another family's names) is not taken for a small model: fail closed."""
    odd = {"dim": 4096, "depth": 32, "vocab_size": 50000}
    assert schedule.config_parameters(odd) == 0
    assert 100e6 < schedule.config_parameters({"n_embd": 768, "n_layer": 12, "vocab_size": 50257}) < 200e6  # GPT-2
    assert schedule.auto_lr("lora", 0) == schedule.LR == 2e-4
    assert schedule.resolved(SFTSpec(method="lora"), 100, 0).lr == 2e-4


def test_only_auto_values_are_replaced():
    spec = SFTSpec()
    assert (spec.lr, spec.epochs) == ("auto", "auto")
    done = schedule.resolved(spec, 56, 135_000_000)
    assert (done.lr, done.epochs) == (1e-3, 10.0) and spec.lr == "auto"
    given = SFTSpec(lr=5e-5, epochs=1)
    assert schedule.resolved(given, 56, 135_000_000) is given
    assert schedule.resolved(SFTSpec(epochs=2), 56, 135_000_000).epochs == 2


@pytest.mark.parametrize("bad", [0, -1e-4, "fast"])
def test_a_bad_lr_is_refused_naming_auto(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="auto"):
        SFTSpec(lr=bad)


def test_build_trainer_resolves_auto_for_the_split_and_model(tiny_tokenizer, tmp_path, capsys):
    from functools import partial

    from conftest import build_tiny_llama

    from lmforge.engine.fast import causal_lm_loss_sum, pad_batch
    from lmforge.engine.tokenize import TokenizedExample
    from lmforge.engine.trainer import build_trainer
    from lmforge.rundir import StageDir
    from lmforge.train.sft import ExampleDataset

    examples = [TokenizedExample([5, 6, 7, 8], [-100, 6, 7, 8], False) for _ in range(40)]
    trainer = build_trainer(
        model=build_tiny_llama(tiny_tokenizer), spec=SFTSpec(method="full", precision="fp32", report_to=[]), seed=0,
        stage=StageDir.open(tmp_path, "sft"), label="sft", train_dataset=ExampleDataset(examples), eval_dataset=None,
        collator=partial(pad_batch, pad_id=0), loss_sum=causal_lm_loss_sum,
    )  # fmt: skip
    assert trainer.args.learning_rate == schedule.LR  # full training keeps 2e-4 whatever the size
    assert trainer.args.num_train_epochs == schedule.auto_epochs(40) == 10.0
    assert "sft: lr 0.0002, 10 epochs over 40 examples (auto" in capsys.readouterr().out
