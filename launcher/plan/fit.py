"""Which settings fit a GPU's memory, best first: strategy x ZeRO stage x offload x micro batch x
activation checkpointing, each planned as the job with ``key.sub=value`` overrides (the very
words ``launcher plan`` accepts), kept when its memory per device leaves ``margin`` of the GPU
free, ranked by forecast tokens/s (cost breaks ties). Pure: every candidate is ``plan_job`` of
the overridden job.

The global batch stays the job's: a micro batch is a candidate when it divides
``global_batch_size / world_size``; the accumulation is what is left over. Dtype, method, LoRA
settings, sequence length and the cluster are not varied.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from launcher.errors import JobError
from launcher.plan.core import plan_job
from launcher.plan.memory import FIT_MARGIN
from launcher.plan.types import Calibration, CpuProbe, ModelInfo, Plan
from launcher.engine_rules import offload_problems
from launcher.spec import JobSpec, apply_overrides, build_job

FORECAST_KEYS = ("steps", "tokens", "hours", "gpu_hours", "kwh", "kg_co2e", "cost", "currency", "mfu_assumed",
                 "tokens_per_s_per_device", "step_time_s")


@dataclass(frozen=True)
class Candidate:
    overrides: tuple[str, ...]
    plan: Plan

    @property
    def total(self) -> int:
        return self.plan.memory.per_device_bytes.total

    def label(self) -> str:
        p = self.plan
        j = p.job.parallel
        name = f"ZeRO-{j.zero_stage}" if p.strategy == "zero" else "FSDP2"
        off = [f"{k} {v}" for k, v in (("opt", j.offload_optimizer), ("params", j.offload_params)) if v != "none"]
        return name + (f" ({', '.join(off)} offload)" if off else "")

    def to_dict(self) -> dict[str, Any]:
        f = self.plan.forecast
        fc = {k: getattr(f, k) for k in FORECAST_KEYS} if f else {}
        if f and f.communication:
            fc["bound"] = f.communication.bound
        return {"overrides": list(self.overrides), "label": self.label(),
                "micro_batch_size": self.plan.micro_batch_size, "grad_accum_steps": self.plan.grad_accum_steps,
                "activation_checkpointing": self.plan.job.train.activation_checkpointing,
                "per_device_bytes_total": self.total,
                "host_per_node_bytes": self.plan.memory.host_per_node_bytes, "forecast": fc}


def layouts(spec: JobSpec, device: str) -> list[tuple[str, ...]]:
    """The parallel settings to try, as overrides (NVMe only when the job names a folder)."""
    devs = ["none", "cpu"] + (["nvme"] if spec.parallel.nvme_path else [])
    out: list[tuple[str, ...]] = []
    for stage in (0, 1, 2, 3):
        for opt in devs:
            for par in devs:
                if offload_problems("zero", stage, opt, par, spec.parallel.nvme_path):
                    continue
                out.append(("parallel.strategy=zero", f"parallel.zero_stage={stage}",
                            f"parallel.offload_optimizer={opt}", f"parallel.offload_params={par}"))
    for par in (["none", "cpu"] if device == "cuda" else ["none"]):
        out.append(("parallel.strategy=fsdp", "parallel.offload_optimizer=none", f"parallel.offload_params={par}"))
    return out


def micro_batches(global_batch: int, world: int) -> list[int]:
    per_rank = global_batch // world if global_batch % world == 0 else 0
    return [m for m in range(1, per_rank + 1) if per_rank % m == 0]


def _preference(c: Candidate) -> tuple:
    """Ties (no forecast, or equal figures): less offload, no recompute, fewer shards, bigger micro."""
    j = c.plan.job
    offload = sum(v != "none" for v in (j.parallel.offload_optimizer, j.parallel.offload_params))
    stage = j.parallel.zero_stage if c.plan.strategy == "zero" else 3.5
    return (offload, j.train.activation_checkpointing, stage, -c.plan.micro_batch_size)


def rank_key(c: Candidate) -> tuple:
    f = c.plan.forecast
    tps = f.tokens_per_s_per_device if f and f.tokens_per_s_per_device else 0.0
    cost = f.cost if f and f.cost is not None else float("inf")
    return (-round(tps, 6), cost, *_preference(c))


def fit(spec: JobSpec, device: str, model_info: ModelInfo, gpu_memory_bytes: int, *, margin: float = FIT_MARGIN,
        train_rows: Optional[int] = None, carbon_intensity: Optional[float] = None,
        carbon_source: Optional[str] = None, calibration: Optional[Calibration] = None,
        cpu: Optional[CpuProbe] = None, global_batch_size: int, world_size: int) -> tuple[list[Candidate], int]:
    """(the candidates that fit, best first; how many were tried). ``global_batch_size`` and
    ``world_size`` are the job's, from its plan."""
    budget = gpu_memory_bytes * (1 - margin)
    base = spec.to_dict()
    kept: list[Candidate] = []
    tried = 0
    # FlashAttention keeps packed documents apart only at micro batch 1 (the rule of
    # launcher.facts.packing, which `launcher plan` checks for the job itself)
    flash_packed = spec.data.packing and spec.model.attn_implementation.startswith("flash_attention")
    for par in layouts(spec, device):
        for micro in micro_batches(global_batch_size, world_size):
            if flash_packed and micro != 1:
                continue
            accum = global_batch_size // (world_size * micro)
            for ckpt in (False, True):
                words = (*par, f"train.micro_batch_size={micro}", f"train.grad_accum_steps={accum}",
                         f"train.activation_checkpointing={'true' if ckpt else 'false'}")
                try:
                    cand = build_job(apply_overrides(base, list(words)), "fit")
                    plan = plan_job(cand, device=device, model_info=model_info, train_rows=train_rows,
                                    carbon_intensity=carbon_intensity, carbon_source=carbon_source,
                                    calibration=calibration, cpu=cpu)
                except JobError:
                    continue
                tried += 1
                if plan.memory is not None and plan.memory.per_device_bytes.total <= budget:
                    kept.append(Candidate(words, plan))
    kept.sort(key=rank_key)
    return kept, tried
