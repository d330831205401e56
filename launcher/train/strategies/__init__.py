"""Parallel strategies: a small Protocol, two implementations. The loop never asks which."""
from __future__ import annotations

from typing import Any, Optional, Protocol


class Strategy(Protocol):
    name: str
    #: the multiplier that turns "sum of token losses on this rank / tokens in the global batch"
    #: into what backward() must see, so the gradient is the exact global-batch mean
    loss_scale: float

    def forward(self, **batch: Any) -> Any: ...

    def backward(self, loss, *, last_micro: bool) -> None: ...

    def step(self) -> Optional[float]:
        """Clip, optimizer step, LR step, zero grads. Returns the pre-clip global grad norm."""

    def lr(self) -> float: ...

    def train(self) -> None: ...

    def eval(self) -> None: ...

    def save(self, path: str) -> None:
        """Collective: every rank writes its shard of model, optimizer and LR state into path."""

    def load(self, path: str) -> None: ...

    def full_state_dict(self) -> Optional[dict]:
        """Collective: the whole model's state dict on global rank 0 (None elsewhere)."""

    def unwrapped(self) -> Any:
        """The original (peft or transformers) module, for save_pretrained."""


def build_strategy(plan, model, lr_lambda) -> Strategy:
    if plan.strategy == "fsdp":
        from launcher.train.strategies.fsdp import FSDP2Strategy

        return FSDP2Strategy(plan, model, lr_lambda)
    from launcher.train.strategies.zero import ZeroStrategy

    return ZeroStrategy(plan, model, lr_lambda)


def decoder_layers(model) -> list:
    """The transformer blocks to wrap one by one: the classes HF lists in _no_split_modules."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise RuntimeError(f"{type(base).__name__}: no decoder layers found (_no_split_modules={sorted(names)})")
    return layers
