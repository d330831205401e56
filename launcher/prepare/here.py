"""What this machine can run, checked before anything starts: the device, bf16, DeepSpeed's async
I/O op for NVMe offload, the trackers' packages, the node's RAM, the attention for packing."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from launcher.errors import JobError


def resolve_device(spec, requested: Optional[str] = None, *, probe: bool = False, planning: bool = False) -> str:
    """cluster.device (or --device) with "auto" resolved as `launcher run` resolves it on the
    machine that runs the job. ``probe`` (`run`): auto is cuda when this machine has a visible
    GPU, else cpu. ``planning`` (`plan`, `ds-config`): the same, unless ``cluster.accelerator``
    names a GPU (a job planned on a login node for the cluster's GPUs: cuda). Neither (a Slurm
    batch script, whose nodes are the cluster's): auto means the cluster's GPUs."""
    dev = requested or spec.cluster.device
    if dev != "auto":
        return dev
    if planning and spec.cluster.accelerator:
        return "cuda"
    if not (probe or planning):
        return "cuda"
    return "cuda" if gpu_visible_here() else "cpu"


def gpu_visible_here() -> bool:
    """torch.cuda.is_available(), without importing torch where no NVIDIA device can be there
    (no /dev/nvidia0 and no /proc/driver/nvidia: no driver), or CUDA_VISIBLE_DEVICES hides them all."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if not (os.path.exists("/dev/nvidia0") or os.path.isdir("/proc/driver/nvidia")):
        return False
    import torch

    return torch.cuda.is_available()


def check_device_here(device: str) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise JobError("cluster.device: cuda was asked for but this machine has no visible GPU; "
                           "use cluster.device=cpu (gloo) or auto")


def bf16_problem(dtype: str, device: str, capability: Optional[tuple[int, int]]) -> Optional[str]:
    """model.dtype bf16 on a GPU without bf16 arithmetic (compute capability below 8.0, before
    Ampere): torch would emulate it slowly or fail in a kernel. ``capability`` is the GPU's."""
    if dtype == "bf16" and device == "cuda" and capability is not None and capability < (8, 0):
        return (f"model.dtype: bf16 needs a GPU of compute capability 8.0 or more (Ampere), and this one has "
                f"{capability[0]}.{capability[1]}; use model.dtype=fp16 with parallel.strategy=zero, or fp32")
    return None


def check_precision_here(spec, device: str) -> None:
    """The job's dtype is one this machine's device computes in (`launcher run` on this node)."""
    capability = None
    if device == "cuda" and spec.model.dtype == "bf16":
        import torch

        if torch.cuda.is_available():
            capability = tuple(torch.cuda.get_device_capability(0))
    problem = bf16_problem(spec.model.dtype, device, capability)
    if problem:
        raise JobError(problem)


def async_io_buildable() -> bool:
    """Whether DeepSpeed can build its async I/O op (``async_io``, what NVMe offload swaps with)
    here: its own compatibility check (libaio's headers and library). The check compiles a probe
    and prints through the process's file descriptors, which are pointed at /dev/null meanwhile."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    streams = sys.stdout, sys.stderr
    null = open(os.devnull, "w")  # the check calls sys.stderr.fileno(): a real file, not a capture
    try:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        sys.stdout = sys.stderr = null
        from deepspeed.ops.op_builder import AsyncIOBuilder

        return bool(AsyncIOBuilder().is_compatible(verbose=False))
    finally:
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        null.close()


def check_nvme_buildable(spec) -> None:
    """NVMe offload needs DeepSpeed's async I/O op: refused in one line, naming what to install,
    where it cannot be built (every rank would fail at its first swap, after the queue wait)."""
    par = spec.parallel
    if spec.parallel.strategy != "zero" or "nvme" not in (par.offload_optimizer, par.offload_params):
        return
    if not async_io_buildable():
        key = "offload_optimizer" if par.offload_optimizer == "nvme" else "offload_params"
        raise JobError(f"parallel.{key}: nvme needs DeepSpeed's async I/O op (async_io), which cannot be built "
                       "here (DeepSpeed's check compiles and links a call to libaio's io_submit); install a C "
                       "compiler and libaio's headers and library (Debian, Ubuntu: apt-get install libaio-dev; "
                       "RHEL, Rocky: dnf install libaio-devel), or offload to cpu")


def check_nvme_here(spec) -> None:
    """A run on this node that offloads to NVMe: parallel.nvme_path is a folder here (DeepSpeed
    would fail in every rank, after the model loaded), and the async I/O op can be built."""
    check_nvme_buildable(spec)
    par = spec.parallel
    if "nvme" in (par.offload_optimizer, par.offload_params) and par.nvme_path \
            and not Path(par.nvme_path).expanduser().is_dir():
        raise JobError(f"parallel.nvme_path: {par.nvme_path} is not a folder on this machine; create it on a "
                       "local NVMe drive (mkdir -p) or point parallel.nvme_path at one")


def check_trackers_here(spec) -> None:
    """report.trackers: each tracker can start here (its package is installed, its URI or folder
    is one it accepts): rank 0 starts them after the queue wait, too late to find out."""
    from launcher.tracker_checks import tracker_problems

    problems = tracker_problems(spec.report.trackers)
    if problems:
        raise JobError(*problems)


_SBATCH_MEM_UNITS = {"": 2**20, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def node_ram_bytes(spec, *, here: bool = True) -> Optional[int]:
    """A node's memory: ``cluster.slurm.mem`` (sbatch units: M when none is given) where the job
    asks for it, else this machine's MemTotal when the job runs ``here``, else unknown."""
    mem = spec.cluster.slurm.mem
    if mem:
        import re

        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(mem).upper())
        return int(float(m.group(1)) * _SBATCH_MEM_UNITS[m.group(2)]) if m else None
    if not here:
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_attention(plan) -> None:
    """Before any rank starts: the attention kernel is installed, and a packed run keeps its
    documents apart with it (launcher.facts.packing)."""
    impl = plan.job.model.attn_implementation
    if impl.startswith("flash_attention"):
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise JobError(f"model.attn_implementation: {impl} needs the flash-attn package and a CUDA GPU, "
                           "and this machine has not both; use sdpa (the default)")
    if plan.job.data.packing:
        from launcher.facts.packing import packing_problem

        problem = packing_problem(impl, plan.micro_batch_size)
        if problem:
            raise JobError(problem)
