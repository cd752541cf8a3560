"""``lmforge bench``: training speed and memory of lmforge against the usual baselines, side by side.

Every system trains the same LoRA adapter (the recipe's ``sft.lora``: rank, alpha, targets) with the
same learning rate (constant), the same number of optimizer steps and the same examples per step, on
the same chat examples of the recipe's ``train`` split (default: the demo recipe). All systems see
the same micro-batches in the same order (length-grouped, drawn once from the seed), so their losses
can be compared step by step. Each system runs in its own child process, so its peak RSS is its own:

* ``baseline``: what the seed scripts do: HF Trainer, fp32, every example padded to the sequence
  length (micro-batches of at most ``baseline_tokens`` padded tokens, with gradient accumulation);
* ``trl``: TRL's ``SFTTrainer`` with its defaults (fp32 weights under bf16 autocast, activation
  checkpointing, batches padded to their longest row), on prompt/completion pairs, so the loss is
  on the completion, as TRL does for such data (``cpt`` workload: on the texts, with TRL's packing);
* ``trl-fp32``: the same in fp32, what a careful user picks on a CPU without native bf16 (where
  TRL's default bf16 autocast is emulated and many times slower);
* ``lmforge``: lmforge's sft path, built by the same functions as ``lmforge run``;
* ``lmforge-lowmem``: the same with activation checkpointing (``sft.gradient_checkpointing``).

Reported per system: non-padding tokens per second over the timed steps (the first ``warmup``
steps are not timed), peak RSS of the process, the mean training loss of the last three steps, the
answer-only loss on held-out questions after training (computed the same way for every system) and
the model FLOP utilisation.

MFU = tokens/s x (2 N + 2 N' + 2 T) / peak. N counts the weights of the matmuls inside the transformer
blocks (LoRA matrices included; embeddings and the output head excluded), N' those of the blocks the
backward pass goes through (all of them, unless ``lora.top_layers`` adapts only the last ones), T the
trainable ones: a token costs 2 N FLOPs forward, 2 N' backward for the input gradients and 2 T for
the weight gradients (6 N for full fine-tuning). Attention scores, the output head and recomputation under
activation checkpointing are not credited, so the figure is conservative. The peak is the CPU's bf16
matmul peak for every system: physical cores x nominal GHz x 1024 FLOP/cycle with AMX (128 with
avx512_bf16 only; the fp32 FMA peak without either); on a GPU, pass ``--peak-tflops``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmforge.hardware import machine_description
from lmforge.rundir import atomic_write_text

SYSTEMS = ("baseline", "trl", "trl-fp32", "lmforge", "lmforge-lowmem")
"""Systems ``lmforge bench`` knows, in table order."""


@dataclass
class BenchSettings:
    """What every system trains on, identically."""

    recipe: str | None = None
    """Recipe whose model, ``train`` (and ``test``) split and ``sft`` settings are used; None: the demo."""
    overrides: list[str] = field(default_factory=list)
    """``--set key=value`` overrides of the recipe (``sft.*`` ones shape the lmforge systems)."""
    model: str | None = None
    """Model reference instead of the recipe's ``model.ref``."""
    seq_len: int = 1024
    """Longest example (longer ones are truncated); the baseline pads every example to it. With the
    ``cpt`` workload: the length of every packed row."""
    workload: str = "sft"
    """``sft``: the chat examples the recipe's sft trains on; ``cpt``: continued pretraining on rows of
    exactly ``seq_len`` tokens packed from the recipe's documents (cycled until there are enough)."""
    steps: int = 12
    """Optimizer steps per system, warm-up included."""
    warmup: int = 2
    """First steps left out of the timing (allocator, caches, lazy initialisation)."""
    batch_size: int = 8
    """Examples per optimizer step (micro-batch x accumulation) for every system."""
    baseline_tokens: int = 2048
    """Padded tokens per baseline micro-batch at most: its fp32 activations and full logits take about
    3.5 GB per 1000 tokens of SmolLM2-135M, so larger micro-batches crowd a 24 GB machine."""
    heldout: int = 64
    """Held-out questions (the recipe's ``test`` split) scored after training."""
    peak_tflops: float | None = None
    """Peak FLOP/s of the accelerator in TFLOP/s, for MFU (default: computed for this CPU)."""
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    """The systems ``lmforge bench`` runs (``--systems``), checked here; :func:`run_bench` is given them."""

    def __post_init__(self) -> None:
        import importlib.util

        from lmforge.errors import Problem, refuse
        from lmforge.stages import WORKLOADS

        problems = []
        unknown = [s for s in self.systems if s not in SYSTEMS]
        if unknown or not self.systems:
            problems.append(Problem("--systems", f"got {self.systems}; expected some of {', '.join(SYSTEMS)}"))
        elif any(s.startswith("trl") for s in self.systems) and importlib.util.find_spec("trl") is None:
            problems.append(Problem("--systems", "trl needs TRL: pip install 'lmforge[bench]' (or leave trl out)"))
        if self.workload not in WORKLOADS:
            problems.append(Problem("--workload", f"got {self.workload!r}; expected {' or '.join(WORKLOADS)}"))
        if self.warmup >= self.steps:
            problems.append(Problem("--warmup", f"{self.warmup} must be below --steps {self.steps}"))
        refuse("lmforge bench", problems)


