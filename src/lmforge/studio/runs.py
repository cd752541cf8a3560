"""Runs as the studio sees them: their stages' state from the manifests, and runs started from the studio.

A run started here is ``lmforge run RECIPE --run-dir RUNS_DIR`` in its own process group, its output
in ``<run>/.studio/run.log``, its process in ``<run>/.studio/process.json`` (pid, the process's start
time, the command): the state lives in files, not in a page, so a reloaded page, a second tab or a
restarted studio all see the same run, and a second start of a live run is refused. Stop is Ctrl-C
for the whole group (the stage stays ``running`` in its manifest, and a resume carries on from its
last checkpoint); a process that has not exited 20 s later is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import StageError
from lmforge.rundir import StageDir, atomic_write_json, is_run_dir, read_json
from lmforge.stages import STAGE_ORDER, TRAINING_STAGES

STUDIO = ".studio"
CTRL_C_ABLE = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'lmforge'; from lmforge.cli import main; main()"
)
"""``lmforge`` with Ctrl-C on: a process started from a non-interactive shell's background job inherits
SIGINT ignored (so Python never raises KeyboardInterrupt), and stop would not stop it."""
STOP_GRACE_S = 20.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Process:
    """The process the studio started for a run (as read back from ``.studio/process.json``)."""

    pid: int
    started: float
    command: list[str]
    recipe: str
    alive: bool
    returncode: int | None = None


class Runs:
    """The runs under ``root``: listing, state, start / stop / resume, curves and log tails."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._children: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- listing

    def names(self) -> list[str]:
        """Run folders under the root, most recently changed first."""
        found = [p for p in self.root.iterdir() if p.is_dir() and (is_run_dir(p) or (p / STUDIO).is_dir())]
        return [p.name for p in sorted(found, key=lambda p: _changed(p), reverse=True)]

    def path(self, name: str) -> Path:
        """The folder of run ``name``; a name that leads out of the root is refused."""
        path = (self.root / name).resolve()
        if path.parent != self.root:
            raise StageError(f"{name!r} is not a run under {self.root}")
        return path

    def stages(self, name: str) -> list[dict[str, Any]]:
        """One row per stage of the run's recipe (or per stage folder): status, attempts, time, summary."""
        run = self.path(name)
        recipe = read_json(run / "recipe.json") if (run / "recipe.json").is_file() else {}
        listed = recipe.get("stages") or [s for s in STAGE_ORDER if (run / s).is_dir()]
        process = self.process(name)
        rows = []
        for stage in listed:
            manifest = StageDir.open(run, stage).manifest
            status = manifest.get("status") or "not run"
            if status == "running" and not (process and process.alive):
                status = "interrupted"  # no live process: killed, stopped or crashed; a resume carries on
            error = manifest.get("error") or {}
            rows.append(
                {
                    "stage": stage,
                    "status": status,
                    "attempts": manifest.get("attempts", 0),
                    "seconds": manifest.get("elapsed_s"),
                    "summary": _summary(manifest.get("metrics") or {}),
                    "error": f"{error.get('type')}: {error.get('message')}" if error else "",
                }
            )
        return rows

    def overview(self) -> list[dict[str, Any]]:
        """One row per run: its process and each stage's status, in pipeline order (``sft: done``)."""
        rows = []
        for name in self.names():
            stages = self.stages(name)
            shown = ", ".join(f"{row['stage']}: {row['status']}" for row in stages)
            rows.append({"run": name, "process": self.state(name), "stages": shown})
        return rows

    def state(self, name: str) -> str:
        """``running``, ``finished``, ``failed (exit N)``, ``stopped`` or ``idle`` (never started here)."""
        process = self.process(name)
        if process is None:
            return "idle"
        if process.alive:
            return "running"
        if process.returncode == 0:
            return "finished"
        if process.returncode in (130, -signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL):
            return "stopped"
        return f"failed (exit {process.returncode})" if process.returncode is not None else "ended"

    # ---------------------------------------------------------------- processes

    def process(self, name: str) -> Process | None:
        """The process the studio last started for run ``name``, whether it still runs."""
        record_path = self.path(name) / STUDIO / "process.json"
        if not record_path.is_file():
            return None
        record = read_json(record_path)
        pid = int(record["pid"])
        child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            alive = code is None
        else:
            alive, code = _alive(pid, record.get("ticks")), record.get("returncode")
        if not alive and code is not None and record.get("returncode") is None:
            record["returncode"] = code
            atomic_write_json(record_path, record)
        return Process(pid, record["started"], record["command"], record["recipe"], alive, code)

    def start(self, recipe: str | Path, overrides: list[str] | None = None) -> str:
        """Run ``recipe`` under the root in a new process; returns the run's name.

        Raises:
            StageError: the run already has a live process (one at a time per run folder).
        """
        from lmforge.config import load_recipe

        recipe = Path(recipe).resolve()
        name = load_recipe(recipe, overrides).name  # a bad recipe fails here, with lmforge validate's message
        run = self.path(name)
        with self._lock:
            process = self.process(name)
            if process is not None and process.alive:
                raise StageError(f"run {name!r} is already running (process {process.pid}); stop it first")
            (run / STUDIO).mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-c", CTRL_C_ABLE, "run", str(recipe), "--run-dir", str(self.root)]
            command += [arg for item in overrides or [] for arg in ("--set", item)]
            log = (run / STUDIO / "run.log").open("ab")
            log.write(f"\n$ lmforge run {recipe} --run-dir {self.root}  ({time.strftime('%H:%M:%S')})\n".encode())
            log.flush()
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120", "TERM": "dumb"}
            child = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )  # fmt: skip
            log.close()
            self._children[child.pid] = child
            record = {
                "pid": child.pid,
                "ticks": _start_ticks(child.pid),
                "started": time.time(),
                "command": command,
                "recipe": str(recipe),
                "returncode": None,
            }
            atomic_write_json(run / STUDIO / "process.json", record)
        return name

    def resume(self, name: str) -> str:
        """Start the run again with the recipe it last ran (its interrupted stage carries on)."""
        process = self.process(name)
        recipe = Path(process.recipe) if process is not None else self.path(name) / "recipe.json"
        if not recipe.is_file():
            raise StageError(f"run {name!r}: its recipe {recipe} is gone; start it again from the recipe page")
        return self.start(recipe)

    def stop(self, name: str, grace_s: float = STOP_GRACE_S) -> bool:
        """Interrupt the run's process group (Ctrl-C), killing it after ``grace_s``; False when nothing ran."""
        process = self.process(name)
        if process is None or not process.alive:
            return False
        try:
            os.killpg(process.pid, signal.SIGINT)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            current = self.process(name)
            if current is None or not current.alive:
                return True
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return True

    # ---------------------------------------------------------------- what a run shows

    def curves(self, name: str) -> list[dict[str, Any]]:
        """Loss points of every training stage: ``{"step", "loss", "series"}`` (``sft train``, ``sft validation``)."""
        run = self.path(name)
        points = []
        for stage in TRAINING_STAGES:  # each writes a train_log.jsonl
            log = run / stage / "train_log.jsonl"
            if not log.is_file():
                continue
            for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line being written
                for key, series in (("loss", "train"), ("eval_loss", "validation")):
                    if isinstance(entry.get(key), (int, float)) and "step" in entry:
                        points.append({"step": entry["step"], "loss": float(entry[key]), "series": f"{stage} {series}"})
        return points

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The last ``lines`` lines of the run's output as a terminal leaves them (a progress bar: its last state)."""
        log = self.path(name) / STUDIO / "run.log"
        if not log.is_file():
            return ""
        with log.open("rb") as handle:
            handle.seek(max(0, log.stat().st_size - 200_000))
            text = handle.read().decode("utf-8", errors="replace")
        shown = [ANSI.sub("", line.split("\r")[-1] if line.strip("\r") else line) for line in text.split("\n")]
        kept = [line for line in shown if line.strip()]
        return "\n".join(kept[-lines:])


