"""Speed and memory, measured and predicted: ``bench`` (lmforge against the HF Trainer baseline and TRL,
each system in its own process run by ``bench_worker``) and ``plan`` (peak memory and time of a recipe
before it runs)."""
