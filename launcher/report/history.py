"""The calibration history: every completed run's configuration and what it measured (step time,
tokens/s per device, energy per token), one JSON line each in
``<LAUNCHER_CACHE>/calibration.jsonl``. The job's last step appends to it
(:func:`launcher.execute.finish.finish_run`); `launcher plan` and `launcher run` forecast from
its nearest point (:func:`launcher.plan.calibration.nearest`); ``--calibrate RUN_DIR`` reads one
run the same way (:func:`point_of`).

A run's energy counts only when CodeCarbon measured most of its training (short runs end
before the node's tracker has taken a reading): otherwise its point has no energy per token.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from launcher.errors import JobError
from launcher.plan.calibration import adapter_work, gathered_bytes, module_fetches, offload_label
from launcher.plan.types import CalibrationPoint

HISTORY_FILE = "calibration.jsonl"
ENERGY_COVERAGE = 0.5  # the tracker's measured seconds over the training steps' seconds, at least


def history_path() -> Path:
    from launcher.fs import user_cache_dir

    return user_cache_dir() / HISTORY_FILE


def device_kind(device: str, name: Optional[str]) -> Optional[str]:
    """A device as the history names it: a GPU by its key in launcher.facts.hardware (H100-SXM for
    "NVIDIA H100 80GB HBM3" as torch names it, and for the job's cluster.accelerator), else as named;
    a CPU by its model name."""
    if device == "cuda" and name:
        from launcher.facts.hardware import match_accelerator

        accel = match_accelerator(name)
        return accel.key if accel else name
    return name


def point_of(run_dir: str | os.PathLike, report=None) -> CalibrationPoint:
    """The CalibrationPoint of a run (its report, built again when not handed in, and its plan).
    A run with no training step is one JobError."""
    from launcher import rundir
    from launcher.report.build import build_report

    run = Path(run_dir).resolve()
    r = report if report is not None else build_report(run)
    plan = rundir.read_plan(run)
    thr, energy, job = r.throughput, r.energy, r.job
    if not thr.steps or not thr.step_time_sum_s:
        raise JobError(f"{run}: the run recorded no training step to calibrate with")
    # the steady step: a run of few steps would otherwise spread its first step's one-off costs
    # over every step (bench/RESULTS.md); those are kept apart, per attempt
    step_s = thr.steady_step_time_s or thr.step_time_sum_s / thr.steps
    ept = None
    if energy.available and energy.energy_per_token_j and energy.duration_s and \
            energy.duration_s >= ENERGY_COVERAGE * thr.step_time_sum_s:
        ept = energy.energy_per_token_j
    return CalibrationPoint(
        run_dir=str(run), finished_at=thr.last_time or os.path.getmtime(run), device=plan.device,
        device_kind=device_kind(plan.device, job.accelerator or plan.job.cluster.accelerator) or "unknown",
        n_params=job.n_params or (plan.model.n_params if plan.model else 0),
        n_trainable_params=job.n_trainable_params or 0, method=job.method, strategy=job.strategy,
        task=plan.job.train.task,
        zero_stage=job.zero_stage, dtype=job.dtype, seq_len=job.seq_len, packing=job.packing,
        micro_batch_size=job.micro_batch_size, grad_accum_steps=job.grad_accum_steps, world_size=job.world_size,
        nodes=job.nodes, threads_per_rank=plan.threads_per_rank,
        activation_checkpointing=plan.job.train.activation_checkpointing, offload=offload_label(plan),
        host_memory=plan.host_memory, gathered_bytes=gathered_bytes(plan), module_fetches=module_fetches(plan),
        adapter_work=adapter_work(plan),
        tokens_per_step=plan.tokens_per_step, flops_per_token=r.mfu.flops_per_token, steps=thr.steps,
        step_time_s=step_s, warmup_s=thr.warmup_s, tokens_per_s_per_device=thr.tokens_per_s_per_device,
        energy_per_token_j=ept,
        pue=energy.pue or 1.0)


def append(run_dir: str | os.PathLike, report=None) -> Optional[CalibrationPoint]:
    """Add a completed run to the history (one line, appended whole). None when it has nothing
    to add (no training step, or the history cannot be written)."""
    try:
        point = point_of(run_dir, report)
    except (JobError, OSError, ValueError):
        return None
    from launcher.fs import append_line

    try:
        append_line(history_path(), point.model_dump_json())  # concurrent appenders do not interleave
    except OSError:
        return None
    return point


def read_points(path: Optional[Path] = None) -> list[CalibrationPoint]:
    """Every point of the history, the newest line of a run directory winning; lines that do not
    parse (another version's, a torn one) are skipped."""
    path = path or history_path()
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    points: dict[str, CalibrationPoint] = {}
    for line in lines:
        try:
            p = CalibrationPoint.model_validate(json.loads(line))
        except (ValueError, TypeError):
            continue
        points[p.run_dir] = p
    return list(points.values())


__all__ = ["append", "history_path", "point_of", "read_points"]
