"""The ``auto`` learning rate and number of epochs of the sft stage.

Measured on two real domains of a few dozen questions (benchmarks/realdocs, docs/RAG.md): LoRA on
SmolLM2-135M at the common 2e-4 for 3 epochs (21 steps) learnt neither the facts nor to read the passages
(Debian manuals: tuned+rag 10.7%, no better than base+rag); 2e-4 for 10 epochs still ended at a loss of
0.7; 1e-3 for 10 epochs reached 42.9% (base+rag 10.7%). So ``auto`` gives LoRA on a small model a higher
rate, and a small split more passes:

- ``epochs: auto``: 3, raised for a split of fewer than 200 examples so that training sees at least
  :data:`MIN_EXAMPLES` examples, at most :data:`MAX_EPOCHS` passes;
- ``lr: auto``: 1e-3 for LoRA on a model under :data:`SMALL_MODEL` parameters, else 2e-4 (the usual LoRA
  rate for 7B-class models, not measured here); 2e-4 for full training, as before the setting existed,
  and 2e-4 when the model's size cannot be read from its config (said in the log).
"""

from __future__ import annotations

import math
from typing import Any

from lmforge.engine.shape import ModelShape

DEFAULT_EPOCHS = 3.0
MIN_EXAMPLES = 600
"""Examples an ``epochs: auto`` run trains on at the least (before :data:`MAX_EPOCHS` caps it)."""
MAX_EPOCHS = 10.0
SMALL_MODEL = 1_000_000_000
"""Parameters below which ``lr: auto`` trains a LoRA adapter at :data:`SMALL_MODEL_LORA_LR`."""
SMALL_MODEL_LORA_LR = 1e-3
LR = 2e-4


def auto_epochs(examples: int) -> float:
    """Passes over a split of ``examples`` examples (see the module docstring)."""
    return min(MAX_EPOCHS, max(DEFAULT_EPOCHS, float(math.ceil(MIN_EXAMPLES / max(examples, 1)))))


def auto_lr(method: str, parameters: int) -> float:
    """Peak learning rate for ``method`` on a model of ``parameters`` weights; a size that could not be read
    (0) gets the conservative :data:`LR`, never the small-model rate (fail closed)."""
    return SMALL_MODEL_LORA_LR if method == "lora" and 0 < parameters < SMALL_MODEL else LR


def config_parameters(config: dict[str, Any]) -> int:
    """How many weights a decoder of this ``config.json`` has (:class:`lmforge.engine.shape.ModelShape`:
    every family's key names, gated or plain MLP, tied or separate embeddings); 0 when it cannot be read."""
    try:
        return ModelShape.from_config(config).params
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return 0


def resolved(spec: Any, examples: int, parameters: int) -> Any:
    """``spec`` with ``epochs: auto`` and ``lr: auto`` replaced by their values for this split and model."""
    update: dict[str, Any] = {}
    if spec.epochs == "auto":
        update["epochs"] = auto_epochs(examples)
    if spec.lr == "auto":
        update["lr"] = auto_lr(spec.method, parameters)
    return spec.model_copy(update=update) if update else spec


def model_parameters(model_dir: Any) -> int:
    """:func:`config_parameters` of the ``config.json`` in ``model_dir`` (0 when it cannot be read)."""
    import json
    from pathlib import Path

    try:
        return config_parameters(json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return 0
