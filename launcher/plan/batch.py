"""Batch arithmetic: ``global = micro x accum x world``, exactly, or an error that proposes the
nearest valid values. Never a silent floor division."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from launcher.errors import JobError


@dataclass(frozen=True)
class Batch:
    micro_batch_size: int
    grad_accum_steps: int
    global_batch_size: int
    derived: str  # which of the three was derived, and how


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _nearest_multiples(value: int, step: int) -> str:
    lo, hi = (value // step) * step, (value // step + 1) * step
    return " or ".join(str(v) for v in (lo, hi) if v > 0)


def resolve_batch(micro: Optional[int], accum: Optional[int], global_: Optional[int], world: int) -> Batch:
    """Any two of micro/accum/global give the third; one or none take micro=1/accum=1 for the
    missing ones (global alone: the largest micro batch that divides, accumulation 1)."""
    if micro is not None and accum is not None and global_ is not None:
        if micro * accum * world != global_:
            raise JobError(
                f"train.global_batch_size: {global_} != micro_batch_size {micro} x grad_accum_steps {accum} "
                f"x world_size {world} = {micro * accum * world}; set only two of the three "
                f"(for example drop train.grad_accum_steps)"
            )
        return Batch(micro, accum, global_, "all three given and consistent")
    if global_ is not None:
        if micro is None and accum is None:
            micro = 1
            if global_ % world == 0:
                per_rank = global_ // world
                return Batch(per_rank, 1, global_,
                             f"micro_batch_size = global_batch_size {global_} / world_size {world} = {per_rank}, "
                             f"grad_accum_steps = 1")
        if accum is None:
            per = micro * world
            if global_ % per:
                hint = _nearest_multiples(global_, per)
                if global_ % world == 0:
                    near = sorted(_divisors(global_ // world), key=lambda m: abs(m - micro))[:2]
                    hint += f" (or train.micro_batch_size: {' or '.join(map(str, sorted(near)))})"
                raise JobError(
                    f"train.global_batch_size: {global_} is not divisible by micro_batch_size {micro} x "
                    f"world_size {world} = {per}; nearest valid global_batch_size: {hint}"
                )
            accum = global_ // per
            return Batch(micro, accum, global_,
                         f"grad_accum_steps = global_batch_size {global_} / (micro_batch_size {micro} x "
                         f"world_size {world}) = {accum}")
        per = accum * world
        if global_ % per:
            raise JobError(
                f"train.global_batch_size: {global_} is not divisible by grad_accum_steps {accum} x "
                f"world_size {world} = {per}; nearest valid: {_nearest_multiples(global_, per)}"
            )
        micro = global_ // per
        return Batch(micro, accum, global_,
                     f"micro_batch_size = global_batch_size {global_} / (grad_accum_steps {accum} x "
                     f"world_size {world}) = {micro}")
    micro = micro or 1
    accum = accum or 1
    g = micro * accum * world
    return Batch(micro, accum, g,
                 f"global_batch_size = micro_batch_size {micro} x grad_accum_steps {accum} x world_size {world} = {g}")
