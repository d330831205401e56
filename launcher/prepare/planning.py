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


def plan_without_data(spec, device: str, *, cpu_count: Optional[int] = None, here: bool = True,
                      calibrate: Optional[str] = None, history: bool = True, probe: bool = True,
                      absolute: bool = True, **plan_kw):
    """(job with absolute paths, its plan): everything but the steps, which need the data. The
    forecast's carbon intensity is CodeCarbon's for the job's country; a CPU job that runs here
    is forecast from this machine's probe (launcher.prepare.probe); the forecast scales from the
    run ``calibrate`` names, else from the nearest run of the calibration history (unless not
    ``history``). ``plan_kw`` go to plan_job. ``here``: the job runs on this machine (its RAM is
    the node's, its CPU the one probed); ``probe``: the forecast will have steps to time (a plan
    that will not, `launcher plan` without train.max_steps or --with-data, skips the probe).
    ``absolute``: paths that exist here are made absolute (not for pods, which see their own files)."""
    from launcher.plan import plan_job
    from launcher.sources import absolute_paths, model_info

    from launcher.report.carbon import carbon_intensity

    if absolute:
        spec = absolute_paths(spec)
    intensity, source = carbon_intensity(spec.report.country_iso_code)
    cpu = None
    if here and probe and device == "cpu":
        from launcher.prepare.probe import cpu_probe

        procs = spec.cluster.cpu_procs_per_node
        cpu = cpu_probe(spec.model.dtype, max(1, (cpu_count or os.cpu_count() or 1) // procs))
    plan = plan_job(spec, device=device, model_info=model_info(spec), cpu_count=cpu_count,
                    host_memory_bytes=node_ram_bytes(spec, here=here), carbon_intensity=intensity,
                    carbon_source=source, cpu=cpu, **plan_kw)
    check_attention(plan)
    return spec, calibrated(plan, calibrate, history)


def device_kind(plan) -> Optional[str]:
    """What the calibration history calls the plan's device (launcher.report.history.device_kind):
    the GPU's key (H100-SXM), or this CPU's model (known only where the job runs: the probe's)."""
    from launcher.report.history import device_kind as kind

    if plan.device == "cuda":
        return kind("cuda", plan.job.cluster.accelerator)
    return plan.forecast.cpu.cpu_model if (plan.forecast and plan.forecast.cpu) else None


def calibrated(plan, calibrate: Optional[str], history: bool):
    """``plan`` forecast from the run ``calibrate`` names, or from the history's nearest run."""
    from launcher.plan import with_forecast
    from launcher.plan.calibration import distance, from_point, nearest

    kind = device_kind(plan)
    if calibrate:
        from launcher.report.history import point_of

        point = point_of(calibrate)
        return with_forecast(plan, calibration=from_point(point, "--calibrate", distance(point, plan, kind)))
    if not history:
        return plan
    from launcher.report.history import read_points

    cal = nearest(read_points(), plan, kind)
    return with_forecast(plan, calibration=cal) if cal else plan


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
    from launcher.train.data import prepare_job_data

    require_model_folder(spec)  # the ranks load it: one line here, not a traceback per rank
    paths = job_paths(spec)
    return len(prepare_job_data(spec, paths, paths.tokenizer, cache_dir, store=user_cache_dir() / "data").train)


def plan_run(spec, device: str, run_dir: Path, *, with_data: bool = True, **forecast_kw):
    """The plan of a local run, data counted into RUN_DIR/cache (the batch arithmetic and the
    job's other rules are checked first, before any file is read). ``forecast_kw``: ``calibrate``,
    ``history`` (plan_without_data)."""
    spec, plan = plan_before_data(spec, device, fetch=with_data, **forecast_kw)
    return plan_with_data(spec, plan, run_dir) if with_data else plan


def plan_before_data(spec, device: str, *, fetch: bool = True, **forecast_kw):
    """(spec, plan) of a local run before its data is read: every rule but the count of training
    rows checked, the hub ids fetched (``fetch``; not for --dry-run, which downloads nothing).
    torchrun's command line and environment are already final (they depend on the ranks, the
    device and the threads, not on the rows): `launcher run` starts the ranks from here, and they
    import their libraries while :func:`plan_with_data` tokenizes."""
    check_nvme_here(spec)
    check_trackers_here(spec)
    if fetch:
        fetch_hub(spec)
    return plan_without_data(spec, device, cpu_count=os.cpu_count(), **forecast_kw)


def plan_with_data(spec, plan, run_dir: Path):
    """``plan`` with its training rows counted: the data tokenized into RUN_DIR/cache."""
    from launcher.plan import with_train_rows

    return with_train_rows(plan, count_rows(spec, rundir.RunDir(run_dir).cache))


def with_best_start(plan, window_s: float, now: Optional[float] = None):
    """``plan`` with its forecast's best start within ``window_s`` seconds from ``now`` (default:
    the clock), from ``report.intensity_forecast``. One JobError when the job names no forecast
    CSV, when its forecast has no duration or energy, or when the CSV does not cover now."""
    import time

    from launcher.errors import JobError
    from launcher.plan.start import best_start, iso
    from launcher.report.carbon import read_intensity_forecast

    csv_path = plan.job.report.intensity_forecast
    if not csv_path:
        raise JobError("--start-window: the job names no hourly intensity forecast; set report.intensity_forecast "
                       "to a CSV of timestamp,g_co2e_per_kwh (Electricity Maps, WattTime, UK Carbon Intensity API)")
    f = plan.forecast
    if f is None or f.hours is None or f.kwh is None:
        why = "; ".join(f.missing) if f and f.missing else "no forecast"
        raise JobError(f"--start-window: the forecast has no duration and energy to place ({why})")
    series = read_intensity_forecast(csv_path)
    now = time.time() if now is None else now
    best = best_start(series, now, f.hours * 3600.0, f.kwh, window_s, source=str(csv_path))
    if best is None:
        raise JobError(f"report.intensity_forecast: {csv_path}: covers {iso(series[0][0])} to {iso(series[-1][0])}, "
                       f"not a job of {f.hours:.3g} h started now ({iso(now)}); export a forecast that starts "
                       "before now and spans the window")
    return plan.model_copy(update={"forecast": f.model_copy(update={"best_start": best})})
