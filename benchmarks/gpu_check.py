"""Exercise lmforge's CUDA paths on a GPU machine in one go and print a table of what worked.

    python benchmarks/gpu_check.py                       # every row, 30 sft steps each
    python benchmarks/gpu_check.py --only sft-bf16,serve  # some rows
    python benchmarks/gpu_check.py --steps 10 --timeout 120 --out /tmp/gpu-check

Each row runs the real command line in a child process, on ``recipes/demo.yaml`` (SmolLM2-135M-Instruct)
with ``--set sft.max_steps=STEPS`` and ``--set eval.limit=32`` (32 questions per eval set):

* ``sft-bf16``: one process, LoRA, ``sft.precision=bf16``; stages data, sft, eval;
* ``qlora``: one process, ``sft.quantization=4bit`` (skipped when bitsandbytes is not installed);
* ``ddp``: ``lmforge run --nproc N`` over the N visible GPUs, ``distributed.strategy=ddp`` (skipped below 2 GPUs);
* ``fsdp``: the same with ``distributed.strategy=fsdp`` and ``sft.method=full`` (skipped below 2 GPUs);
* ``serve``: ``lmforge serve`` on the sft-bf16 run; waits for ``GET /v1/models``, times one non-streaming
  ``POST /v1/chat/completions`` (max_tokens 16), then stops the server.

Per row: status (``ok``, ``failed: <first line of the error>``, ``skipped: <reason>``), training tokens/s
(for serve: completion tokens per second of the one request), peak GPU memory (``nvidia-smi`` polled
every 0.5 s, the busiest GPU; includes other processes), first and last logged training loss, and the
tuned model's accuracy on the first eval set (for serve: the request's latency). Every row has a
timeout (``--timeout``); a failed row does not stop the next one.

Outputs in ``--out`` (default ``gpu-check/``): ``gpu_check.json``, ``gpu_check.md``, ``logs/<row>.stdout.log``
and ``logs/<row>.stderr.log``, and the run directories in ``runs/<row>/`` (replaced on every run).

Exit codes: 0 every row that ran is ok, 1 a row failed, 2 no CUDA GPU here (the CPU paths are covered
by ``make test``). The GPU build of torch is needed: ``make TORCH_SPEC=torch install``, and
``pip install bitsandbytes`` for the qlora row.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "demo.yaml"
ROW_NAMES = ("sft-bf16", "qlora", "ddp", "fsdp", "serve")
SERVED_RUN = "sft-bf16"
"""The row whose run directory the serve row serves."""
BATCH_SIZE = 16
"""Examples per optimizer step (the demo recipe's, set explicitly so the multi-GPU split is known)."""
EVAL_LIMIT = 32
SERVE_START_TIMEOUT_S = 180
SERVE_MAX_TOKENS = 16
QUESTION = "What is the retirement age in Kestria?"
STOP_GRACE_S = 20
COLUMNS = ("row", "processes", "status", "tokens/s", "peak GPU MB", "first loss", "last loss", "eval")
RIGHT_ALIGNED = {"processes", "tokens/s", "peak GPU MB", "first loss", "last loss"}
STATUS_WIDTH = 90
"""Longest status shown in the plain-text table (the JSON and Markdown files keep it whole)."""


class ServeCheckError(Exception):
    """The serve row went wrong (the message becomes the row's status)."""


# ---------------------------------------------------------------- GPU memory


def nvidia_smi(field: str) -> list[str] | None:
    """One value of ``field`` per GPU from ``nvidia-smi --query-gpu``; None without a working nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    command = ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def gpu_memory_used() -> list[int] | None:
    """Memory in use on each GPU (MB, every process), or None when nvidia-smi cannot tell."""
    values = nvidia_smi("memory.used")
    try:
        return [int(float(value)) for value in values] if values else None
    except ValueError:  # e.g. "[N/A]" on MIG slices
        return None


class GpuMemoryPoller:
    """Polls ``nvidia-smi`` in a thread while a row runs and keeps each GPU's highest memory use.

    Does nothing (every value stays None) where nvidia-smi is missing or does not answer.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.baseline: list[int] | None = None
        self.peaks: list[int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="gpu-memory-poller", daemon=True)

    def __enter__(self) -> GpuMemoryPoller:
        self.baseline = gpu_memory_used()
        self.peaks = list(self.baseline) if self.baseline else None
        if self.baseline is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    @property
    def peak_mb(self) -> int | None:
        """The busiest GPU's highest memory use while polling (MB)."""
        return max(self.peaks) if self.peaks else None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            used = gpu_memory_used()
            if used is not None:
                peaks = self.peaks or used
                self.peaks = [max(a, b) for a, b in zip(peaks, used, strict=False)]


# ---------------------------------------------------------------- child processes


def child_env() -> dict[str, str]:
    """This process's environment for the children, unbuffered."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the child's process group (a launcher and its workers); SIGKILL it after STOP_GRACE_S."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError):  # workers a launcher left behind, or a child that hung
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def logged_process(command: list[str], logs: Path, stem: str) -> Iterator[subprocess.Popen]:
    """Start ``command`` in its own process group, output to ``logs/<stem>.std{out,err}.log``.

    Whatever happens inside the ``with`` block, a child still running at its end is stopped with its group.
    """
    with (logs / f"{stem}.stdout.log").open("w") as out, (logs / f"{stem}.stderr.log").open("w") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=child_env(), start_new_session=True)
        try:
            yield process
        finally:
            if process.poll() is None:
                stop_process_group(process)


def read_text(path: Path) -> str:
    """A log file's text ('' when missing)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


RANK_PREFIX = re.compile(r"^\[(?:default)?\d+\]:\s*|^\[rank\d+\]:\s*")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Interrupt)(?::|$)")


