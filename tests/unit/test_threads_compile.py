"""Thread settings and ``torch.compile`` of the training stages (``TrainSpec.compile``)."""

import pytest
import torch

from lmforge.engine import compute
from lmforge.engine.fast import causal_lm_loss_sum


def test_threads_follow_usable_cores_unless_the_user_chose(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        monkeypatch.setattr(compute, "usable_cores", lambda: 1)
        monkeypatch.setattr(compute, "_default_thread_counts", lambda: {before})
        assert compute.configure_threads() == 1 and torch.get_num_threads() == 1
        # torch's count is now 1, not one torch picks by itself: treated as the user's choice
        monkeypatch.setattr(compute, "usable_cores", lambda: 2)
        assert compute.configure_threads() == 1
        torch.set_num_threads(before)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the environment wins
        assert compute.configure_threads() == before and torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_usable_cores_is_within_the_affinity():
    import os

    assert 1 <= compute.usable_cores() <= len(os.sched_getaffinity(0))


def test_compile_blocks_compiles_each_layer_and_reports_the_time(tiny_tokenizer):
    from conftest import build_tiny_llama
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_tiny_llama(tiny_tokenizer), LoraConfig(r=4, target_modules="all-linear"))
    ids = torch.randint(3, len(tiny_tokenizer), (2, 12))
    batch = {"input_ids": ids, "labels": ids.clone()}
    expected, _ = causal_lm_loss_sum(model, batch)
    # The eager backend runs dynamo's capture without code generation: fast enough for the unit tier.
    assert compute.compile_blocks(model, "test", backend="eager") == 2
    layers = model.get_base_model().model.layers
    assert all(layer._compiled_call_impl is not None for layer in layers)
    loss, _ = causal_lm_loss_sum(model, batch)
    loss.backward()
    torch.testing.assert_close(loss, expected)
    assert compute.compile_seconds() > 0
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)


def test_release_free_memory_returns_freed_heap_pages_to_the_system():
    import subprocess
    import sys
    import textwrap

    # 2,000 blocks of 100 KB on the heap, nine in ten freed: the holes stay in the process until trimmed.
    script = textwrap.dedent(
        """
        import os
        from lmforge.hardware import release_free_memory
        def rss_mb():
            return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        blocks = [bytearray(100_000) for _ in range(2000)]
        blocks = blocks[::10]
        before = rss_mb()
        released = release_free_memory()
        print(released, before - rss_mb())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "True" and float(out[1]) > 100, out


@pytest.mark.parametrize(
    ("flags", "onednn", "aten", "isa", "bf16"),
    [
        ({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, None, None, "amx", True),
        ({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "AVX2", "avx2", "avx2", False),  # an AMX box posing as AVX2
        ({"avx2", "avx512f", "avx512_bf16"}, "AVX512_CORE", None, "avx512", False),
        ({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, None, "default", "other", False),
        ({"avx2"}, "AVX512_CORE_AMX", None, "avx2", False),  # a cap never raises what the CPU has
    ],
)
def test_the_cpu_path_follows_its_flags_and_the_isa_caps(monkeypatch, flags, onednn, aten, isa, bf16):
    from lmforge import hardware
    from lmforge.models import cpu_supports_bf16

    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    for name, value in (("ONEDNN_MAX_CPU_ISA", onednn), ("ATEN_CPU_CAPABILITY", aten)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert hardware.cpu_isa() == isa
    assert cpu_supports_bf16() is bf16 and hardware.peak_precision() == ("bf16" if bf16 else "fp32")
