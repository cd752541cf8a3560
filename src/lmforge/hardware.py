"""What this machine offers: usable cores, clock, peak matmul FLOP/s, memory, and a description.

Shared by training (thread settings), ``lmforge bench`` (MFU, results file) and ``lmforge plan``
(time and memory estimates). Linux ``/proc`` and cgroup v2 files are read where present; elsewhere
the functions fall back to what ``os`` and ``psutil`` know.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any

MB = 1024**2


def usable_cores() -> int:
    """Physical cores this process may use: its CPU affinity, without hyper-threads, within a cgroup quota."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = allowed
    try:
        import psutil

        logical, physical = psutil.cpu_count(logical=True), psutil.cpu_count(logical=False)
        if logical and physical:
            cores = max(1, allowed * physical // logical)
    except ImportError:
        pass
    try:  # cgroup v2: "max 100000" or "200000 100000" (quota and period in microseconds)
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period) + 0.5)))
    except (OSError, ValueError):
        pass
    return cores


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


def cpu_ghz() -> float:
    """Nominal clock from the CPU's model name (``... @ 2.10GHz``), else the current clock, else 2.0."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore").splitlines()
    except OSError:
        return 2.0
    for line in lines:
        if line.startswith("model name") and "@" in line and line.rstrip().endswith("GHz"):
            try:
                return float(line.split("@")[1].strip().removesuffix("GHz"))
            except ValueError:
                break
    for line in lines:
        if line.startswith("cpu MHz"):
            return float(line.split(":")[1]) / 1000
    return 2.0


def cpu_peak_flops() -> float:
    """This CPU's peak matmul FLOP/s in its best training precision.

    Usable physical cores x nominal GHz x FLOP per cycle and core: 1024 with AMX (bf16), 128 with
    avx512_bf16 only, else the fp32 FMA rate (64 with avx512f, 32 with avx2).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore")
    except OSError:
        flags = ""
    per_cycle = 1024 if "amx_bf16" in flags else 128 if "avx512_bf16" in flags else 64 if "avx512f" in flags else 32
    return usable_cores() * cpu_ghz() * 1e9 * per_cycle


def machine_description() -> dict[str, Any]:
    """CPU model, cores, clock, memory, load and library versions, for the results file."""
    import platform

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    info["cpu"] = cpu_name()
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    info.update(physical_cores=usable_cores(), ghz=cpu_ghz(), peak_tflops=round(cpu_peak_flops() / 1e12, 2))
    for module in ("torch", "transformers", "peft", "trl"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    info["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return info


def memory_mb() -> tuple[float | None, float | None]:
    """(MemTotal, MemAvailable) from /proc/meminfo, capped by a cgroup memory limit; None where unknown."""
    values: dict[str, float] = {}
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                values[key] = int(rest.split()[0]) / 1024
    except (OSError, ValueError):
        return None, None
    total, available = values.get("MemTotal"), values.get("MemAvailable")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text(encoding="utf-8").strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text(encoding="utf-8").strip()) / MB
        if limit != "max":
            total = min(total or math.inf, int(limit) / MB)
            available = min(available or math.inf, int(limit) / MB - used)
    except (OSError, ValueError):
        pass
    return total, available


def release_free_memory() -> bool:
    """Hand memory that Python and torch have freed back to the operating system; True if any went back.

    glibc keeps freed heap memory for reuse, so after a training stage a process keeps the RSS of
    its largest micro-batch (11 GB after the sft of demo-rag) through every stage that follows.
    ``malloc_trim`` returns the free pages inside the heap too. A no-op where libc is not glibc.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
