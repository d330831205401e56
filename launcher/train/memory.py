"""Memory as each rank feels it: host memory (anonymous RSS, sampled, and the kernel's RSS
high-water), CUDA allocator peaks, and the bytes of the model states counted from the tensors
this rank holds. Rank 0 gathers every rank's figures into a ``memory`` record."""
from __future__ import annotations

import os
import socket
import threading
from typing import Any, Iterable, Optional

SAMPLE_S = 0.02  # Linux keeps no high-water of anonymous memory: a thread samples it


def release_free_memory() -> None:
    """Give the host memory the allocator holds free back to the system (glibc's malloc_trim):
    freed tensors of one size leave holes that tensors of other sizes cannot reuse, and glibc
    keeps them; after loading and between steps that retained memory is a rank's largest
    avoidable cost on CPU. A no-op where there is no glibc."""
    global _trim
    if _trim is None:
        try:
            import ctypes

            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)


_trim = None


def read_status() -> dict[str, int]:
    """RssAnon, VmHWM and VmRSS of this process in bytes (/proc/self/status)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("RssAnon", "VmHWM", "VmRSS"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_rss_anon(fd: Optional[int] = None) -> int:
    """This process's RssAnon in bytes from /proc/self/statm (resident less file-backed and shared
    pages: the kernel's same counters as RssAnon in /proc/self/status), one short line, far
    cheaper to read and parse than status for a sampler that reads it 50 times a second."""
    try:
        if fd is None:
            with open("/proc/self/statm", "rb") as f:
                parts = f.read().split()
        else:
            parts = os.pread(fd, 256, 0).split()
        return (int(parts[1]) - int(parts[2])) * _PAGE
    except (OSError, IndexError, ValueError):
        return read_status().get("RssAnon", 0)


class MemoryMonitor:
    """The high-water of this rank's anonymous memory, sampled every SAMPLE_S seconds by a
    daemon thread (and at every ``sample()`` call), above the baseline taken at start."""

    def __init__(self):
        try:
            self._fd: Optional[int] = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self._fd = None
        self.baseline = read_status().get("RssAnon", 0)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="launcher-memory", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def sample(self) -> int:
        now = read_rss_anon(self._fd)
        if now > self.peak:
            self.peak = now
        return now

    def rebaseline(self) -> None:
        """Take the baseline again, now, and forget the peak so far: what came before (rank 0's
        accuracy pass on a model of its own, and the libraries it imported: datasets, generation)
        is not what the peak measures."""
        self.baseline = self.peak = read_rss_anon(self._fd)

    def stop(self) -> None:
        self._stop.set()

    def figures(self) -> dict[str, Any]:
        self.sample()
        st = read_status()
        out: dict[str, Any] = {"rss_anon_baseline_bytes": self.baseline, "rss_anon_peak_bytes": self.peak,
                               "vm_hwm_bytes": st.get("VmHWM", 0)}
        try:
            import torch

            if torch.cuda.is_available() and torch.cuda.is_initialized():
                out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
                out["cuda_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
        except Exception:  # noqa: BLE001 - figures are best effort, never fatal
            pass
        return out


def _local(t):
    """The storage this rank holds for a tensor: a DTensor's shard, a ZeRO-3 parameter's partition."""
    ds = getattr(t, "ds_tensor", None)
    if ds is not None:
        return ds
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def tensor_bytes(tensors: Iterable, seen: set) -> int:
    total = 0
    for t in tensors:
        if t is None:
            continue
        local = _local(t)
        key = (local.untyped_storage().data_ptr(), local.storage_offset(), local.numel(), local.dtype)
        if key in seen or local.numel() == 0:
            continue
        seen.add(key)
        total += local.numel() * local.element_size()
    return total


def innermost_optimizer(opt):
    """The torch optimizer under DeepSpeed's wrappers (the one that owns Adam's states)."""
    while hasattr(opt, "optimizer") and opt.optimizer is not opt:
        opt = opt.optimizer
    return opt


def model_state_bytes(module_params: Iterable, optimizer) -> dict[str, int]:
    """Bytes of params (this rank's module parameters), grads (of what the optimizer steps) and
    optimizer (its states, plus master weights it keeps apart from the module's parameters)."""
    seen: set = set()
    params = tensor_bytes(module_params, seen)
    opt = innermost_optimizer(optimizer)
    stepped = [p for g in opt.param_groups for p in g["params"]]
    master = tensor_bytes(stepped, seen)
    grads = tensor_bytes((p.grad for p in stepped), seen)
    states = tensor_bytes((v for st in opt.state.values() for v in st.values() if hasattr(v, "numel")), seen)
    return {"params_bytes": params, "grads_bytes": grads, "optimizer_bytes": master + states}


class StateCounter:
    """Counts the model states when the optimizer steps (grads and Adam's states both exist
    then), on the first ``steps`` optimizer steps; the last count stays in ``counts``."""

    def __init__(self, module_params_fn, optimizer, steps: int = 2):
        self.counts: Optional[dict[str, int]] = None
        self._left = steps
        self._fn = module_params_fn
        self._opt = optimizer
        self._handle = innermost_optimizer(optimizer).register_step_pre_hook(self._hook)

    def _hook(self, *args: Any) -> None:  # noqa: ARG002
        self.counts = model_state_bytes(self._fn(), self._opt)
        self._left -= 1
        if self._left <= 0:
            self._handle.remove()


def gather_memory(monitor: MemoryMonitor, counts: Optional[dict[str, int]]) -> Optional[list[dict]]:
    """Every rank's figures on rank 0 (None elsewhere). Collective."""
    import torch.distributed as dist

    mine = {"rank": dist.get_rank(), "host": socket.gethostname(), **monitor.figures(), **(counts or {})}
    allr: list = [None] * dist.get_world_size()
    dist.all_gather_object(allr, mine)
    return sorted(allr, key=lambda r: r["rank"]) if dist.get_rank() == 0 else None


__all__ = ["MemoryMonitor", "StateCounter", "gather_memory", "model_state_bytes", "read_status"]
