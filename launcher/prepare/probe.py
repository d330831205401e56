"""What this machine's CPU can do, measured once and kept: the matrix throughput one rank reaches
with its threads in the job's dtype, and the CPU and RAM power CodeCarbon would use. A CPU job's
forecast (:mod:`launcher.plan.forecast`) turns its FLOPs into time and energy with them.

The probe multiplies square matrices for about a second (after a warm-up) and keeps the best
rate; it is cached in ``<LAUNCHER_CACHE>/probe/`` under the CPU's model name, its logical CPU
count, the threads, the dtype and the versions of torch and CodeCarbon, so a machine pays it once.
It runs before any rank starts (`launcher run` plans before it launches), on an idle machine.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional

from launcher.facts.hardware import cpu_model_name
from launcher.plan.types import CpuProbe

PROBE_VERSION = 1
MATMUL_N = 512  # large enough for the BLAS kernels' steady rate, small enough to stay in cache-friendly tiles
MEASURE_S = 1.0


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for lib in ("torch", "codecarbon"):
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = "-"
    return out


def probe_file(dtype: str, threads: int) -> Path:
    from launcher.fs import user_cache_dir

    key = json.dumps({"cpu": cpu_model_name(), "cpus": os.cpu_count(), "threads": threads, "dtype": dtype,
                      "versions": _versions(), "probe": PROBE_VERSION, "n": MATMUL_N}, sort_keys=True)
    return user_cache_dir() / "probe" / f"cpu-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def matmul_gflops(dtype: str, threads: int, n: int = MATMUL_N, seconds: float = MEASURE_S) -> float:
    """The best rate of ``n x n`` matrix products in ``dtype`` with ``threads`` threads, GFLOP/s."""
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
        for _ in range(3):
            a @ b
        best, rounds = 0.0, 5
        for _ in range(rounds):
            it, t0 = 0, time.perf_counter()
            while (el := time.perf_counter() - t0) < seconds / rounds:
                a @ b
                it += 1
            best = max(best, 2.0 * n ** 3 * it / el / 1e9)
        return best
    finally:
        torch.set_num_threads(before)


def codecarbon_power() -> tuple[float, str, float]:
    """(CPU TDP W, where it came from, RAM W) as CodeCarbon finds them on this machine: its TDP table
    for the CPU's model (or its default per thread), its RAM model for the machine's memory."""
    import logging

    from codecarbon.core.cpu import TDP, detect_cpu_model
    from codecarbon.external.ram import RAM

    logging.getLogger("codecarbon").setLevel(logging.ERROR)  # after the import, which sets its own level
    table = TDP()
    model = detect_cpu_model() or "unknown CPU"
    tdp = table._get_cpu_power_from_registry(model)
    if tdp:
        source = f"CodeCarbon's TDP table for {model!r}: {tdp:g} W"
    else:
        model, tdp = table._main()
        source = (f"CodeCarbon's default for a CPU not in its table ({model!r}): 4 W per thread = {tdp:g} W" if tdp
                  else f"CodeCarbon's default 85 W ({model!r} not in its table)")
        tdp = tdp or 85.0
    ram_w = float(RAM(tracking_mode="machine").total_power().kW) * 1000.0
    return float(tdp), source, ram_w


def cpu_probe(dtype: str, threads: int, *, refresh: bool = False) -> Optional[CpuProbe]:
    """This machine's CpuProbe for ``dtype`` and ``threads`` per rank, from the cache or measured
    now (a few seconds: torch and CodeCarbon are imported). None where it cannot be measured."""
    path = probe_file(dtype, threads)
    if not refresh:
        try:
            return CpuProbe.model_validate_json(path.read_text())
        except (OSError, ValueError):
            pass
    try:
        gflops = matmul_gflops(dtype, threads)
        tdp, tdp_source, ram_w = codecarbon_power()
    except Exception:  # noqa: BLE001 - a forecast without the probe says what it misses; never fatal
        return None
    probe = CpuProbe(cpu_model=cpu_model_name(), logical_cpus=os.cpu_count() or 1, threads=threads, dtype=dtype,
                     matmul_gflops=gflops, matmul_n=MATMUL_N, cpu_tdp_w=tdp, cpu_tdp_source=tdp_source, ram_w=ram_w,
                     torch_version=_versions()["torch"], measured_at=time.time(), cache_file=str(path))
    try:
        from launcher.fs import write_atomic

        write_atomic(path, probe.model_dump_json(indent=2) + "\n")
    except OSError:
        pass
    return probe


__all__ = ["cpu_probe", "matmul_gflops", "probe_file"]