@dataclass
class BenchResult:
    """One system at one sequence length."""

    system: str
    seq_len: int
    steps: int = 0
    micro_batch: int = 0
    tokens: int = 0
    """Non-padding tokens in the timed steps."""
    padded_tokens: int = 0
    """Tokens computed in the timed steps, padding included."""
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    """Median over the timed steps of a step's non-padding tokens / its wall time (robust to other load)."""
    mean_tokens_per_s: float = 0.0
    """All timed tokens / the whole timed window (what an idle machine would also give)."""
    step_seconds: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    train_loss: float = 0.0
    """Mean loss of the last three steps."""
    heldout_loss: float = 0.0
    mfu: float = 0.0
    flops_per_token: float = 0.0
    notes: str = ""
    losses: list[float] = field(default_factory=list)
    error: str | None = None


# ---------------------------------------------------------------- parent


def run_bench(settings: BenchSettings, seq_lens: list[int], out_dir: Path, console: Any = None) -> list[BenchResult]:
    """Run every system of ``settings.systems`` (checked when the settings were built) at every sequence length,
    each in a child process; write JSON and Markdown.

    Writes ``bench.json`` (settings, machine, results) and ``bench.md`` (the table) into ``out_dir``
    and each worker's output to ``logs/<system>-<seq_len>.log``. A system that fails is reported with
    its error and the others still run.
    """
    from rich.console import Console

    console = console or Console()
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    results: list[BenchResult] = []
    for seq_len in seq_lens:
        for system in settings.systems:
            console.print(f"bench: {system} at sequence length {seq_len} ({settings.steps} steps) ...")
            result = _run_worker(settings, system, seq_len, out_dir)
            results.append(result)
            if result.error:
                console.print(f"  [red]failed[/red]: {result.error.splitlines()[-1] if result.error else ''}")
            else:
                console.print(
                    f"  {result.tokens_per_s:.0f} tokens/s, peak RSS {result.peak_rss_mb:.0f} MB, "
                    f"train loss {result.train_loss:.4f}, held-out loss {result.heldout_loss:.4f}"
                )
    document = {"settings": asdict(settings), "machine": machine_description(), "results": [asdict(r) for r in results]}
    atomic_write_text(out_dir / "bench.json", json.dumps(document, indent=2) + "\n")
    atomic_write_text(out_dir / "bench.md", markdown_table(results) + "\n\n" + FOOTER + "\n")
    console.print(rich_table(results))
    console.print(FOOTER, highlight=False)
    return results


FOOTER = (
    "tokens/s: median over the timed steps of a step's non-padding tokens / its wall time (bench.json also has "
    "the mean over the whole timed window). MFU = tokens/s x (4N + 2T) / the CPU's peak FLOP/s in the precision "
    "it trains in (bf16 on AMX / avx512_bf16, else fp32 FMA; bench.json: machine.peak_precision); "
    "N: weights of the matmuls in the transformer blocks (LoRA included), T: the trainable ones among them "
    "(the formula is 2N + 2N' + 2T where the backward pass skips blocks below the adapter, N' the blocks it reaches)."
)


