"""The host time a rank spends blocked in collectives, so that its compute can be told from its
waiting for other ranks.

ZeRO and FSDP2 gather parameters and reduce gradients inside forward and backward: a slow rank
makes every other rank wait inside those collectives, so wall time alone shows every rank as
slow. Each ``torch.distributed`` collective (and each ``Work.wait``) is timed here; a rank's
compute is its step's wall time less that blocked time. The engines look the functions up on
``torch.distributed`` at every call (DeepSpeed's comm backend, FSDP2's collectives, launcher's
in-place gathers), so wrapping the module's attributes reaches them all.

What it measures is host time: on gloo the collective itself; on NCCL the host blocks only where
it waits for the GPU, so there the figure is a lower bound."""
from __future__ import annotations

import functools
import time
from typing import Any, Callable

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "reduce_scatter",
               "reduce_scatter_tensor", "broadcast", "broadcast_object_list", "reduce", "gather", "scatter",
               "all_to_all", "all_to_all_single", "barrier", "monitored_barrier")


class CollectiveClock:
    """Seconds blocked in collectives since the last :meth:`take` (outermost calls only: a
    collective that waits on its own work is counted once)."""

    def __init__(self) -> None:
        self.blocked_s = 0.0
        self._depth = 0
        self._installed: list[tuple[Any, str, Any]] = []

    def _timed(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.blocked_s += time.perf_counter() - t
                self._depth -= 1
        timed.__launcher_timed__ = True  # type: ignore[attr-defined]
        return timed

    def install(self) -> "CollectiveClock":
        import torch.distributed as dist

        targets = [(dist, name) for name in COLLECTIVES] + [(dist.Work, "wait")]
        for owner, name in targets:
            fn = getattr(owner, name, None)
            if fn is None or getattr(fn, "__launcher_timed__", False):
                continue
            self._installed.append((owner, name, fn))
            setattr(owner, name, self._timed(fn))
        return self

    def uninstall(self) -> None:
        for owner, name, fn in reversed(self._installed):
            setattr(owner, name, fn)
        self._installed.clear()

    def take(self) -> float:
        """The blocked seconds counted since the last call, and start counting afresh."""
        out, self.blocked_s = self.blocked_s, 0.0
        return out