def _summary(metrics: dict[str, Any]) -> str:
    """A few numbers a person looks for in a stage's metrics."""
    shown = []
    if isinstance(metrics.get("splits"), dict):  # data
        shown.append(", ".join(f"{split} {count}" for split, count in metrics["splits"].items()))
        totals = metrics.get("totals") or {}
        shown += [f"{key} {totals[key]}" for key in ("rejected", "filtered", "deduplicated") if totals.get(key)]
    if isinstance(metrics.get("sets"), dict):  # eval
        for set_name, variants in metrics["sets"].items():
            scores = [f"{v} {e['score']:.3f}" for v, e in variants.items() if isinstance(e.get("score"), (int, float))]
            shown.append(f"{set_name}: " + ", ".join(scores))
    for key in ("records", "steps", "final_loss", "best_eval_loss", "tokens_per_s", "chunks", "pairs"):
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            shown.append(f"{key.replace('_', ' ')} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return "; ".join(shown)


def _changed(path: Path) -> float:
    stamps = [path.stat().st_mtime]
    stamps += [p.stat().st_mtime for p in path.glob("*/manifest.json")]
    return max(stamps)


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell it from a later process given its pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, ticks: int | None) -> bool:
    """Whether ``pid`` is still the process that was started (not a zombie, not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file():
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            return False
        if fields[0] == "Z":
            return False
        if ticks is not None and int(fields[19]) != ticks:
            return False
    return True