def first_error(stderr: str, run_path: Path | None = None) -> str | None:
    """The most telling line about why a child failed.

    In order: the error a stage recorded in its manifest, a rank's ``error (rank N): ...`` line, the first
    Python exception line, lmforge's ``error: ...`` line, the last line of stderr.
    """
    for manifest in sorted(run_path.glob("*/manifest.json")) if run_path else []:
        content = read_json(manifest) or {}
        error = content.get("error")
        if content.get("status") == "failed" and isinstance(error, dict):
            message = str(error.get("message", "")).strip().splitlines()
            return f"{manifest.parent.name}: {error.get('type', 'error')}: {message[0] if message else ''}".strip()
    lines = [RANK_PREFIX.sub("", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line]
    for matches in (
        lambda line: line.startswith("error (rank"),
        lambda line: EXCEPTION_LINE.match(line) is not None,
        lambda line: line.startswith("error:"),
    ):
        at = next((i for i, line in enumerate(lines) if matches(line)), None)
        if at is not None:  # a recipe error lists its problems on the next lines: keep the first one
            more = lines[at + 1] if at + 1 < len(lines) and lines[at + 1].startswith("- ") else ""
            return f"{lines[at]} {more}".strip()
    return lines[-1] if lines else None


# ---------------------------------------------------------------- training rows


def training_rows(n_gpus: int, steps: int) -> dict[str, dict[str, Any]]:
    """Per training row: processes, ``--set`` overrides of the demo recipe, and why it is skipped (or None)."""
    common = ["stages=[data,sft,eval]", f"sft.max_steps={steps}", f"sft.batch_size={BATCH_SIZE}"]
    common.append(f"eval.limit={EVAL_LIMIT}")
    # global_batch keep splits the step's examples over the processes; grow where they do not divide.
    split = [] if BATCH_SIZE % max(n_gpus, 1) == 0 else ["distributed.global_batch=grow"]
    few_gpus = f"needs 2+ GPUs (found {n_gpus})" if n_gpus < 2 else None
    no_bnb = "bitsandbytes not installed" if importlib.util.find_spec("bitsandbytes") is None else None
    return {
        "sft-bf16": {"nproc": 1, "overrides": [*common, "sft.precision=bf16"], "skip": None},
        "qlora": {"nproc": 1, "overrides": [*common, "sft.quantization=4bit"], "skip": no_bnb},
        "ddp": {"nproc": n_gpus, "overrides": [*common, "distributed.strategy=ddp", *split], "skip": few_gpus},
        "fsdp": {
            "nproc": n_gpus,
            # A full fine-tune wants a far smaller learning rate than the demo's LoRA 1e-3.
            "overrides": [*common, "distributed.strategy=fsdp", "sft.method=full", "sft.lr=1.0e-5", *split],
            "skip": few_gpus,
        },
    }


def new_row(name: str, processes: int) -> dict[str, Any]:
    """A result row with every table field empty."""
    return {
        "name": name,
        "processes": processes,
        "status": "",
        "tokens_per_s": None,
        "peak_gpu_mb": None,
        "first_loss": None,
        "last_loss": None,
        "eval": None,
    }


def run_training_row(name: str, spec: dict[str, Any], out: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``lmforge run recipes/demo.yaml`` for one row in a fresh run directory and read its results."""
    row = new_row(name, spec["nproc"])
    if spec["skip"]:
        row["status"] = f"skipped: {spec['skip']}"
        return row
    runs = out / "runs"
    run_path = runs / name
    shutil.rmtree(run_path, ignore_errors=True)  # a run left by an earlier check would be skipped as done
    command = [sys.executable, "-m", "lmforge", "run", str(RECIPE), "--run-dir", str(runs)]
    command += ["--nproc", str(spec["nproc"])] if spec["nproc"] > 1 else []
    for item in [f"name={name}", *spec["overrides"]]:
        command += ["--set", item]
    row["command"] = shlex.join(command)
    print(f"  $ {row['command']}", flush=True)
    started = time.perf_counter()
    with GpuMemoryPoller() as poller, logged_process(command, out / "logs", name) as process:
        try:
            code: int | None = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
    row.update(seconds=round(time.perf_counter() - started, 1), exit_code=code, run_dir=str(run_path))
    row.update(peak_gpu_mb=poller.peak_mb, gpu_peaks_mb=poller.peaks, gpu_baseline_mb=poller.baseline)
    row.update(training_results(run_path))
    row["status"] = training_status(code, timeout_s, run_path, read_text(out / "logs" / f"{name}.stderr.log"))
    return row


def training_status(code: int | None, timeout_s: float, run_path: Path, stderr: str) -> str:
    """``ok`` when the command succeeded and sft and eval left their results, else ``failed: <why>``."""
    if code is None:
        return f"failed: timed out after {timeout_s:g} s"
    if code != 0:
        return f"failed: {first_error(stderr, run_path) or f'exit code {code}'}"
    sft = read_json(run_path / "sft" / "manifest.json") or {}
    if sft.get("status") != "done":
        return f"failed: exit code 0 but the sft stage is {sft.get('status', 'missing')!r}"
    if read_json(run_path / "eval" / "summary.json") is None:
        return "failed: exit code 0 but eval/summary.json is missing"
    return "ok"


def training_results(run_path: Path) -> dict[str, Any]:
    """Throughput and losses from ``sft/manifest.json`` and ``sft/train_log.jsonl``, the eval headline."""
    metrics = (read_json(run_path / "sft" / "manifest.json") or {}).get("metrics") or {}
    keys = ("tokens_per_s", "final_loss", "train_loss", "steps", "precision", "seconds")
    first, last = logged_losses(run_path / "sft" / "train_log.jsonl")
    summary = read_json(run_path / "eval" / "summary.json")
    return {
        "tokens_per_s": metrics.get("tokens_per_s"),
        "first_loss": first,
        "last_loss": last,
        "eval": eval_headline(summary),
        "sft_metrics": {key: metrics.get(key) for key in keys},
    }


def logged_losses(path: Path) -> tuple[float | None, float | None]:
    """The first and the last training ``loss`` in a Trainer log (JSON Lines); None where there is none."""
    losses = []
    for line in read_text(path).splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and isinstance(entry.get("loss"), (int, float)):
                losses.append(float(entry["loss"]))
    return (losses[0], losses[-1]) if losses else (None, None)


def eval_headline(summary: dict[str, Any] | None) -> str | None:
    """The tuned model's accuracy on the first eval set, e.g. ``test 40.6% (n=32)``; None without one.

    ``summary`` is eval's ``summary.json``: ``{"sets": {"test": {"base": {...}, "tuned": {"accuracy": 0.4,
    "score": 0.4, "n": 32, ...}}}, ...}`` (see ``lmforge.evaluate.stage``).
    """
    sets = (summary or {}).get("sets") or {}
    if not sets:
        return None
    set_name, scores = next(iter(sets.items()))
    tuned = next((name for name in scores if name != "base"), None)
    entry = scores.get(tuned) or {}
    value = entry.get("accuracy", entry.get("score"))
    if not isinstance(value, (int, float)):
        return None
    return f"{set_name} {value:.1%} (n={entry.get('n', '?')})"


# ---------------------------------------------------------------- serve row


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def auth_headers() -> dict[str, str]:
    """The bearer token the server will want when ``$LMFORGE_API_KEY`` is set (it then requires one)."""
    key = os.environ.get("LMFORGE_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def wait_for_models(process: subprocess.Popen, url: str, timeout_s: float) -> list[str]:
    """Poll ``GET /v1/models`` every 0.5 s until it answers; the served model ids.

    Raises:
        ServeCheckError: the server exited, or did not answer within ``timeout_s``.
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServeCheckError(f"server exited with code {process.returncode} before answering")
        try:
            response = httpx.get(f"{url}/v1/models", headers=auth_headers(), timeout=5)
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code == 200:
            try:
                return [model["id"] for model in response.json()["data"]]
            except (ValueError, KeyError, TypeError):
                raise ServeCheckError(f"GET /v1/models: unexpected answer {response.text[:200]!r}") from None
        time.sleep(0.5)
    raise ServeCheckError(f"server did not answer GET /v1/models within {timeout_s:g} s")


