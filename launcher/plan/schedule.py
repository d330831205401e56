"""Steps and the learning-rate schedule: the one place that says how many optimizer steps a job
takes and what multiplier each step's learning rate gets. The plan, the batch schedule of the
trainer and the report all call these."""
from __future__ import annotations

import math
from typing import Optional

from launcher.errors import JobError


def steps_per_epoch(train_rows: int, global_batch_size: int, world_size: int, micro_batch_size: int,
                    grad_accum_steps: int) -> int:
    """``train_rows // global_batch_size``: the last partial global batch of each epoch is dropped.
    No full batch at all is an error that says what to change."""
    steps = train_rows // global_batch_size
    if steps == 0:
        raise JobError(
            f"data: the {train_rows} training rows make no full global batch of {global_batch_size} (it "
            f"needs {global_batch_size} rows: train.micro_batch_size {micro_batch_size} x train.grad_accum_steps "
            f"{grad_accum_steps} x {world_size} processes); use more data (data.num_samples, a lower "
            "data.eval_fraction, or data.packing: false, which gives one row per document), lower "
            "train.global_batch_size / micro_batch_size / grad_accum_steps, or use fewer processes")
    return steps


def replay_rows_per_step(global_batch_size: int, fraction: Optional[float]) -> int:
    """Rows of each global batch taken from data.replay: ``round(global x fraction)``, at least 1 and
    at most all but one (0 without replay)."""
    if not fraction:
        return 0
    if global_batch_size < 2:
        raise JobError(f"data.replay: a global batch of {global_batch_size} row cannot mix task and general text; "
                       "raise train.global_batch_size to 2 or more, or remove data.replay")
    return min(global_batch_size - 1, max(1, round(global_batch_size * fraction)))


def total_steps(steps_per_epoch: int, epochs: int, max_steps: Optional[int]) -> int:
    """``steps_per_epoch x epochs``, capped at ``max_steps`` when given."""
    total = steps_per_epoch * epochs
    return min(total, max_steps) if max_steps is not None else total


def warmup_steps(total: int, warmup_ratio: float) -> int:
    return math.ceil(warmup_ratio * total)


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str, min_ratio: float) -> float:
    """LR multiplier applied for optimizer step ``step`` (0-based). Linear warmup from lr/warmup
    to lr over ``warmup_steps``, then cosine or linear decay to ``min_ratio`` at the last step."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if kind == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * shape


class LrLambda:
    """Picklable LR multiplier for ``torch.optim.lr_scheduler.LambdaLR`` (DeepSpeed checkpoints
    the scheduler object, so a closure would not do)."""

    def __init__(self, total: int, warmup: int, kind: str, min_ratio: float):
        self.total, self.warmup, self.kind, self.min_ratio = total, warmup, kind, min_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total, self.warmup, self.kind, self.min_ratio)
