"""Thread settings and ``torch.compile`` of the training stages (``TrainSpec.compile``)."""

import torch

from lmforge.train import trainer
from lmforge.train.fast import causal_lm_loss_sum


def test_threads_follow_usable_cores_unless_the_user_chose(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        monkeypatch.setattr(trainer, "usable_cores", lambda: 1)
        monkeypatch.setattr(trainer, "_default_thread_counts", lambda: {before})
        assert trainer.configure_threads() == 1 and torch.get_num_threads() == 1
        # torch's count is now 1, not one torch picks by itself: treated as the user's choice
        monkeypatch.setattr(trainer, "usable_cores", lambda: 2)
        assert trainer.configure_threads() == 1
        torch.set_num_threads(before)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the environment wins
        assert trainer.configure_threads() == before and torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_usable_cores_is_within_the_affinity():
    import os

    assert 1 <= trainer.usable_cores() <= len(os.sched_getaffinity(0))


def test_compile_blocks_compiles_each_layer_and_reports_the_time(tiny_tokenizer):
    from conftest import build_tiny_llama
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_tiny_llama(tiny_tokenizer), LoraConfig(r=4, target_modules="all-linear"))
    ids = torch.randint(3, len(tiny_tokenizer), (2, 12))
    batch = {"input_ids": ids, "labels": ids.clone()}
    expected, _ = causal_lm_loss_sum(model, batch)
    # The eager backend runs dynamo's capture without code generation: fast enough for the unit tier.
    assert trainer.compile_blocks(model, "test", backend="eager") == 2
    layers = model.get_base_model().model.layers
    assert all(layer._compiled_call_impl is not None for layer in layers)
    loss, _ = causal_lm_loss_sum(model, batch)
    loss.backward()
    torch.testing.assert_close(loss, expected)
    assert trainer.compile_seconds() > 0
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)
