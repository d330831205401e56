"""Which rows every rank uses in every micro-step: ``BatchSchedule``. Pure Python, no I/O.

``launcher.plan`` (pydantic, the JobSpec) is imported inside the methods: importing this module is
cheap.
"""
from __future__ import annotations

import random
from typing import Optional


class BatchSchedule:
    """Which rows every rank uses in every micro-step. Pure Python, identical on every rank.

    Epoch ``e`` visits the rows in the order of a permutation from ``random.Random(seed + e)``.
    A global batch is ``micro_batch_size * grad_accum_steps * world_size`` rows: consecutive
    slices of that permutation, so the *set* of rows in optimizer step ``s`` depends only on the
    global batch size, not on how it is split over ranks and micro-steps.
    ``steps_per_epoch`` and ``total_steps`` are ``launcher.plan.schedule``'s, the one place that
    states them (the plan and the report use the same): ``n_rows // global_batch``, the last partial
    global batch of each epoch dropped (a different row falls off in each epoch, as the
    permutation changes); no full global batch is a ``JobError``.
    Steps count from 0 across epochs; steps past ``epochs`` keep going into later epochs, so
    ``rows_for`` is defined for any step.

    Replay (``replay_rows`` general rows, ``replay_per_step`` of them in every global batch): the
    task's rows fill ``global - replay_per_step`` places of each batch (an epoch is a pass over
    the task's rows), and the general rows, indices ``n_rows ..``, the rest, taken in turn from
    permutations of their own (a pass over them may end mid-batch). The batch's rows are then
    put in an order drawn from the step: which rows a step takes, and where, is a function of
    the step, so a resumed run takes the same.
    """

    def __init__(self, n_rows: int, world_size: int, micro_batch_size: int, grad_accum_steps: int,
                 epochs: int, seed: int, replay_rows: int = 0, replay_per_step: int = 0):
        for name, v, lo in (("n_rows", n_rows, 0), ("world_size", world_size, 1),
                            ("micro_batch_size", micro_batch_size, 1),
                            ("grad_accum_steps", grad_accum_steps, 1), ("epochs", epochs, 1)):
            if v < lo:
                raise ValueError(f"BatchSchedule: {name} must be >= {lo}, got {v}")
        self.n_rows = n_rows
        self.world_size = world_size
        self.micro_batch_size = micro_batch_size
        self.grad_accum_steps = grad_accum_steps
        self.epochs = epochs
        self.seed = seed
        self.global_batch = micro_batch_size * grad_accum_steps * world_size
        if replay_per_step and (replay_rows < 1 or replay_per_step >= self.global_batch):
            raise ValueError(f"BatchSchedule: replay of {replay_per_step} rows per step from {replay_rows} rows in a "
                             f"global batch of {self.global_batch}")
        self.replay_rows, self.replay_per_step = replay_rows, replay_per_step
        self.task_per_step = self.global_batch - replay_per_step
        from launcher.plan import schedule as plan_schedule

        self.steps_per_epoch = plan_schedule.steps_per_epoch(n_rows, self.task_per_step, world_size,
                                                             micro_batch_size, grad_accum_steps)
        self._perm_cache: dict[int, list[int]] = {}

    def total_steps(self, max_steps: Optional[int] = None) -> int:
        """``steps_per_epoch * epochs``, capped at ``max_steps`` when given."""
        from launcher.plan import schedule as plan_schedule

        return plan_schedule.total_steps(self.steps_per_epoch, self.epochs, max_steps)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def epoch_float(self, steps_done: int) -> float:
        """Epochs completed after ``steps_done`` optimizer steps (for the metrics' "epoch")."""
        return steps_done / self.steps_per_epoch

    def _perm(self, epoch: int) -> list[int]:
        p = self._perm_cache.get(epoch)
        if p is None:
            p = list(range(self.n_rows))
            random.Random(self.seed + epoch).shuffle(p)
            if len(self._perm_cache) > 2:
                self._perm_cache.clear()
            self._perm_cache[epoch] = p
        return p

    def global_rows(self, step: int) -> list[int]:
        """All row indices of optimizer step ``step`` (every rank, every micro-step)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        k = step % self.steps_per_epoch
        perm = self._perm(self.epoch_of(step))
        rows = perm[k * self.task_per_step:(k + 1) * self.task_per_step]
        if not self.replay_per_step:
            return rows
        for pos in range(step * self.replay_per_step, (step + 1) * self.replay_per_step):
            rows.append(self.n_rows + self._replay_perm(pos // self.replay_rows)[pos % self.replay_rows])
        random.Random(f"replay-mix-{self.seed}-{step}").shuffle(rows)
        return rows

    def _replay_perm(self, round_: int) -> list[int]:
        key = -1 - round_  # beside the task's permutations, in the same small cache
        p = self._perm_cache.get(key)
        if p is None:
            p = list(range(self.replay_rows))
            random.Random(f"replay-{self.seed}-{round_}").shuffle(p)
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            self._perm_cache[key] = p
        return p

    def rows_for(self, step: int, micro: int, rank: int) -> list[int]:
        """Row indices rank ``rank`` uses in micro-step ``micro`` (0..grad_accum_steps-1) of
        optimizer step ``step``."""
        if not 0 <= micro < self.grad_accum_steps:
            raise ValueError(f"micro must be in [0, {self.grad_accum_steps}), got {micro}")
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {rank}")
        rows = self.global_rows(step)
        start = (micro * self.world_size + rank) * self.micro_batch_size
        return rows[start:start + self.micro_batch_size]

