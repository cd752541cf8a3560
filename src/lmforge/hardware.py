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


ISA_ORDER = ("other", "avx2", "avx512", "avx512_bf16", "amx")
"""CPU matmul instruction sets, weakest first: what decides precision and peak FLOP/s."""
_FLOP_PER_CYCLE = {"amx": 1024, "avx512_bf16": 128, "avx512": 64, "avx2": 32, "other": 16}
"""Matmul FLOP per cycle and core in the best training precision: bf16 with AMX / avx512_bf16, else fp32 FMA."""
_ONEDNN_CAPS = {"SSE41": "other", "AVX": "other", "AVX2": "avx2", "AVX2_VNNI": "avx2", "AVX2_VNNI_2": "avx2"}
_ONEDNN_CAPS |= {"AVX512_CORE": "avx512", "AVX512_CORE_VNNI": "avx512", "AVX512_CORE_BF16": "avx512_bf16"}
_ATEN_CAPS = {"default": "other", "avx2": "avx2", "avx512": "avx512"}


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``); empty where there is none."""
    try:
        return set(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore").split())
    except OSError:
        return set()


def cpu_isa() -> str:
    """The strongest matmul instruction set this process may use: the CPU's flags, lowered by oneDNN's and
    ATen's caps (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``), which emulate a weaker CPU. One of
    :data:`ISA_ORDER`."""
    flags = cpu_flags()
    isa = "other"
    for name, flag in (("avx2", "avx2"), ("avx512", "avx512f"), ("avx512_bf16", "avx512_bf16"), ("amx", "amx_bf16")):
        if flag in flags:
            isa = name
    caps = [_ONEDNN_CAPS.get(os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper())]
    caps.append(_ATEN_CAPS.get(os.environ.get("ATEN_CPU_CAPABILITY", "").lower()))
    for cap in caps:
        if cap is not None and ISA_ORDER.index(cap) < ISA_ORDER.index(isa):
            isa = cap
    return isa


def cpu_has_native_bf16() -> bool:
    """True where bf16 matmuls run natively (AMX, avx512_bf16) for this process; elsewhere they are emulated."""
    return cpu_isa() in ("amx", "avx512_bf16")


def cpu_peak_flops() -> float:
    """This CPU's peak matmul FLOP/s in its best training precision (see :func:`cpu_isa`).

    Usable physical cores x nominal GHz x FLOP per cycle and core: 1024 with AMX (bf16), 128 with
    avx512_bf16 only, else the fp32 FMA rate (64 with avx512f, 32 with avx2).
    """
    return usable_cores() * cpu_ghz() * 1e9 * _FLOP_PER_CYCLE[cpu_isa()]


def peak_precision() -> str:
    """The precision :func:`cpu_peak_flops` counts: ``bf16`` or ``fp32``."""
    return "bf16" if cpu_has_native_bf16() else "fp32"


def machine_description() -> dict[str, Any]:
    """CPU model, cores, clock, memory, load and library versions, for the results file."""
    import platform

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    info["cpu"] = cpu_name()
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    info.update(physical_cores=usable_cores(), ghz=cpu_ghz(), peak_tflops=round(cpu_peak_flops() / 1e12, 2))
    info.update(isa=cpu_isa(), peak_precision=peak_precision())
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


def reset_peak_rss() -> bool:
    """Start this process's peak-RSS count afresh (Linux: ``/proc/self/clear_refs``); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float | None:
    """This process's peak RSS since the last :func:`reset_peak_rss` (``VmHWM``), in MB; None where unknown."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


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
