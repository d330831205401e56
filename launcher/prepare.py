"""Preparation: from a validated job to a run directory on disk, between the CLI and the
executors. Device resolution, model info, paths, counting the training rows, planning once,
rendering the launch files and writing them. The CLI parses, calls these and prints.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from launcher import rundir
from launcher.errors import JobError


def resolve_device(spec, requested: Optional[str] = None, *, probe: bool = False) -> str:
    """cluster.device (or --device) with "auto" resolved. ``probe`` looks at this machine's
    GPUs (imports torch: only `run` does that); otherwise auto means the cluster's GPUs."""
    dev = requested or spec.cluster.device
    if dev != "auto":
        return dev
    if not probe:
        return "cuda"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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


def with_procs(spec, device: str, nproc: Optional[int]):
    """The job with ``--nproc-per-node`` applied to the field the device uses."""
    if nproc is None:
        return spec
    key = "gpus_per_node" if device == "cuda" else "cpu_procs_per_node"
    return spec.model_copy(update={"cluster": spec.cluster.model_copy(update={key: nproc})})


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


def plan_without_data(spec, device: str, *, cpu_count: Optional[int] = None, here: bool = True, **plan_kw):
    """(job with absolute paths, its plan): everything but the steps, which need the data. The
    forecast's carbon intensity is CodeCarbon's for the job's country; ``plan_kw`` go to plan_job
    (``calibration``). ``here``: the job runs on this machine (its RAM is the node's)."""
    from launcher.plan import plan_job
    from launcher.sources import absolute_paths, model_info

    from launcher.report.carbon import carbon_intensity

    spec = absolute_paths(spec)
    intensity, source = carbon_intensity(spec.report.country_iso_code)
    plan = plan_job(spec, device=device, model_info=model_info(spec), cpu_count=cpu_count,
                    host_memory_bytes=node_ram_bytes(spec, here=here), carbon_intensity=intensity, carbon_source=source, **plan_kw)
    check_attention(plan)
    return spec, plan


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


def check_resume(run_dir: Path, plan) -> Optional[str]:
    """A run directory resumed with another world size: FSDP2 reshards its checkpoint
    (torch.distributed.checkpoint), and the note says so; a ZeRO checkpoint is refused before
    any rank starts, naming both sizes. Never a silent change of plan.json."""
    from launcher.train.checkpoint import latest_checkpoint

    if not rundir.is_run_dir(run_dir) or latest_checkpoint(run_dir) is None:
        return None
    before = rundir.read_plan(run_dir)
    if before.world_size == plan.world_size:
        return None
    if plan.strategy != "fsdp" or before.strategy != "fsdp":
        key = "cluster.gpus_per_node" if plan.device == "cuda" else "cluster.cpu_procs_per_node"
        raise JobError(f"world size: {run_dir} holds a checkpoint written by {before.world_size} ranks and this "
                       f"launch has {plan.world_size}; DeepSpeed ZeRO checkpoints are not resharded here: "
                       f"resume with {before.world_size} ranks ({key}, cluster.nodes or --nproc-per-node)")
    return (f"world size {before.world_size} -> {plan.world_size}: FSDP2 reshards the checkpoint "
            f"(global batch {plan.global_batch_size} unchanged: micro {plan.micro_batch_size} x accum "
            f"{plan.grad_accum_steps} x {plan.world_size})")


def fetch_hub(spec, echo=None) -> dict[str, str]:
    """The job's hub ids (model, tokenizer, data set) into the local Hugging Face cache, once,
    before planning and before any rank starts: {field: snapshot folder}. The ranks find them
    there with HF_HUB_OFFLINE=1 (render_env); offline, a missing one is one line."""
    from launcher.sources import hub_refs

    refs = hub_refs(spec)
    if not refs:  # local paths and the demo: not even huggingface_hub's download code is imported
        return {}
    from launcher.hub import fetch

    return fetch(refs, echo=echo)


def count_rows(spec, cache_dir: Path) -> int:
    """Tokenize (and pack) once into ``cache_dir``, before any process group exists: the
    training rows the plan turns into steps. The ranks read the same cache."""
    from launcher.train.data import prepare_data, read_tokenizer
    from launcher.sources import job_paths, require_model_folder

    require_model_folder(spec)  # the ranks load it: one line here, not a traceback per rank
    paths = job_paths(spec)
    return len(prepare_data(spec, read_tokenizer(spec, paths.tokenizer), paths.data, cache_dir).train)


def plan_run(spec, device: str, run_dir: Path, *, with_data: bool = True):
    """The plan of a local run, data counted into RUN_DIR/cache (the batch arithmetic and the
    job's other rules are checked first, before any file is read)."""
    spec, plan = plan_before_data(spec, device, fetch=with_data)
    return plan_with_data(spec, plan, run_dir) if with_data else plan


def plan_before_data(spec, device: str, *, fetch: bool = True):
    """(spec, plan) of a local run before its data is read: every rule but the count of training
    rows checked, the hub ids fetched (``fetch``; not for --dry-run, which downloads nothing).
    torchrun's command line and environment are already final (they depend on the ranks, the
    device and the threads, not on the rows): `launcher run` starts the ranks from here, and they
    import their libraries while :func:`plan_with_data` tokenizes."""
    check_nvme_here(spec)
    check_trackers_here(spec)
    if fetch:
        fetch_hub(spec)
    return plan_without_data(spec, device, cpu_count=os.cpu_count())


