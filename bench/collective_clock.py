"""The cost of launcher.train.collectives on gloo: 2 ranks, 3,000 all-reduces of 256 floats plus
3,000 async broadcasts and their waits, without and with the clock, 4 alternating rounds.

    OMP_NUM_THREADS=1 python -m torch.distributed.run --nproc_per_node 2 --standalone bench/collective_clock.py
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist

from launcher.train.collectives import CollectiveClock


def per_pair_us(x: torch.Tensor, n: int = 3000) -> float:
    dist.barrier()
    t = time.perf_counter()
    for _ in range(n):
        dist.all_reduce(x)
        dist.broadcast(x, src=0, async_op=True).wait()
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    dist.init_process_group("gloo")
    x = torch.ones(256)
    res: dict[str, list[float]] = {"off": [], "on": []}
    clock = CollectiveClock()
    for _ in range(4):
        res["off"].append(per_pair_us(x))
        clock.install()
        res["on"].append(per_pair_us(x))
        clock.uninstall()
    if dist.get_rank() == 0:
        rounds = {k: [round(v, 1) for v in vs] for k, vs in res.items()}
        print(f"us per pair (all_reduce + async broadcast + wait), rounds {rounds}; median off "
              f"{statistics.median(res['off']):.1f} on {statistics.median(res['on']):.1f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
