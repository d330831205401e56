"""Parallel strategies: a small Protocol, two implementations (FSDP2, DeepSpeed ZeRO). The loop
never asks which one it drives. To add one: a class with these members, and a branch in
``build_strategy``."""
from __future__ import annotations

from typing import Any, Optional, Protocol


class Strategy(Protocol):
    name: str
    #: where the batches go (``model_inputs(batch, strategy.device)``)
    device: Any
    #: the multiplier that turns "sum of token losses on this rank / tokens in the global batch"
    #: into what backward() must see, so the gradient is the exact global-batch mean
    loss_scale: float

    def forward(self, **batch: Any) -> Any: ...

    def backward(self, loss, *, last_micro: bool) -> None:
        """Accumulate gradients of one micro-batch; gradients are synchronised across ranks on
        the last micro-batch of the optimizer step (``last_micro``), not before."""

    def step(self) -> Any:
        """The optimizer step, once per optimizer step after the last micro-batch's backward:
        clip, step the optimizer and the LR schedule, zero the gradients. Returns the pre-clip
        global gradient norm (a float, or a 0-d tensor the loop reads with the step's figures)."""

    def lr(self) -> float:
        """The learning rate the last step() applied."""

    def train(self) -> None: ...

    def eval(self) -> None: ...

    def save(self, path: str) -> None:
        """Collective: every rank writes its shard of model, optimizer and LR state into path."""

    def load(self, path: str) -> None: ...

    #: counts the model states (params, grads, optimizer bytes on this rank) as the optimizer steps
    states: Any

    def full_state_dict(self, trainable_only: bool = False) -> Optional[dict]:
        """Collective: the model's state dict (only what trains, with ``trainable_only``: the LoRA
        adapters) on global rank 0, None elsewhere."""

    def unwrapped(self) -> Any:
        """The original (peft or transformers) module, for save_pretrained."""


def import_engine(plan) -> None:
    """Import the libraries a rank of ``plan`` imports lazily (DeepSpeed's engine and ZeRO
    optimizer; FSDP2 and DCP; peft), so that the memory baseline taken next holds the libraries
    and a rank's peak above it is what the model and the training cost (DeepSpeed's import alone
    holds a large share of a small model's peak)."""
    import_engine_for(plan.strategy, plan.zero_stage, plan.job.train.method)


def import_engine_for(strategy: str, zero_stage: Optional[int], method: str) -> None:
    """:func:`import_engine` from the three facts it depends on (a rank started before its plan
    is written knows them from the job: launcher.train.prestart)."""
    import importlib

    names = ["transformers.integrations"]
    if method == "lora":
        names.append("peft")
    if strategy == "fsdp":  # DCP is FSDP2's checkpoint format; DeepSpeed writes its own (0.3 s a rank here)
        names += ["torch.distributed.fsdp", "torch.distributed.checkpoint", "torch.distributed.checkpoint.state_dict"]
    else:
        from launcher.train.strategies.zero import import_deepspeed

        import_deepspeed()
        names += ["deepspeed.runtime.engine",
                  "deepspeed.runtime.zero.stage3" if zero_stage == 3 else "deepspeed.runtime.zero.stage_1_and_2"]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:  # a module another version moved: the baseline is a little lower, no more
            pass


def build_strategy(plan, model, lr_lambda, model_path: str) -> Strategy:
    """Wrap ``model`` (from launcher.train.model.build_model); ``model_path`` is where a model
    built on the meta device gets its weights."""
    if plan.strategy == "fsdp":
        from launcher.train.strategies.fsdp import FSDP2Strategy

        return FSDP2Strategy(plan, model, lr_lambda, model_path)
    from launcher.train.strategies.zero import ZeroStrategy

    return ZeroStrategy(plan, model, lr_lambda, model_path)