def plan_with_data(spec, plan, run_dir: Path):
    """``plan`` with its training rows counted: the data tokenized into RUN_DIR/cache."""
    from launcher.plan import with_train_rows

    return with_train_rows(plan, count_rows(spec, rundir.RunDir(run_dir).cache))


def prestart_hint(plan) -> dict:
    """What a rank started before its plan is written imports while it waits
    (launcher.train.prestart): the engine's modules and the model's (by its config's
    model_type)."""
    import json

    from launcher.sources import job_paths

    try:
        model_type = json.loads((Path(job_paths(plan.job).model) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None  # the ranks find out, after the plan; nothing is warmed for it here
    return {"strategy": plan.strategy, "zero_stage": plan.zero_stage, "method": plan.job.train.method,
            "model_type": model_type if isinstance(model_type, str) else None}


def local_launch_files(plan, run_dir: Path) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """(torchrun argv, environment, files to write) of a run on this node."""
    from launcher.render.torchrun import default_torchrun, render_env, render_launch_script, render_torchrun_argv

    argv = render_torchrun_argv(plan, str(run_dir), torchrun=default_torchrun())
    env = render_env(plan, run_dir=str(run_dir))
    return argv, env, {**engine_files(plan), rundir.LAUNCH_SH: render_launch_script(argv, env)}


def engine_files(plan) -> dict[str, str]:
    """ds_config.json for ZeRO (what `launcher ds-config` writes for the job); nothing for FSDP2."""
    from launcher.render.deepspeed import render_ds_config

    return {rundir.DS_CONFIG: render_ds_config(plan.ds_config)} if plan.ds_config is not None else {}


def host_names(hosts: str) -> list[str]:
    names = [h.strip() for h in hosts.split(",") if h.strip()]
    if not names:
        raise JobError("--hosts: give at least one host name, e.g. --hosts node1,node2")
    return names


def hosts_launch_files(spec, device: str, names: Sequence[str], run_dir: Path):
    """(plan, files): one launch script per host, c10d on the first, for ssh/pdsh clusters."""
    from launcher.render.torchrun import default_torchrun, render_env, render_launch_script, render_torchrun_argv

    spec = spec.model_copy(update={"cluster": spec.cluster.model_copy(update={"nodes": len(names),
                                                                              "hosts": list(names)})})
    check_trackers_here(spec)
    fetch_hub(spec)  # on this node: the hosts share its Hugging Face cache, or fill theirs with launcher fetch
    spec, plan = plan_without_data(spec, device, cpu_count=os.cpu_count())
    endpoint = f"{names[0]}:{spec.cluster.master_port}"
    files = engine_files(plan)
    for i, host in enumerate(names):
        argv = render_torchrun_argv(plan, str(run_dir), rdzv_endpoint=endpoint, rdzv_id=run_dir.name,
                                    node_rank=str(i), local_addr=host, torchrun=default_torchrun())
        finish = (str(rundir.RunDir(run_dir).completed),
                  [sys.executable, "-m", "launcher", "report", str(run_dir), "--finish"]) if i == 0 else None
        files[rundir.RunDir(run_dir).host_launch(i, host).name] = render_launch_script(argv, render_env(plan, run_dir=str(run_dir)),
                                                                     finish=finish)
    return plan, files


def slurm_files(spec, run_dir: str, *, python: str, extra_train_args: Sequence[str] = ()):
    """(plan, files) of a Slurm run: job.sbatch and the engine config. "auto" means the cluster's
    GPUs (this machine, a login node, says nothing about them); threads per rank on CPU come from
    the CPUs the job asks for per node, not from this machine."""
    from launcher.render.slurm import render_sbatch

    check_trackers_here(spec)  # the nodes run this Python environment (sys.executable)
    spec, plan = plan_without_data(spec, resolve_device(spec), cpu_count=spec.cluster.slurm.cpus_per_task, here=False)
    script = render_sbatch(plan, run_dir, python=python, extra_train_args=list(extra_train_args))
    return plan, {**engine_files(plan), rundir.SBATCH: script}


def clear_run_outputs(run_dir: Path) -> None:
    """What a run produced (checkpoints, final model, metrics, energy, reports, markers, tracker
    runs), removed before it trains again from step 0 (`launcher run --start-over`). The job, the
    plan, the tokenized data and the logs stay."""
    import shutil

    folders, files = rundir.RunDir(run_dir).outputs()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    for file in files:
        file.unlink(missing_ok=True)


def clear_stop_markers(run_dir: Path) -> list[str]:
    """The last attempt's ``STOP`` and ``PREEMPTED`` markers, removed before a resumed run's first
    step, as the Slurm batch script does before each attempt (a stale ``STOP`` would stop the
    resumed run at its first step). Returns the names removed."""
    removed = []
    for marker in (rundir.RunDir(run_dir).stop, rundir.RunDir(run_dir).preempted):
        if marker.exists():
            marker.unlink()
            removed.append(marker.name)
    return removed


def preflight_failure(run_dir: Path, since: float) -> Optional[str]:
    """The line of a preflight that failed after ``since`` (logs/preflight.json), or None."""
    from launcher.rundir.artifacts import DamagedFile, Preflight, read_model

    try:
        report = read_model(Preflight, rundir.RunDir(run_dir).preflight_json, missing_ok=True)
    except DamagedFile:
        return None
    if report is not None and not report.ok and report.time >= since and report.error:
        return report.error
    return None


def latest_run_dir(spec) -> Optional[Path]:
    runs = [p for p in Path(spec.output_dir).glob(f"{spec.name}-*") if rundir.is_run_dir(p)]
    return max(runs, key=lambda p: p.stat().st_mtime).resolve() if runs else None
