"""What size of model fits which machine: ``lmforge plan``'s memory model over published configs (no weights).

    python benchmarks/plan_sizes.py            # markdown table for the README / docs/PERFORMANCE.md

Each cell is the estimated peak of one sft step (4 rows x 512 tokens a micro-batch, sdpa, activation
checkpointing on, AdamW): LoRA r16 on every linear layer in bf16, QLoRA (NF4 base, CUDA only) and full
fine-tuning (fp32 master weights, bf16 autocast). "fits" compares with the memory of a 24 GiB CPU
machine (this project's development VM), one 24 GB card (L4 / RTX 4090) and one 80 GB card
(A100 / H100). Estimates only: the CPU memory model is calibrated on measured runs (docs/PERFORMANCE.md,
"Planning"); no GPU run of lmforge has been measured yet.
"""

from __future__ import annotations

from lmforge.config import SFTSpec
from lmforge.engine.shape import ModelShape
from lmforge.perf.plan import Batches, Hardware, estimate_memory, loading_peak_mb
from lmforge.perf.sizes import PUBLISHED, model_config

ARMS = {
    "LoRA bf16": {"method": "lora", "lora": {"r": 16, "alpha": 32}},
    "QLoRA 4-bit": {"method": "lora", "lora": {"r": 16, "alpha": 32}, "quantization": "4bit"},
    "full": {"method": "full"},
}
MACHINES = {"CPU 24 GiB": ("cpu", 24 * 1024), "24 GB GPU": ("L4", 24 * 1024), "80 GB GPU": ("H100", 80 * 1024)}


def peak_mb(name: str, arm: str, device: str) -> float:
    shape = ModelShape.from_config(model_config(name))
    spec = SFTSpec(precision="bf16", batch_size=4, max_length=512, gradient_checkpointing=True, **ARMS[arm])
    batches = Batches(4 * 512, 512, 4, 10**6, 1000)
    memory = estimate_memory(shape, spec, batches, bf16=True, kernel="sdpa", hardware_device=device)
    training = sum(memory.values())
    if device == "cpu":  # the checkpoint is mapped next to the converted weights while loading
        return max(training, loading_peak_mb(shape.with_bf16_checkpoint(), spec, bf16=True))
    return training


def main() -> None:
    assert Hardware.gpu("L4").available_mb and Hardware.gpu("H100").available_mb  # the cards' memory as plan knows it
    print("| model | params | " + " | ".join(f"{arm} (GiB)" for arm in ARMS) + " | fits |")
    print("|---|---|" + "---|" * len(ARMS) + "---|")
    for name, published in PUBLISHED.items():
        cells, fits = [], []
        for arm in ARMS:
            gpu = peak_mb(name, arm, "cuda")
            cpu = None if "QLoRA" in arm else peak_mb(name, arm, "cpu")
            cells.append(f"{gpu / 1024:.1f}" + (f" (CPU {cpu / 1024:.1f})" if cpu is not None else ""))
            where = [
                machine
                for machine, (kind, mb) in MACHINES.items()
                if (cpu if kind == "cpu" else gpu) is not None and (cpu if kind == "cpu" else gpu) <= 0.9 * mb
            ]
            fits.append(f"{arm}: {', '.join(where) or 'none'}")
        print(f"| {name} | {published['params'] / 1e9:.2f}B | " + " | ".join(cells) + f" | {'; '.join(fits)} |")


if __name__ == "__main__":
    main()
