"""Memory per device that a plan states before anything runs."""
from __future__ import annotations

from launcher.plan.types import MemoryEstimate

GIB = 1024 ** 3


def estimate_model_state_memory(n_params: int, n_trainable: int, dtype: str, strategy: str, stage: int,
                                world: int, offload_optimizer: str, offload_params: str) -> MemoryEstimate:
    """Model-state memory per device (no activations), as in the ZeRO paper's 2+2+12 bytes."""
    pbytes = 4 if dtype == "fp32" else 2
    full = strategy == "fsdp" or stage == 3
    params = n_params * pbytes / (world if full else 1)
    grads = n_trainable * pbytes / (world if (full or stage >= 2) else 1)
    # fp32 master (when mixed), Adam m and v
    opt_per = 8 + (4 if dtype != "fp32" else 0)
    optim = n_trainable * opt_per / (world if (full or stage >= 1) else 1)
    if offload_optimizer != "none" or (strategy == "fsdp" and offload_params == "cpu"):
        optim = 0.0
    if offload_params != "none":
        params = 0.0
    return MemoryEstimate(params=round(params / GIB, 3), grads=round(grads / GIB, 3),
                          optimizer=round(optim / GIB, 3), total=round((params + grads + optim) / GIB, 3))
