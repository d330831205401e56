"""DeepSpeed ZeRO 0-3, fed the very ds_config.json that `launcher ds-config` writes for the job."""
from __future__ import annotations

import copy
import sys
from contextlib import contextmanager
from typing import Any, Optional


def import_deepspeed():
    """``deepspeed``, imported for training alone. Three things DeepSpeed does at import or at
    the engine's start serve features launcher never uses, and cost every rank its start time
    (bench/RESULTS.md, time to first step):

    * its CPU shared-memory comm op, built at every process group start on CPU (43 s in a fresh
      environment), only speeds up ``inference_all_reduce``; without it DeepSpeed falls back to
      the process group;
    * its autotuner imports mlflow, when installed, to log tuning experiments (about 1 s);
    * its ZeRO optimizers import the Muon optimizer to check a client optimizer against it, and
      that module compiles its update functions with ``torch.compile`` at import, which imports
      torch._dynamo (about 1 s). launcher's optimizer is AdamW: Muon's functions stay plain;
    * its CPU accelerator counts the devices of a node from ``LOCAL_SIZE``, which DeepSpeed's own
      launcher sets and torchrun does not (it sets LOCAL_WORLD_SIZE). Without it, every
      ``device_count()`` forks the rank to run ``numactl --hardware``: ZeRO-3 asks once per
      gradient bucket, about a hundred forks a second on two CPU ranks. LOCAL_SIZE is set from
      torchrun's LOCAL_WORLD_SIZE, where it is unset.

    A job that logs to mlflow imports it later, unaffected (only DeepSpeed's autotuner's view is)."""
    import importlib
    import os

    if "LOCAL_WORLD_SIZE" in os.environ:
        os.environ.setdefault("LOCAL_SIZE", os.environ["LOCAL_WORLD_SIZE"])
    if "deepspeed" not in sys.modules:
        from launcher.train.lean import absent

        with absent(["mlflow"]):
            import deepspeed
        with _plain_compile(importlib.import_module("deepspeed.runtime.compiler")):
            try:
                importlib.import_module("deepspeed.runtime.zero.muon.original_muon")
            except ImportError:  # a DeepSpeed without Muon
                pass
    import deepspeed

    ds_torch = importlib.import_module("deepspeed.comm.torch")  # not `import ... as`: deepspeed.comm.torch is torch
    if getattr(ds_torch, "build_shm_op", None) is not None:
        ds_torch.build_shm_op = _no_shm_op
    return deepspeed


@contextmanager
def _plain_compile(compiler):
    """DeepSpeed's ``compiler.compile()`` decorator leaves functions as they are, inside the block."""
    saved = compiler.compile
    compiler.compile = lambda: (lambda fn: fn)
    try:
        yield
    finally:
        compiler.compile = saved


def _no_shm_op():
    return None


def init_deepspeed_comm(deepspeed, backend: str) -> None:
    """DeepSpeed's own view of the process group (its config check counts the ranks); on gloo,
    its all-gathers write into their output alone (``strategies.comm``: gloo's own
    ``all_gather_into_tensor`` holds a second copy of every gathered parameter). Idempotent."""
    from launcher.train.strategies.comm import gather_in_place, use_in_place_gathers_in_deepspeed

    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    if gather_in_place(backend):
        use_in_place_gathers_in_deepspeed(deepspeed.comm.comm.cdb)


class ZeroStrategy:
    name = "zero"

    def __init__(self, plan, model, lr_lambda, model_path: str):  # noqa: ARG002 - the model is loaded
        import torch

        from launcher.train.memory import StateCounter

        self.plan = plan
        config = copy.deepcopy(plan.ds_config)
        deepspeed = import_deepspeed()
        init_deepspeed_comm(deepspeed, plan.backend)
        # the loop owns the LR schedule (same function as FSDP2); DeepSpeed steps it at each boundary
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda),
            dist_init_required=False,
        )
        # engine.backward divides by gradient_accumulation_steps and ZeRO averages over ranks:
        # undo both so that sum(token losses)/global tokens gives the exact global-batch gradient
        self.loss_scale = float(plan.world_size * plan.grad_accum_steps)
        self.device = self.engine.device
        self.states = StateCounter(self.engine.module.parameters, self.engine.optimizer)

    def forward(self, **batch: Any):
        return self.engine(**batch)

    def backward(self, loss, *, last_micro: bool) -> None:
        # DeepSpeed wants engine.step() after every backward; before the accumulation boundary it
        # only counts the micro-step. The boundary's step() is ours below, so the optimizer steps
        # there, as the Protocol says.
        self.engine.backward(loss)
        if not last_micro:
            self.engine.step()

    def step(self) -> Optional[float]:
        self._lr = float(self.engine.get_lr()[0])  # the lr this step applies, before the scheduler moves
        self.engine.step()  # the accumulation boundary: clip, optimizer and LR scheduler step
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else None

    def lr(self) -> float:
        return getattr(self, "_lr", None) or float(self.engine.get_lr()[0])

    def train(self) -> None:
        self.engine.train()

    def eval(self) -> None:
        self.engine.eval()

    def save(self, path: str) -> None:
        self.engine.save_checkpoint(path, tag="state", save_latest=False)

    def load(self, path: str) -> None:
        load_path, _ = self.engine.load_checkpoint(path, tag="state", load_optimizer_states=True,
                                                   load_lr_scheduler_states=True)
        if load_path is None:
            raise RuntimeError(f"{path}: DeepSpeed found no checkpoint to load")
        if self.plan.zero_stage == 3:
            # Loading ends with the persistent parameters (small ones: norms, LoRA adapters)
            # gathered (DeepSpeed's checkpoint_event_epilogue); a fresh engine meets them
            # partitioned in its first forward. The first forward after a resume then records
            # ZeRO-3's module trace without the adapters that peft's layers reach into (external
            # parameters, registered when met partitioned), a later one has them, and DeepSpeed
            # stops with "tracing error at step N". Partition everything, as a fresh engine starts.
            self.engine.empty_partition_cache()

    def full_state_dict(self, trainable_only: bool = False) -> Optional[dict]:
        import torch.distributed as dist

        if trainable_only:  # the LoRA adapters: gathered alone, never the whole model on rank 0
            import deepspeed

            named = [(n, p) for n, p in self.engine.module.named_parameters() if p.requires_grad]
            with deepspeed.zero.GatheredParameters([p for _, p in named], enabled=self.plan.zero_stage == 3):
                out = {n: p.detach().cpu().clone() for n, p in named} if dist.get_rank() == 0 else None
            return out
        if self.plan.zero_stage == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()  # collective; full dict on rank 0
        else:
            sd = self.engine.module.state_dict() if dist.get_rank() == 0 else None
        if dist.get_rank() != 0:
            return None
        return {k: v.detach().cpu().clone() for k, v in sd.items()}

    def unwrapped(self):
        return self.engine.module
