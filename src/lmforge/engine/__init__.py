"""The training engine every training stage shares: the frame a stage runs in, the model it starts from,
the Trainer and its batches, precision and kernels, LoRA, tokenizing and chat templates.

It sits below ``evaluate`` and ``rag`` and above the core modules: it never imports a stage script
(``lmforge.train``) or a stage package (docs/ARCHITECTURE.md, "Layers", checked by a test).
"""
