"""What DeepSpeed and FSDP2 demand of a job's parallel settings, stated once for the job file
(launcher.spec's validators) and for `launcher ds-config`'s flags (launcher.plan.engines): the
offload rules, and the sizes DeepSpeed's ZeRO optimizers assert at start. Pure: no imports of the
engines."""
from __future__ import annotations

from typing import Optional


# What DeepSpeed's ZeRO optimizers assert of a size in the config, though its config parser accepts
# any integer: ZeRO-1/2 (runtime/zero/stage_1_and_2.py) asserts
# ``allgather_bucket_size % nccl_start_alignment_factor == 0`` inside ``deepspeed.initialize``, with
# the factor 2 (a 4-byte start for 2-byte values). The allgather bucket takes the reduce bucket's
# value here, so a derived reduce bucket is rounded to that multiple too.
ZERO_SIZE_MULTIPLE = {"allgather_bucket_size": 2}


def size_problem(value: int, multiple: int) -> Optional[str]:
    """What is wrong with a size DeepSpeed would refuse, and the nearest valid values; None if valid."""
    if value % multiple == 0:
        return None
    low = value - value % multiple
    near = f"{low} or {low + multiple}" if low > 0 else f"{low + multiple}"
    return (f"{value} is not a multiple of {multiple}, which DeepSpeed's ZeRO-1/2 optimizer asserts at start "
            f"(allgather_bucket_size); nearest valid: {near}")


# How the offload rules name things: the job's fields, or `launcher ds-config`'s flags.
JOB_FIELD_NAMES = {"zero_stage": "zero_stage", "offload_optimizer": "offload_optimizer",
                   "offload_params": "offload_params", "nvme_path": "nvme_path", "quote": True}
DS_FLAG_NAMES = {"zero_stage": "--stage", "offload_optimizer": "--offload-optimizer",
                 "offload_params": "--offload-params", "nvme_path": "--nvme-path", "quote": False}


def offload_problems(strategy: str, zero_stage: int, offload_optimizer: str, offload_params: str,
                     nvme_path: Optional[str], names: dict = JOB_FIELD_NAMES) -> list[str]:
    """The offload rules, stated once for the job file and for `launcher ds-config`: one line per
    broken rule (empty when the combination is valid)."""
    n = names
    q = (lambda v: repr(v)) if n["quote"] else str
    errs = []
    if strategy == "zero":
        if offload_params != "none" and zero_stage != 3:
            errs.append(f"{n['offload_params']}: {q(offload_params)} needs {n['zero_stage']} 3, got {zero_stage}")
        if offload_optimizer != "none" and zero_stage == 0:
            errs.append(f"{n['offload_optimizer']}: needs {n['zero_stage']} 1, 2 or 3 "
                        "(ZeRO-0 has no optimizer partitioning)")
    else:
        if offload_optimizer != "none":
            errs.append(f"{n['offload_optimizer']}: FSDP2 offloads parameters and optimizer state together; "
                        "use offload_params: cpu")
        if offload_params == "nvme":
            errs.append(f"{n['offload_params']}: FSDP2 offloads to cpu only, got 'nvme'")
    if "nvme" in (offload_optimizer, offload_params) and not nvme_path:
        errs.append(f"{n['nvme_path']}: required when offloading to nvme")
    return errs
