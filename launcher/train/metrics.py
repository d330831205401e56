"""What a rank measures: the facts of the start record, a step's sums reduced in the step's one
collective (with the stop votes), and the progress line."""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

from launcher import rundir


def accelerator_name(device: str) -> str:
    """The GPU's name (for MFU), or the CPU's model name."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def start_record(plan, *, world: int, n_params: int, n_trainable: int, flops_per_token: float,
                 planned_steps: int, stats: dict, train_rows: int, resumed_from: int,
                 t_start: float) -> rundir.StartRecord:
    return rundir.StartRecord(
        world_size=world, nodes=plan.nodes, device=plan.device, accelerator=accelerator_name(plan.device),
        strategy=plan.strategy, zero_stage=plan.zero_stage, method=plan.job.train.method, dtype=plan.dtype,
        seq_len=plan.seq_len, n_params=n_params, n_trainable_params=n_trainable, flops_per_token=flops_per_token,
        planned_steps=planned_steps, train_rows=train_rows, train_samples=stats.get("train_documents"),
        train_tokens=stats.get("train_tokens"), resumed_from_step=resumed_from or None,
        setup_s=time.time() - t_start, packed=bool(stats.get("packed")), hostname=socket.gethostname(),
    )


@dataclass
class StepSums:
    """One optimizer step's sums on this rank, reduced over ranks in one all-reduce."""

    loss_sum: float = 0.0
    tokens: int = 0
    padding: int = 0
    docs: int = 0

    def add(self, batch: dict, rows) -> None:
        self.tokens += batch["n_tokens"]
        self.padding += batch["n_padding"]
        self.docs += sum(int(r.get("n_docs", 1)) for r in rows)

    def all_reduce(self, stop_vote: bool, plan) -> tuple["StepSums", bool]:
        """The sums over all ranks, and whether any rank asked to stop: one collective per step
        carries both, so every rank agrees on the stop step."""
        import torch
        import torch.distributed as dist

        t = torch.tensor([self.loss_sum, self.tokens, self.padding, self.docs, 1.0 if stop_vote else 0.0],
                         dtype=torch.float64)
        if plan.backend == "nccl":
            t = t.to("cuda")
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        c = t.cpu().tolist()
        return StepSums(c[0], int(c[1]), int(c[2]), int(c[3])), c[4] > 0


def progress_line(done: int, total: int, loss: float, lr: float, tokens: int, step_time: float) -> str:
    eta = (total - done) * step_time
    return (f"step {done}/{total} | loss {loss:.4f} | lr {lr:.3g} | "
            f"{tokens / max(step_time, 1e-9):,.0f} tok/s | ETA {eta:,.0f}s")
