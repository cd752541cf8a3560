"""``lmforge run RECIPE --nproc N``: start N processes on this machine with torch's elastic launcher
(what ``torchrun`` runs), each running ``python -m lmforge run RECIPE``, and turn a failed process
into one clear message: which rank, how it ended, during which stage.

When one process dies (an exception, SIGKILL, out of memory) the launcher stops the others at
once, so no process is left waiting on a collective.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from lmforge.errors import ConfigError, LaunchError, Problem
from lmforge.rundir import MANIFEST, read_json


def launch_local(nproc: int, argv: list[str], run_path: Path, master_port: int | None = None) -> None:
    """Run ``python -m lmforge ARGV`` in ``nproc`` processes on this machine and wait for them.

    Args:
        argv: the command line each process runs (``run RECIPE --set ...``, without ``--nproc``).
        run_path: the run directory, to say which stage a failed process was in.
        master_port: the rendezvous port on 127.0.0.1 (default: a free one).

    Raises:
        ConfigError: inside a launcher already, or ``master_port`` in use.
        LaunchError: a process failed.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as elastic_run

    if os.environ.get("WORLD_SIZE") not in (None, "", "1"):
        raise ConfigError(
            "--nproc",
            [Problem("--nproc", "this process was already started by a launcher (WORLD_SIZE is set); drop --nproc")],
        )
    rendezvous = ["--standalone"]
    if master_port is not None:
        if not port_is_free(master_port):
            raise ConfigError(
                "--master-port",
                [Problem("--master-port", f"port {master_port} on 127.0.0.1 is in use; pick another or leave it out")],
            )
        rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{master_port}"]
    # Threads per process are set by the training stages (cores / processes); this keeps torchrun quiet.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = get_args_parser().parse_args(
        ["--nnodes", "1", "--nproc-per-node", str(nproc), "--max-restarts", "0", *rendezvous, "-m", "lmforge", *argv]
    )
    try:
        elastic_run(args)
    except ChildFailedError as exc:
        raise failure_error(exc, run_path) from None


def failure_error(exc: object, run_path: Path) -> LaunchError:
    """A :class:`LaunchError` for torch's ``ChildFailedError``: the first rank that failed, how, and where."""
    rank, failure = exc.get_first_failure()  # type: ignore[attr-defined]
    how = f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with code {failure.exitcode}"
    stage = running_stage(run_path)
    where = f" during stage {stage!r}" if stage else ""
    others = sorted(r for r in exc.failures if r != rank)  # type: ignore[attr-defined]
    stopped = f"; ranks {others} stopped with it" if others else ""
    codes = {f.exitcode for f in exc.failures.values()}  # type: ignore[attr-defined]
    exit_code = codes.pop() if len(codes) == 1 and 0 < failure.exitcode < 128 else 1
    return LaunchError(
        f"rank {rank} (pid {failure.pid}) {how}{where}{stopped}. Re-run the same command to resume "
        "from the last complete checkpoint (with any number of processes)",
        exit_code,
    )


def running_stage(run_path: Path) -> str | None:
    """The stage of the run left ``running`` (the one a killed process was in), else one marked
    ``failed`` by this attempt, or None."""
    states: dict[str, str] = {}
    for manifest in sorted(run_path.glob(f"*/{MANIFEST}")):
        try:
            states[manifest.parent.name] = read_json(manifest).get("status", "")
        except (OSError, ValueError):
            continue
    for wanted in ("running", "failed"):
        for stage, status in states.items():
            if status == wanted:
                return stage
    return None


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a TCP server could bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