def ask_server(process: subprocess.Popen, url: str, timeout_s: float) -> dict[str, Any]:
    """Wait for the server, send one chat completion to the tuned model, and time it.

    Raises:
        ServeCheckError: no answer, an HTTP error, or a reply without text.
    """
    import httpx

    models = wait_for_models(process, url, SERVE_START_TIMEOUT_S)
    model = next((name for name in models if name != "base"), models[0] if models else "")
    body = {
        "model": model,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": SERVE_MAX_TOKENS,
        "temperature": 0,
        "stream": False,
    }
    started = time.perf_counter()
    try:
        response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=auth_headers(), timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ServeCheckError(f"POST /v1/chat/completions: {type(exc).__name__}: {exc}") from None
    latency = time.perf_counter() - started
    if response.status_code != 200:
        first_line = (response.text.strip().splitlines() or [""])[0][:200]
        raise ServeCheckError(f"POST /v1/chat/completions answered {response.status_code}: {first_line}")
    try:
        reply = response.json()
        content = reply["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ServeCheckError(f"unexpected chat completion: {response.text[:200]}") from None
    if not isinstance(content, str) or not content.strip():
        raise ServeCheckError(f"empty reply from model {model!r}")
    tokens = (reply.get("usage") or {}).get("completion_tokens")
    return {"model": model, "models": models, "latency_s": round(latency, 3), "reply": content, "tokens": tokens}


def run_serve_row(out: Path, timeout_s: float) -> dict[str, Any]:
    """Serve the sft-bf16 run with ``lmforge serve``, time one chat completion, stop the server."""
    row = new_row("serve", 1)
    run_path = out / "runs" / SERVED_RUN
    if (read_json(run_path / "sft" / "manifest.json") or {}).get("status") != "done":
        row["status"] = f"skipped: no finished {SERVED_RUN} run in {run_path}"
        return row
    port = free_port()
    command = [sys.executable, "-m", "lmforge", "serve", str(run_path), "--port", str(port)]
    row["command"] = shlex.join(command)
    print(f"  $ {row['command']}", flush=True)
    started = time.perf_counter()
    with GpuMemoryPoller() as poller, logged_process(command, out / "logs", "serve") as process:
        try:
            result = ask_server(process, f"http://127.0.0.1:{port}", timeout_s)
        except ServeCheckError as exc:
            result = {"error": str(exc)}
    row.update(seconds=round(time.perf_counter() - started, 1), peak_gpu_mb=poller.peak_mb)
    row.update(gpu_peaks_mb=poller.peaks, gpu_baseline_mb=poller.baseline)
    if "error" in result:
        exited = "exited" in result["error"] and first_error(read_text(out / "logs" / "serve.stderr.log"))
        row["status"] = f"failed: {exited or result['error']}"
        return row
    row.update(result, status="ok", eval=f"latency {result['latency_s'] * 1000:.0f} ms")
    if isinstance(result["tokens"], int) and result["latency_s"] > 0:
        row["tokens_per_s"] = round(result["tokens"] / result["latency_s"], 1)
    return row


# ---------------------------------------------------------------- table and outputs


def _number(value: Any, spec: str) -> str:
    return "-" if not isinstance(value, (int, float)) else format(value, spec)


def table_cells(rows: list[dict[str, Any]], status_width: int | None = None) -> list[list[str]]:
    """Each row's cells, in COLUMNS order; ``-`` where a value is missing."""
    cells = []
    for row in rows:
        status = str(row.get("status") or "-")
        if status_width is not None and len(status) > status_width:
            status = status[: status_width - 3] + "..."
        cells.append(
            [
                str(row.get("name", "?")),
                _number(row.get("processes"), "d"),
                status,
                _number(row.get("tokens_per_s"), ".0f"),
                _number(row.get("peak_gpu_mb"), ".0f"),
                _number(row.get("first_loss"), ".4f"),
                _number(row.get("last_loss"), ".4f"),
                str(row.get("eval") or "-"),
            ]
        )
    return cells


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table with aligned columns (numbers right-aligned), one line per row."""
    body = table_cells(rows, STATUS_WIDTH)
    widths = [max(len(line[i]) for line in [list(COLUMNS), *body]) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        shown = [
            cell.rjust(width) if column in RIGHT_ALIGNED else cell.ljust(width)
            for column, cell, width in zip(COLUMNS, cells, widths, strict=True)
        ]
        return "  ".join(shown).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(list(COLUMNS)), rule, *(line(cells) for cells in body)])


def format_markdown(rows: list[dict[str, Any]]) -> str:
    """The same table in Markdown (statuses in full)."""
    align = ["---:" if column in RIGHT_ALIGNED else "---" for column in COLUMNS]
    lines = [list(COLUMNS), align, *table_cells(rows)]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in lines)


def environment(n_gpus: int) -> dict[str, Any]:
    """What the check ran on: GPUs, CUDA, Python and library versions (read from package metadata)."""
    import torch

    versions = {}
    for package in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "lmforge"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "gpus": nvidia_smi("name") or [f"{n_gpus} CUDA device(s)"],
        "cuda_devices": n_gpus,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "versions": versions,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_outputs(out: Path, rows: list[dict[str, Any]], env: dict[str, Any], args: argparse.Namespace) -> None:
    """``gpu_check.json`` (everything) and ``gpu_check.md`` (the table) in ``out``."""
    settings = {"steps": args.steps, "timeout": args.timeout, "only": args.only, "eval_limit": EVAL_LIMIT}
    report = {"environment": env, "settings": settings, "rows": rows}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    gpus = ", ".join(env["gpus"])
    header = f"# lmforge GPU check\n\n{gpus}; torch {env['versions']['torch']} (CUDA {env['torch_cuda']}); "
    header += f"{args.steps} sft steps per row, eval limited to {EVAL_LIMIT} questions per set.\n\n"
    (out / "gpu_check.md").write_text(header + format_markdown(rows) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="sft optimizer steps per training row (default 30)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds each row may take (default 240)")
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="output folder (default gpu-check/)")
    parser.add_argument("--only", default=",".join(ROW_NAMES), help=f"rows to run, comma-separated: {ROW_NAMES}")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in only if name not in ROW_NAMES]
    if unknown or not only:
        parser.error(f"--only: got {args.only!r}; expected some of {', '.join(ROW_NAMES)}")
    if args.steps < 1 or args.timeout <= 0:
        parser.error("--steps and --timeout must be positive")
    args.only = [name for name in ROW_NAMES if name in only]
    return args


def cuda_devices() -> int:
    """The number of CUDA devices torch sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_row(name: str, specs: dict[str, dict[str, Any]], out: Path, timeout_s: float) -> dict[str, Any]:
    """One row; a surprise inside this script fails that row only, never the rows after it."""
    try:
        if name == "serve":
            return run_serve_row(out, timeout_s)
        return run_training_row(name, specs[name], out, timeout_s)
    except Exception as exc:
        row = new_row(name, specs.get(name, {}).get("nproc", 1))
        row["status"] = f"failed: gpu_check.py itself: {type(exc).__name__}: {exc}"
        return row


def main(argv: list[str] | None = None) -> int:
    """Run the selected rows, print the table, write the outputs; the exit code (see the module docstring)."""
    args = parse_args(argv)
    n_gpus = cuda_devices()
    if n_gpus == 0:
        print(
            "gpu_check.py needs a CUDA GPU (torch.cuda.is_available() is False here); "
            "the CPU paths are covered by `make test`",
            file=sys.stderr,
        )
        return 2
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = environment(n_gpus)
    print(f"lmforge GPU check: {', '.join(env['gpus'])}; torch {env['versions']['torch']} (CUDA {env['torch_cuda']})")
    specs = training_rows(n_gpus, args.steps)
    rows = []
    for number, name in enumerate(args.only, start=1):
        print(f"[{number}/{len(args.only)}] {name}", flush=True)
        row = run_row(name, specs, out, args.timeout)
        took = f" ({row['seconds']:.0f} s)" if "seconds" in row else ""
        print(f"  {row['status']}{took}", flush=True)
        rows.append(row)
        write_outputs(out, rows, env, args)  # after every row, so a killed check leaves what it measured
    print()
    print(format_table(rows))
    print(f"\n{out / 'gpu_check.json'}, {out / 'gpu_check.md'}, logs in {out / 'logs'}")
    return 0 if all(row["status"] == "ok" or row["status"].startswith("skipped") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