def _run_worker(settings: BenchSettings, system: str, seq_len: int, out_dir: Path) -> BenchResult:
    result_path = out_dir / "logs" / f"{system}-{seq_len}.json"
    log_path = out_dir / "logs" / f"{system}-{seq_len}.log"
    result_path.unlink(missing_ok=True)
    config = {"settings": {**asdict(settings), "seq_len": seq_len}, "system": system, "result": str(result_path)}
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    with open(log_path, "w", encoding="utf-8") as log:
        completed = subprocess.run(
            [sys.executable, "-m", "lmforge.perf.bench_worker", json.dumps(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if completed.returncode == 0 and result_path.is_file():
        return BenchResult(**json.loads(result_path.read_text(encoding="utf-8")))
    tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
    reason = f"exit code {completed.returncode}" + (" (killed: out of memory?)" if completed.returncode < 0 else "")
    return BenchResult(system=system, seq_len=seq_len, error="\n".join([*tail, f"{reason}; full log: {log_path}"]))


def _ratios(result: BenchResult, results: list[BenchResult]) -> tuple[str, str]:
    """Speed against the baseline and against the faster of ``trl`` / ``trl-fp32`` at the same length."""
    peers: dict[str, Any] = {p.system: p for p in results if p.seq_len == result.seq_len and not p.error}
    cells = []
    trls = [p for name, p in peers.items() if name.startswith("trl") and p.tokens_per_s > 0]
    peers["trl"] = max(trls, key=lambda p: p.tokens_per_s) if trls else None  # the faster TRL set-up
    for name in ("baseline", "trl"):
        peer = peers.get(name)
        ok = peer is not None and peer.tokens_per_s > 0 and not result.error
        cells.append(f"{result.tokens_per_s / peer.tokens_per_s:.2f}x" if ok else "-")
    return cells[0], cells[1]


def markdown_table(results: list[BenchResult]) -> str:
    """The results as a Markdown table, with speed-ups against the baseline and TRL at each length."""
    lines = [
        "| seq len | system | tokens/s | vs baseline | vs TRL | peak RSS (MB) | train loss | held-out loss | MFU "
        "| notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            reason = r.error.strip().splitlines()[-1].replace("|", "/")
            lines.append(f"| {r.seq_len} | {r.system} | failed | - | - | - | - | - | - | {reason} |")
            continue
        vs_base, vs_trl = _ratios(r, results)
        lines.append(
            f"| {r.seq_len} | {r.system} | {r.tokens_per_s:.0f} | {vs_base} | {vs_trl} | {r.peak_rss_mb:.0f} "
            f"| {r.train_loss:.4f} | {r.heldout_loss:.4f} | {r.mfu:.1%} | {r.notes} |"
        )
    return "\n".join(lines)


def rich_table(results: list[BenchResult]) -> Any:
    """The results as a rich table for the terminal."""
    from rich.table import Table

    table = Table(title="lmforge bench", caption="see bench.md for the MFU formula")
    for column in ("seq len", "system", "tokens/s", "vs baseline", "vs TRL", "peak RSS MB", "train loss"):
        table.add_column(column, justify="right" if column != "system" else "left")
    table.add_column("held-out loss", justify="right")
    table.add_column("MFU", justify="right")
    for r in results:
        if r.error:
            table.add_row(str(r.seq_len), r.system, "[red]failed[/red]", *["-"] * 6)
            continue
        vs_base, vs_trl = _ratios(r, results)
        table.add_row(
            str(r.seq_len),
            r.system,
            f"{r.tokens_per_s:.0f}",
            vs_base,
            vs_trl,
            f"{r.peak_rss_mb:.0f}",
            f"{r.train_loss:.4f}",
            f"{r.heldout_loss:.4f}",
            f"{r.mfu:.1%}",
        )
    return table
