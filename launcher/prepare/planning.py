"""Planning a job once: the plan without the data (every rule checked), the hub ids fetched, the
training rows counted into RUN_DIR/cache, the plan with them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from launcher import rundir
from launcher.prepare.here import check_attention, check_nvme_here, check_trackers_here, node_ram_bytes


def with_procs(spec, device: str, nproc: Optional[int]):
    """The job with ``--nproc-per-node`` applied to the field the device uses."""
    if nproc is None:
        return spec
    key = "gpus_per_node" if device == "cuda" else "cpu_procs_per_node"
    return spec.model_copy(update={"cluster": spec.cluster.model_copy(update={key: nproc})})


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
    training rows the plan turns into steps. The ranks read the same cache. Data this machine
    prepared before for another run (same files, tokenizer and ``data`` settings) is linked from
    ``<LAUNCHER_CACHE>/data`` without loading the tokenizer."""
    from launcher.fs import user_cache_dir
    from launcher.sources import job_paths, require_model_folder
    from launcher.train.data import prepare_data

    require_model_folder(spec)  # the ranks load it: one line here, not a traceback per rank
    paths = job_paths(spec)
    return len(prepare_data(spec, paths.tokenizer, paths.data, cache_dir, store=user_cache_dir() / "data").train)


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
