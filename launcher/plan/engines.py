"""Engine settings: the DeepSpeed config (every value concrete) and the FSDP2 settings."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

from launcher.errors import JobError
from launcher.engine_rules import DS_FLAG_NAMES, ZERO_SIZE_MULTIPLE, offload_problems, size_problem
from launcher.spec import JobSpec

TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


ZERO_DEFAULT_BUCKETS = {  # DeepSpeed's own defaults (runtime/zero/config.py)
    "reduce_bucket_size": 500_000_000,
    "stage3_prefetch_bucket_size": 50_000_000,
    "stage3_param_persistence_threshold": 100_000,
}


def model_buckets(hidden_size: int) -> dict[str, int]:
    """Bucket sizes as the Hugging Face integration fills its "auto" values
    (transformers.integrations.deepspeed: hidden^2, 0.9 hidden^2, 10 hidden)."""
    return {
        "reduce_bucket_size": hidden_size * hidden_size,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "stage3_param_persistence_threshold": 10 * hidden_size,
    }


def round_to_multiple(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple`` (at least ``multiple``)."""
    return max(multiple, -(-value // multiple) * multiple)


def zero_size_problems(zero: dict, source: str = "ds_config.zero_optimization") -> list[str]:
    """One line per size in ``zero`` that DeepSpeed's engine would refuse at start (empty when every
    size is valid)."""
    lines = [(key, size_problem(zero[key], multiple))
             for key, multiple in ZERO_SIZE_MULTIPLE.items() if isinstance(zero.get(key), int)]
    return [f"{source}.{key}: {problem}" for key, problem in lines if problem]


def build_ds_config(
    *,
    stage: int,
    micro_batch_size: int,
    grad_accum_steps: int,
    world_size: int,
    precision: str = "bf16",
    offload_optimizer: str = "none",
    offload_params: str = "none",
    nvme_path: Optional[str] = None,
    hidden_size: Optional[int] = None,
    bucket_size: Optional[int] = None,
    n_params: Optional[int] = None,
    n_trainable: Optional[int] = None,
    lr: float = 2e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    gradient_clipping: float = 1.0,
    torch_adam: bool = False,
    steps_per_print: int = 100,
    cap_at_twentieth: bool = True,
) -> dict:
    """A complete DeepSpeed config: every value concrete, nothing left "auto".

    The optimizer is in the config, so raw ``deepspeed.initialize`` builds it (DeepSpeedCPUAdam
    under CPU offload, as ZeRO-Offload requires). The LR schedule is not: the training loop owns
    it, so that FSDP2 and ZeRO follow the very same schedule function.

    ``n_params`` (the model's, when known) caps the buckets and what ZeRO-3 keeps gathered at a
    twentieth of the model (``live_parameter_cap``; not with ``cap_at_twentieth=False``, the plan's
    host_memory fast on CPU), and ``n_trainable`` caps the gradient bucket.
    A derived bucket is rounded up to what DeepSpeed's ZeRO optimizers assert
    (``ZERO_SIZE_MULTIPLE``); a ``bucket_size`` the user gave is checked, never changed.
    DeepSpeed's defaults are sized for models of tens of billions of parameters: 1e9 live
    parameters and reuse distance keep every parameter of a model under 1B gathered through
    forward and backward (the whole model on every rank), and a 5e8-element reduce bucket is
    larger than such a model (and than any LoRA adapter's gradients).
    """
    if stage not in (0, 1, 2, 3):
        raise JobError(f"--stage: must be 0, 1, 2 or 3, got {stage}")
    problems = offload_problems("zero", stage, offload_optimizer, offload_params, nvme_path, DS_FLAG_NAMES)
    if problems:
        raise JobError(*problems)
    if precision not in ("bf16", "fp16", "fp32"):
        raise JobError(f"--precision: must be bf16, fp16 or fp32, got {precision!r}")

    zero = _zero_section(stage, hidden_size, bucket_size, n_params if cap_at_twentieth else None, n_trainable)
    for key, dev in (("offload_optimizer", offload_optimizer), ("offload_param", offload_params)):
        if dev != "none":
            entry: dict[str, Any] = {"device": dev, "pin_memory": True}
            if dev == "nvme":
                entry["nvme_path"] = nvme_path
            zero[key] = entry

    opt_params: dict[str, Any] = {
        "lr": lr,
        "betas": list(betas),
        "eps": eps,
        "weight_decay": weight_decay,
    }
    if torch_adam and offload_optimizer == "none":
        # on CPU, DeepSpeed's FusedAdam would JIT-compile an op; torch's AdamW is the same math
        opt_params["torch_adam"] = True
    cfg: dict[str, Any] = {
        "train_batch_size": micro_batch_size * grad_accum_steps * world_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "gradient_clipping": gradient_clipping,
        "optimizer": {"type": "AdamW", "params": opt_params},
        "zero_optimization": zero,
        "steps_per_print": steps_per_print,
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif precision == "fp16":
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
                       "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}
    return cfg


def _zero_section(stage: int, hidden_size: Optional[int], bucket_size: Optional[int], n_params: Optional[int],
                  n_trainable: Optional[int]) -> dict[str, Any]:
    """``zero_optimization`` without its offload entries: the buckets from the model's hidden
    size (or DeepSpeed's defaults), capped at a twentieth of ``n_params`` (None: no cap) and at
    ``n_trainable``, rounded to what ZeRO asserts; ``bucket_size`` (the user's) checked as given."""
    buckets = model_buckets(hidden_size) if hidden_size else dict(ZERO_DEFAULT_BUCKETS)
    cap = live_parameter_cap(n_params)
    buckets = {k: min(v, cap) if k != "stage3_param_persistence_threshold" else v for k, v in buckets.items()}
    if n_trainable:  # a gradient bucket larger than all the gradients is memory for nothing (LoRA)
        buckets["reduce_bucket_size"] = max(1, min(buckets["reduce_bucket_size"], n_trainable))
    buckets["reduce_bucket_size"] = round_to_multiple(buckets["reduce_bucket_size"],
                                                      ZERO_SIZE_MULTIPLE["allgather_bucket_size"])
    if bucket_size is not None:
        buckets["reduce_bucket_size"] = bucket_size
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 1:
        zero.update(
            overlap_comm=stage >= 2,
            contiguous_gradients=True,
            reduce_scatter=True,
            reduce_bucket_size=buckets["reduce_bucket_size"],
            allgather_bucket_size=buckets["reduce_bucket_size"],
        )
    if stage == 3:
        del zero["allgather_bucket_size"]
        zero.update(
            stage3_prefetch_bucket_size=buckets["stage3_prefetch_bucket_size"],
            stage3_param_persistence_threshold=buckets["stage3_param_persistence_threshold"],
            stage3_max_live_parameters=min(ZERO3_MAX_LIVE_PARAMETERS, cap),
            stage3_max_reuse_distance=min(ZERO3_MAX_LIVE_PARAMETERS, cap),
            stage3_gather_16bit_weights_on_model_save=True,
        )
    problems = zero_size_problems(zero)
    if problems:
        raise JobError(*problems)
    return zero


ZERO3_MAX_LIVE_PARAMETERS = 1_000_000_000  # DeepSpeed's default, and its reuse distance's


def live_parameter_cap(n_params: Optional[int]) -> int:
    """What ZeRO-3 may keep gathered on a rank: a twentieth of the model's parameters (about one
    decoder layer ahead; no cap when the model is unknown)."""
    return max(1, n_params // 20) if n_params else ZERO3_MAX_LIVE_PARAMETERS


class ZeroOptimization(BaseModel):
    """The ``zero_optimization`` section of a DeepSpeed config as the planner reads it: the sizes
    and switches that decide memory, with DeepSpeed's own defaults where the config has none."""

    model_config = ConfigDict(extra="ignore")  # offload sections and the rest: not read here

    stage: int = 0
    reduce_bucket_size: int = 500_000_000
    stage3_prefetch_bucket_size: int = 50_000_000
    stage3_param_persistence_threshold: int = 100_000
    stage3_max_live_parameters: int = 1_000_000_000
    overlap_comm: bool = False
    contiguous_gradients: bool = True
    memory_efficient_linear: bool = True

    @classmethod
    def of(cls, ds_config: Optional[dict]) -> "ZeroOptimization":
        """The section of ``ds_config`` (DeepSpeed's defaults for a config without one, or none)."""
        return cls.model_validate((ds_config or {}).get("zero_optimization") or {})


class FsdpSettings(BaseModel):
    """What the FSDP2 strategy applies: one ``fully_shard`` per decoder layer, then the root."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wrap: str = "fully_shard per decoder layer, then the root module"
    reshard_after_forward: bool
    param_dtype: str
    reduce_dtype: str = "float32"
    cpu_offload: bool
    optimizer: str = "torch.optim.AdamW"


def build_fsdp_settings(spec: JobSpec) -> FsdpSettings:
    return FsdpSettings(reshard_after_forward=spec.parallel.reshard_after_forward,
                        param_dtype=TORCH_DTYPES[spec.model.dtype],
                        cpu_offload=spec.parallel.offload_params == "cpu")
