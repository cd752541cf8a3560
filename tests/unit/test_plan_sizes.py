"""``lmforge plan`` and ``lr: auto`` on the real sizes people fine-tune (0.1B-8B), from published configs only."""

from __future__ import annotations

import pytest
import torch

from lmforge.config import SFTSpec
from lmforge.engine.schedule import auto_lr, config_parameters
from lmforge.engine.shape import ModelShape
from lmforge.perf.plan import GPU_EFFICIENCY, Batches, Hardware, estimate_memory, plan_stage
from lmforge.perf.sizes import PUBLISHED, model_config

GB = 1024.0  # MB per GiB


def _meta_count(config: dict) -> int:
    """Parameters of the model transformers builds from ``config`` (the reference), on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config["model_type"], **kwargs))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_shapes_give_the_published_sizes(name):
    config = model_config(name)
    reference = _meta_count(config)
    assert reference == PUBLISHED[name]["params"]  # the shape keys are transcribed right
    shape = ModelShape.from_config(config)
    assert abs(shape.params - reference) / reference < 1e-3  # biases and extra norms are the difference
    assert config_parameters(config) == shape.params  # lr: auto reads the same size


TINY = {
    "qwen2": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2},
    "gemma2": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "head_dim": 32},
    "phi3": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "pad_token_id": 0},
    "gpt2": {"n_embd": 64, "n_head": 4, "n_positions": 128, "n_layer": 2},
    "gpt_neox": {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4},
}


@pytest.mark.parametrize("family", list(TINY))
def test_adapter_size_matches_peft_on_fused_plain_and_wide_head_families(family):
    """Phi-3 and GPT-2 fuse q, k and v (one adapter, not three); GPT-2 and GPT-NeoX have no gate; Gemma's
    heads are wider than its hidden size: the adapter plan counts must equal what peft creates."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(family, num_hidden_layers=2, vocab_size=300, **TINY[family])
    model = AutoModelForCausalLM.from_config(config)
    adapted = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    shape = ModelShape.from_config({"model_type": family, **config.to_dict()})
    assert shape.lora_params(4) == trainable


def _plan(name: str, method: str, hardware: Hardware, quantization: str = "none"):
    shape = ModelShape.from_config(model_config(name))
    settings = {"precision": "bf16", "batch_size": 4, "max_length": 512, "gradient_checkpointing": True}
    spec = SFTSpec(method=method, quantization=quantization, **settings)
    batches = Batches(4 * 512, 512, 4, 3 * 1000 * 300, 1000)  # 1,000 examples of ~300 tokens, 3 epochs
    return plan_stage("sft", shape, spec, batches, hardware, bf16=True, kernel="sdpa")


def _fits(plan) -> bool:
    return not any("will not fit" in w for w in plan.warnings)


@pytest.mark.parametrize(
    ("name", "on_l4", "on_h100"),
    [
        # (model, what fits one 24 GB L4, what fits one 80 GB H100)
        ("qwen2.5-0.5b", {"qlora", "lora", "full"}, {"qlora", "lora", "full"}),
        ("llama-3.2-3b", {"qlora", "lora"}, {"qlora", "lora", "full"}),
        ("llama-3.1-8b", {"qlora", "lora"}, {"qlora", "lora"}),
    ],
)
def test_what_fits_one_gpu_per_size_class(name, on_l4, on_h100):
    """The usual rules of thumb (QLoRA paper, peers' hardware tables), activation checkpointing on: an 8B model
    takes QLoRA (~9 GB) or bf16 LoRA (~19 GB: 16 GB of weights) on a 24 GB card, and full fine-tuning with
    AdamW (16+ bytes a weight) on neither card; a 3B model fully fine-tunes on 80 GB, not on 24."""
    arms = {"qlora": ("lora", "4bit"), "lora": ("lora", "none"), "full": ("full", "none")}
    for gpu, expected in (("L4", on_l4), ("H100", on_h100)):
        plans = {arm: _plan(name, method, Hardware.gpu(gpu), q) for arm, (method, q) in arms.items()}
        peaks = {arm: plan.peak_mb for arm, plan in plans.items()}
        assert {arm for arm, plan in plans.items() if _fits(plan)} == expected, (gpu, peaks)
        assert plans["qlora"].peak_mb < plans["lora"].peak_mb < plans["full"].peak_mb


