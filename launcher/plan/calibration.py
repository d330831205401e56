"""Which earlier run a forecast scales from, and how: pure functions of the calibration history's
points (:class:`launcher.plan.types.CalibrationPoint`, kept by :mod:`launcher.report.history`)
and the plan.

Only runs on the same kind of device count (the same GPU name, or the same CPU model). Among
them the nearest is the one of least ``distance``, a sum of

* ``|ln(a / b)|`` for the parameters, the sequence length, the micro batch, the world size and
  the threads per rank (a run twice the size is as far as one half the size);
* 1 for another task (causal LM or classification), strategy, method, dtype, offload or
  host-memory mode (lean gives the host's memory back after every step: slower on CPU); 0.5 for
  another ZeRO stage, activation checkpointing or packing;

the newest first among equals. The forecast then scales the point's measured step time by the
FLOPs each rank computes per step (``tokens_per_step x (flops_per_token + recompute) / world``),
and its energy per token by the time per token and the devices drawing power.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

from launcher.plan.types import Calibration, CalibrationPoint, Plan

LOG_FEATURES = ("n_params", "seq_len", "micro_batch_size", "world_size", "threads_per_rank")
DIFFERENT = {"task": 1.0, "strategy": 1.0, "method": 1.0, "dtype": 1.0, "offload": 1.0, "host_memory": 1.0,
             "zero_stage": 0.5, "activation_checkpointing": 0.5, "packing": 0.5}


def offload_label(plan: Plan) -> str:
    p = plan.job.parallel
    parts = [f"optimizer->{p.offload_optimizer}"] if p.offload_optimizer != "none" else []
    if p.offload_params != "none":
        parts.append(f"params->{p.offload_params}")
    return ", ".join(parts) or "none"


def features(plan: Plan) -> dict:
    """The plan's configuration in the terms of a CalibrationPoint."""
    m = plan.model
    return {"n_params": m.n_params if m else None, "seq_len": plan.seq_len, "micro_batch_size": plan.micro_batch_size,
            "world_size": plan.world_size, "threads_per_rank": plan.threads_per_rank, "strategy": plan.strategy,
            "method": plan.job.train.method, "dtype": plan.dtype, "offload": offload_label(plan),
            "zero_stage": plan.zero_stage, "activation_checkpointing": plan.job.train.activation_checkpointing,
            "packing": plan.job.data.packing, "host_memory": plan.host_memory, "task": plan.job.train.task}


def distance(point: CalibrationPoint, plan: Plan, device_kind: Optional[str]) -> Optional[float]:
    """How far ``point``'s configuration is from ``plan``'s; None when it ran on another kind of device."""
    if point.device != plan.device or not device_kind or point.device_kind != device_kind:
        return None
    mine = features(plan)
    d = 0.0
    for key in LOG_FEATURES:
        a, b = getattr(point, key), mine[key]
        if a and b:
            d += abs(math.log(a / b))
        elif a != b:
            d += 1.0
    for key, weight in DIFFERENT.items():
        if getattr(point, key) != mine[key]:
            d += weight
    return round(d, 4)


def nearest(points: Iterable[CalibrationPoint], plan: Plan, device_kind: Optional[str]) -> Optional[Calibration]:
    """The history's nearest point to ``plan`` as a Calibration (source history), or None."""
    best: Optional[tuple[float, float, CalibrationPoint]] = None
    for p in points:
        d = distance(p, plan, device_kind)
        if d is not None and (best is None or (d, -p.finished_at) < (best[0], best[1])):
            best = (d, -p.finished_at, p)
    return from_point(best[2], "history", best[0]) if best else None


def from_point(point: CalibrationPoint, source: str, distance_: Optional[float]) -> Calibration:
    return Calibration(run_dir=point.run_dir, source=source, distance=distance_,
                       tokens_per_s_per_device=point.tokens_per_s_per_device,
                       energy_per_token_j=point.energy_per_token_j, pue=point.pue, world_size=point.world_size,
                       strategy=point.strategy, zero_stage=point.zero_stage, accelerator=point.device_kind, point=point)


def scaled_step_time(point: CalibrationPoint, tokens_per_step: int, flops_per_token: float, world: int) -> float:
    """``point``'s step time for a step of ``tokens_per_step`` tokens of ``flops_per_token`` each over
    ``world`` ranks: in proportion to the FLOPs each rank computes per step."""
    mine = tokens_per_step * flops_per_token / world
    theirs = point.tokens_per_step * point.flops_per_token / point.world_size
    return point.step_time_s * mine / theirs


def scaled_energy_per_token(point: CalibrationPoint, step_time_s: float, tokens_per_step: int, world: int) -> float:
    """``point``'s energy per token for a job whose step takes ``step_time_s`` for ``tokens_per_step``
    tokens on ``world`` devices: each device draws the power it drew there, for the time per token."""
    assert point.energy_per_token_j is not None
    per_token_then = point.step_time_s / point.tokens_per_step
    per_token_now = step_time_s / tokens_per_step
    return point.energy_per_token_j * (per_token_now / per_token_then) * (world / point.world_size)


__all__ = ["distance", "features", "from_point", "nearest", "offload_label", "scaled_energy_per_token",
           "scaled_step_time"]
