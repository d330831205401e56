"""What faults cost and who was slow, from the typed records (pure: nothing here reads a file).

* restarts: attempts after the first one, automatic (torchrun's restart count, from the start
  records) or requeues and manual resumes; the steps they redid.
* stragglers: each rank's compute time per step (its time outside collectives; the rest of the
  step is waiting for other ranks); a table per rank, the slowest rank, its node, and the spread.
* allocation: what Slurm allocated (sacct: every attempt's elapsed time x GPUs, or x the ranks on
  a CPU cluster), next to what the trainer measured.
"""
from __future__ import annotations

import statistics
from typing import Any, Optional, Sequence

from launcher.rundir import MemoryRecord, StartRecord, TrainRecord
from launcher.rundir.artifacts import SlurmAccounting
from launcher.rundir.report_file import Allocation, Job, RankTime, Restarts, Stragglers, Throughput


def restarts_section(records: Sequence[Any], thr: Throughput) -> Restarts:
    starts = [r for r in records if isinstance(r, StartRecord)]
    return Restarts(
        attempts=len(starts),
        # an attempt torchrun restarted has a higher count than the one before it (a new torchrun: 0)
        automatic_restarts=sum(1 for prev, s in zip([None, *starts], starts) if s.restart > (prev.restart if prev else 0)),
        resumes=sum(1 for s in starts if s.resumed_from_step is not None),
        resumed_from_steps=[s.resumed_from_step for s in starts if s.resumed_from_step is not None],
        redone_steps=thr.redone_steps,
        steps_lost=sum(s.steps_lost for s in starts),
    )


def stragglers_section(steps: Sequence[TrainRecord], memory: Sequence[MemoryRecord]) -> Stragglers:
    per_rank: dict[int, list[float]] = {}
    waits = []
    for s in steps:
        if not s.rank_compute_s:
            continue
        for r, t in enumerate(s.rank_compute_s):
            per_rank.setdefault(r, []).append(t)
        waits.append(max(0.0, s.step_time_s - min(s.rank_compute_s)))
    if not per_rank:
        return Stragglers(available=False, reason="no per-rank step times in metrics.jsonl")
    medians = {r: statistics.median(ts) for r, ts in per_rank.items()}
    hosts = {m.rank: m.host for rec in memory for m in rec.ranks}
    slowest = max(medians, key=medians.get)
    fastest = min(medians, key=medians.get)
    timed = [s for s in steps if s.rank_compute_s]
    step_med = statistics.median(s.step_time_s for s in timed)
    # a rank's wait: the rest of the step, blocked in collectives (launcher.train.collectives times
    # those inside forward and backward too) until the last rank arrives
    table = []
    for r in sorted(per_rank):
        waits_r = [max(0.0, s.step_time_s - s.rank_compute_s[r]) for s in timed if r < len(s.rank_compute_s)]
        table.append(RankTime(rank=r, host=hosts.get(r), compute_median_s=medians[r],
                              wait_median_s=statistics.median(waits_r), compute_s=sum(per_rank[r]), wait_s=sum(waits_r)))
    return Stragglers(
        available=True,
        ranks=len(medians),
        compute_median_s={str(r): medians[r] for r in sorted(medians)},
        per_rank=table,
        slowest_rank=slowest,
        slowest_host=hosts.get(slowest),
        slowest_node=hosts.get(slowest),
        fastest_rank=fastest,
        spread=medians[slowest] / medians[fastest] if medians[fastest] > 0 else None,
        step_median_s=step_med,
        wait_share=max(0.0, 1.0 - statistics.median(medians.values()) / step_med) if step_med > 0 else None,
        max_wait_median_s=statistics.median(waits) if waits else None,
    )


def pods_allocation(pods: list[dict], job: Job, thr: Throughput) -> Allocation:
    """A Kubernetes run's allocated device-hours: every pod from its start to its end (k8s_pods.jsonl,
    written by launcher k8s-node), times the devices it requested."""
    device_s = sum(max(0.0, p["end"] - p["start"]) * (p.get("devices") or 1) for p in pods)
    starts = sorted(p["start"] for p in pods if p.get("node_rank") == 0)
    hours = device_s / 3600.0
    trainer = thr.device_hours
    return Allocation(available=True, source="pods", attempts=len(starts) or 1,
                      states=[f"exit {p['exit']}" for p in pods if p.get("node_rank") == 0],
                      elapsed_s=sum(p["end"] - p["start"] for p in pods if p.get("node_rank") == 0),
                      device_hours=hours, devices_from="the pods' devices (nvidia.com/gpu, or the ranks on CPU)",
                      trainer_device_hours=trainer, trainer_share=(trainer / hours) if trainer and hours else None)


def allocation_section(accounting: Optional[SlurmAccounting], job: Job, thr: Throughput) -> Allocation:
    """Slurm's allocated device-hours over every attempt, or why there are none."""
    if accounting is None or not accounting.attempts:
        return Allocation(available=False, reason="not a Slurm job, or sacct gave no attempts (launcher report "
                                                  "RUN_DIR asks sacct again)")
    attempts = accounting.attempts
    world = int(job.world_size or 1)
    seconds = sum(a.elapsed_s for a in attempts)
    device_s = 0.0
    for a in attempts:
        devices = a.gpus or world  # a CPU cluster allocates no GPUs: the ranks stand in
        device_s += a.elapsed_s * devices
    trainer = thr.device_hours
    hours = device_s / 3600.0
    return Allocation(
        available=True,
        source="sacct",
        job_id=accounting.job_id,
        attempts=len(attempts),
        states=[a.state for a in attempts],
        elapsed_s=seconds,
        device_hours=hours,
        devices_from="AllocTRES gres/gpu" if any(a.gpus for a in attempts) else "ranks (no GPUs allocated)",
        trainer_device_hours=trainer,
        trainer_share=(trainer / hours) if trainer and hours else None,
    )
