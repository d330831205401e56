"""What a rank measures: the facts of the start record, a step's sums reduced in the step's one
collective (with the stop votes), and the progress line."""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Optional

from launcher import rundir
from launcher.plan.schedule import replay_rows_per_step


def accelerator_name(device: str) -> str:
    """The GPU's name (for MFU), or the CPU's model name."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    from launcher.facts.hardware import cpu_model_name

    return cpu_model_name()


def restarts_all_nodes(device) -> int:
    """Collective: the sum over nodes of torchrun's restart counts (TORCHELASTIC_RESTART_COUNT,
    read on each node's local rank 0). Each agent counts the restarts its own workers' failures
    caused; when one node's rank dies, the other node restarts for the membership change without
    counting, so rank 0's count alone says 0 when node 1's rank died. The sum grows at every
    automatic restart and starts again at 0 with a new torchrun (a resume, a requeue)."""
    import torch
    import torch.distributed as dist

    mine = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) if int(os.environ.get("LOCAL_RANK", "0")) == 0 else 0
    t = torch.tensor([mine], dtype=torch.int64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return int(t.item())


def start_record(plan, *, world: int, n_params: int, n_trainable: int, flops_per_token: float,
                 planned_steps: int, stats: dict, train_rows: int, resumed_from: int,
                 t_start: float, steps_lost: int = 0, restart: int = 0) -> rundir.StartRecord:
    return rundir.StartRecord(
        world_size=world, nodes=plan.nodes, device=plan.device, accelerator=accelerator_name(plan.device),
        strategy=plan.strategy, zero_stage=plan.zero_stage, method=plan.job.train.method, dtype=plan.dtype,
        seq_len=plan.seq_len, n_params=n_params, n_trainable_params=n_trainable, flops_per_token=flops_per_token,
        planned_steps=planned_steps, train_rows=train_rows, train_samples=stats.train_documents,
        train_tokens=stats.train_tokens, resumed_from_step=resumed_from or None,
        setup_s=time.time() - t_start, packed=stats.packed, hostname=socket.gethostname(),
        restart=restart, steps_lost=steps_lost, labels=getattr(stats, "labels", None),
        replay_rows_per_step=replay_rows_per_step(plan.global_batch_size,
                                                  plan.job.data.replay.fraction if plan.job.data.replay else None),
    )


@dataclass
class StepSums:
    """One optimizer step's sums on this rank. The loss stays on the device (a tensor) until
    the step's one collective: no host sync per micro-batch."""

    loss_sum: Any = 0.0
    tokens: int = 0
    padding: int = 0
    docs: int = 0

    def add(self, loss_sum, batch: dict, rows) -> None:
        self.loss_sum = self.loss_sum + loss_sum.detach()
        self.tokens += batch["n_tokens"]
        self.padding += batch["n_padding"]
        self.docs += sum(int(r.get("n_docs", 1)) for r in rows)


@dataclass
class StepTotals:
    loss_sum: float
    tokens: int
    padding: int
    docs: int
    grad_norm: Optional[float]
    stop: bool
    rank_compute_s: list[float]


def reduce_step(sums: StepSums, grad_norm: Any, stop_vote: bool, device: Any, compute_s: float) -> StepTotals:
    """The step's sums over all ranks, whether any rank asked to stop, and every rank's compute
    time (each rank fills its own slot: the slowest rank shows without a second collective), in
    one all-reduce, brought to the host in one transfer with the gradient norm (a tensor under
    FSDP2, the same on every rank)."""
    import torch
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    loss = sums.loss_sum if torch.is_tensor(sums.loss_sum) else torch.tensor(float(sums.loss_sum))
    counts = torch.zeros(4 + world, dtype=torch.float64)
    counts[:4] = torch.tensor([sums.tokens, sums.padding, sums.docs, 1.0 if stop_vote else 0.0])
    counts[4 + rank] = compute_s
    t = torch.cat([loss.to(device=device, dtype=torch.float64).reshape(1), counts.to(device)])
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    if torch.is_tensor(grad_norm):
        t = torch.cat([t, grad_norm.to(device=device, dtype=torch.float64).reshape(1)])
    c = t.cpu().tolist()
    norm = c[-1] if torch.is_tensor(grad_norm) else (float(grad_norm) if grad_norm is not None else None)
    return StepTotals(c[0], int(c[1]), int(c[2]), int(c[3]), norm, c[4] > 0, c[5:5 + world])