def test_quantized_weights_take_what_nf4_takes():
    """8B in NF4 with double quantization: ~4.13 bits per block weight, embeddings and output head in bf16."""
    shape = ModelShape.from_config(model_config("llama-3.1-8b"))
    spec = SFTSpec(method="lora", quantization="4bit", precision="bf16")
    batches = Batches(2048, 512, 4, 10**6, 100)
    memory = estimate_memory(shape, spec, batches, bf16=True, kernel="sdpa", hardware_device="cuda")
    embeddings = 2 * 128256 * 4096 * 2 / 1024**2
    assert 4.5 * GB < memory["weights"] < 6.0 * GB
    assert memory["weights"] > embeddings  # the embeddings stay in bf16
    lora = estimate_memory(shape, SFTSpec(method="lora", precision="bf16"), batches, True, "sdpa", "cuda")
    assert 14.5 * GB < lora["weights"] < 15.5 * GB  # 8.03B x 2 bytes + the adapter in fp32


def test_gpu_time_is_an_assumption_scaled_by_the_cards_peak():
    h100, l4 = _plan("qwen2.5-7b", "lora", Hardware.gpu("H100")), _plan("qwen2.5-7b", "lora", Hardware.gpu("l4"))
    assert h100.seconds and l4.seconds and l4.seconds / h100.seconds == pytest.approx(989 / 121)
    assert 0 < GPU_EFFICIENCY < 1
    with pytest.raises(ValueError, match="unknown GPU 'B9000'; known: H200"):
        Hardware.gpu("B9000")


def test_lr_auto_tells_small_models_from_large_ones_in_every_family():
    assert auto_lr("lora", config_parameters(model_config("gpt2"))) == 1e-3  # GPT-2's own key names
    assert auto_lr("lora", config_parameters(model_config("qwen2.5-0.5b"))) == 1e-3
    for name in ("llama-3.2-1b", "gemma-2-2b", "phi-3-mini", "llama-3.1-8b"):
        assert auto_lr("lora", config_parameters(model_config(name))) == 2e-4, name
    wrapped = {"model_type": "gemma3", "text_config": model_config("gemma-2-2b")}  # Gemma 3: the LM in text_config
    assert config_parameters(wrapped) == ModelShape.from_config(model_config("gemma-2-2b")).params
    assert config_parameters({"model_type": "mystery"}) == 0  # unreadable: the conservative rate
    assert auto_lr("lora", 0) == 2e-4


def test_plan_cli_for_a_model_and_a_gpu_this_machine_does_not_have(tiny_recipe, tmp_path):
    from typer.testing import CliRunner

    from lmforge.cli import app

    args = ["plan", str(tiny_recipe), "--model-config", "llama-3.1-8b", "--gpu", "L4"]
    result = CliRunner().invoke(app, [*args, "--set", "sft.method=full", "--set", "sft.precision=bf16"])
    assert result.exit_code == 0, result.output
    assert "L4: 24.0 GiB available" in result.output and "assumed" in result.output
    assert "will not fit" in result.output
    config = tmp_path / "config.json"
    config.write_text('{"model_type": "qwen2", "hidden_size": 64}')  # no layer count
    result = CliRunner().invoke(app, ["plan", str(tiny_recipe), "--model-config", str(config)])
    assert result.exit_code == 2 and "no num_hidden_layers, vocab_size" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["plan", str(tiny_recipe), "--model-config", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "neither a file nor a known model" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["plan", str(tiny_recipe), "--gpu", "B9000"])
    assert result.exit_code == 2 and "unknown GPU" in result.output
