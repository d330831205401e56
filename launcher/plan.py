"""Pure derivations from a JobSpec: world size, batch arithmetic, engine settings, memory.

No I/O and no torch: ``plan_job`` is a function of its arguments, so `launcher plan`, the
renderers and the trainer all see the same numbers, and tests pin them exactly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from launcher.errors import JobError
from launcher.spec import JobSpec


@dataclass(frozen=True)
class ModelInfo:
    """What the plan needs to know of a model, read from its config.json (no weights)."""

    n_params: int
    hidden_size: int
    n_layers: int
    vocab_size: int
    max_position_embeddings: Optional[int] = None
    architecture: str = "unknown"


@dataclass(frozen=True)
class Batch:
    micro_batch_size: int
    grad_accum_steps: int
    global_batch_size: int
    derived: str  # which of the three was derived, and how


@dataclass(frozen=True)
class Plan:
    job: dict
    device: str  # "cuda" | "cpu"
    backend: str  # "nccl" | "gloo"
    nodes: int
    procs_per_node: int
    world_size: int
    micro_batch_size: int
    grad_accum_steps: int
    global_batch_size: int
    seq_len: int
    tokens_per_step: int  # at most; exactly this with packing
    strategy: str
    zero_stage: Optional[int]
    dtype: str
    ds_config: Optional[dict]
    fsdp: Optional[dict]
    derivations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    model: Optional[dict] = None
    memory_gib_per_device: Optional[dict] = None
    train_rows: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    total_steps: Optional[int] = None
    threads_per_rank: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- batch arithmetic


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def resolve_batch(micro: Optional[int], accum: Optional[int], global_: Optional[int], world: int) -> Batch:
    """``global = micro * accum * world``, exactly. Any two give the third; one or none take
    micro=1/accum=1 for the missing ones. A combination that does not divide is an error that
    proposes the nearest valid values: never a silent floor division."""
    if micro is not None and accum is not None and global_ is not None:
        if micro * accum * world != global_:
            raise JobError(
                f"train.global_batch_size: {global_} != micro_batch_size {micro} x grad_accum_steps {accum} "
                f"x world_size {world} = {micro * accum * world}; set only two of the three "
                f"(for example drop train.grad_accum_steps)"
            )
        return Batch(micro, accum, global_, "all three given and consistent")
    if global_ is not None:
        if micro is None and accum is None:
            micro = 1
            if global_ % world == 0:
                # largest micro batch that still divides: fewest accumulation steps
                per_rank = global_ // world
                return Batch(per_rank, 1, global_,
                             f"micro_batch_size = global_batch_size {global_} / world_size {world} = {per_rank}, "
                             f"grad_accum_steps = 1")
        if accum is None:
            per = micro * world
            if global_ % per:
                lo, hi = (global_ // per) * per, (global_ // per + 1) * per
                hint = " or ".join(str(v) for v in (lo, hi) if v > 0)
                if global_ % world == 0:
                    fits = [m for m in _divisors(global_ // world)]
                    near = sorted(fits, key=lambda m: abs(m - micro))[:2]
                    hint += f" (or train.micro_batch_size: {' or '.join(map(str, sorted(near)))})"
                raise JobError(
                    f"train.global_batch_size: {global_} is not divisible by micro_batch_size {micro} x "
                    f"world_size {world} = {per}; nearest valid global_batch_size: {hint}"
                )
            accum = global_ // per
            return Batch(micro, accum, global_,
                         f"grad_accum_steps = global_batch_size {global_} / (micro_batch_size {micro} x "
                         f"world_size {world}) = {accum}")
        # accum and global given: derive micro
        per = accum * world
        if global_ % per:
            lo, hi = (global_ // per) * per, (global_ // per + 1) * per
            nearest = " or ".join(str(v) for v in (lo, hi) if v > 0)
            raise JobError(
                f"train.global_batch_size: {global_} is not divisible by grad_accum_steps {accum} x "
                f"world_size {world} = {per}; nearest valid: {nearest}"
            )
        micro = global_ // per
        return Batch(micro, accum, global_,
                     f"micro_batch_size = global_batch_size {global_} / (grad_accum_steps {accum} x "
                     f"world_size {world}) = {micro}")
    micro = micro or 1
    accum = accum or 1
    g = micro * accum * world
    return Batch(micro, accum, g,
                 f"global_batch_size = micro_batch_size {micro} x grad_accum_steps {accum} x world_size {world} = {g}")


# --------------------------------------------------------------------------- engine settings


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
    lr: float = 2e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    gradient_clipping: float = 1.0,
    torch_adam: bool = False,
    steps_per_print: int = 100,
) -> dict:
    """A complete DeepSpeed config: every value concrete, nothing left "auto".

    The optimizer is in the config, so raw ``deepspeed.initialize`` builds it (DeepSpeedCPUAdam
    under CPU offload, as ZeRO-Offload requires). The LR schedule is not: the training loop owns
    it, so that FSDP2 and ZeRO follow the very same schedule function.
    """
    if stage not in (0, 1, 2, 3):
        raise JobError(f"--stage: must be 0, 1, 2 or 3, got {stage}")
    if offload_params != "none" and stage != 3:
        raise JobError(f"--offload-params: {offload_params} needs --stage 3, got stage {stage}")
    if offload_optimizer != "none" and stage == 0:
        raise JobError("--offload-optimizer: needs --stage 1, 2 or 3 (ZeRO-0 has no optimizer partitioning)")
    if "nvme" in (offload_optimizer, offload_params) and not nvme_path:
        raise JobError("--nvme-path: required when offloading to nvme")
    if precision not in ("bf16", "fp16", "fp32"):
        raise JobError(f"--precision: must be bf16, fp16 or fp32, got {precision!r}")

    buckets = model_buckets(hidden_size) if hidden_size else dict(ZERO_DEFAULT_BUCKETS)
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
            stage3_max_live_parameters=1_000_000_000,
            stage3_max_reuse_distance=1_000_000_000,
            stage3_gather_16bit_weights_on_model_save=True,
        )
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


def build_fsdp_settings(spec: JobSpec) -> dict:
    dtype = spec.model.dtype
    return {
        "wrap": "fully_shard per decoder layer, then the root module",
        "reshard_after_forward": spec.parallel.reshard_after_forward,
        "param_dtype": {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype],
        "reduce_dtype": "float32",
        "cpu_offload": spec.parallel.offload_params == "cpu",
        "optimizer": "torch.optim.AdamW",
    }


# --------------------------------------------------------------------------- memory


def estimate_memory_gib(n_params: int, n_trainable: int, dtype: str, strategy: str, stage: int,
                        world: int, offload_optimizer: str, offload_params: str) -> dict:
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
    g = 1024 ** 3
    return {"params": round(params / g, 3), "grads": round(grads / g, 3), "optimizer": round(optim / g, 3),
            "total": round((params + grads + optim) / g, 3)}


# --------------------------------------------------------------------------- the plan


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str, min_ratio: float) -> float:
    """LR multiplier applied for optimizer step ``step`` (0-based). Linear warmup from lr/warmup
    to lr over ``warmup_steps``, then cosine or linear decay to ``min_ratio`` at the last step."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if kind == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * shape


def plan_job(
    spec: JobSpec,
    *,
    device: str = "cuda",
    model_info: Optional[ModelInfo] = None,
    train_rows: Optional[int] = None,
    cpu_count: Optional[int] = None,
) -> Plan:
    """Resolve every derived value of ``spec``. ``device`` is the resolved device ("auto" is
    resolved by the caller, who may look at the hardware). ``train_rows`` (rows after
    tokenization/packing) gives steps per epoch; ``cpu_count`` gives threads per rank on CPU."""
    if device not in ("cuda", "cpu"):
        raise JobError(f"cluster.device: must be cuda or cpu once resolved, got {device!r}")
    c, t, p = spec.cluster, spec.train, spec.parallel
    procs = c.gpus_per_node if device == "cuda" else c.cpu_procs_per_node
    world = c.nodes * procs
    backend = c.backend if c.backend != "auto" else ("nccl" if device == "cuda" else "gloo")
    notes: list[str] = []
    errors: list[str] = []
    if device == "cpu" and backend == "nccl":
        errors.append("cluster.backend: nccl needs GPUs; use gloo (or auto) on CPU")
    if device == "cpu" and p.strategy == "fsdp" and p.offload_params == "cpu":
        errors.append("parallel.offload_params: FSDP2 offloads from an accelerator to the host; on cpu the "
                      "parameters are already in host memory: set parallel.offload_params=none")
    if device == "cpu" and spec.model.dtype == "fp16":
        errors.append("model.dtype: fp16 is not supported on CPU; use bf16 or fp32")
    batch = resolve_batch(t.micro_batch_size, t.grad_accum_steps, t.global_batch_size, world)
    derivations = [
        f"world_size = nodes {c.nodes} x procs_per_node {procs} = {world}"
        + (" (cpu_procs_per_node: no GPU)" if device == "cpu" else " (gpus_per_node)"),
        batch.derived,
        f"tokens_per_step = global_batch_size {batch.global_batch_size} x max_seq_len {spec.data.max_seq_len} "
        f"= {batch.global_batch_size * spec.data.max_seq_len}" + (" (packed: exact)" if spec.data.packing else " (padded: at most)"),
    ]
    if model_info and model_info.max_position_embeddings and spec.data.max_seq_len > model_info.max_position_embeddings:
        errors.append(
            f"data.max_seq_len: {spec.data.max_seq_len} exceeds the model's limit "
            f"max_position_embeddings={model_info.max_position_embeddings}; lower data.max_seq_len"
        )
    if errors:
        raise JobError(*errors)

    ds_config = fsdp = None
    zero_stage: Optional[int] = None
    if p.strategy == "zero":
        zero_stage = p.zero_stage
        hidden = model_info.hidden_size if (model_info and p.zero_buckets == "model") else None
        if p.zero_buckets == "model" and not model_info:
            notes.append("parallel.zero_buckets=model but the model's config is unknown: DeepSpeed defaults used")
        ds_config = build_ds_config(
            stage=p.zero_stage, micro_batch_size=batch.micro_batch_size, grad_accum_steps=batch.grad_accum_steps,
            world_size=world, precision=spec.model.dtype, offload_optimizer=p.offload_optimizer,
            offload_params=p.offload_params, nvme_path=p.nvme_path, hidden_size=hidden, lr=t.lr,
            betas=t.adam_betas, eps=t.adam_eps, weight_decay=t.weight_decay, gradient_clipping=t.max_grad_norm,
            torch_adam=device == "cpu",
        )
        derivations.append(
            f"ds_config.train_batch_size = {ds_config['train_batch_size']} (= global_batch_size, checked)"
        )
    else:
        fsdp = build_fsdp_settings(spec)

    steps_per_epoch = total_steps = None
    if train_rows is not None:
        steps_per_epoch = train_rows // batch.global_batch_size
        if steps_per_epoch == 0:
            raise JobError(
                f"data: {train_rows} training rows make no full global batch of {batch.global_batch_size}; "
                f"lower train.global_batch_size or add data"
            )
        total_steps = steps_per_epoch * t.epochs
        if t.max_steps is not None:
            total_steps = min(total_steps, t.max_steps)
        dropped = train_rows - steps_per_epoch * batch.global_batch_size
        derivations.append(
            f"steps_per_epoch = train_rows {train_rows} // global_batch_size {batch.global_batch_size} = "
            f"{steps_per_epoch}" + (f" ({dropped} rows of the last partial batch unused per epoch)" if dropped else "")
        )
        derivations.append(
            "total_steps = " + (f"min(max_steps {t.max_steps}, " if t.max_steps else "")
            + f"steps_per_epoch {steps_per_epoch} x epochs {t.epochs}" + (")" if t.max_steps else "")
            + f" = {total_steps}"
        )
    elif t.max_steps is not None:
        total_steps = t.max_steps

    memory = None
    model_dict = None
    if model_info:
        model_dict = asdict(model_info)
        n_trainable = model_info.n_params if t.method == "full" else max(1, model_info.n_params // 100)
        memory = estimate_memory_gib(model_info.n_params, n_trainable, spec.model.dtype, p.strategy,
                                     p.zero_stage if p.strategy == "zero" else 3, world,
                                     p.offload_optimizer, p.offload_params)
        if t.method == "lora":
            notes.append("memory estimate assumes LoRA adapters of about 1% of the parameters")

    threads = None
    if device == "cpu" and cpu_count:
        threads = max(1, cpu_count // procs)
        derivations.append(f"threads_per_rank = cpu_count {cpu_count} // procs_per_node {procs} = {threads}")

    return Plan(
        job=spec.to_dict(), device=device, backend=backend, nodes=c.nodes, procs_per_node=procs,
        world_size=world, micro_batch_size=batch.micro_batch_size, grad_accum_steps=batch.grad_accum_steps,
        global_batch_size=batch.global_batch_size, seq_len=spec.data.max_seq_len,
        tokens_per_step=batch.global_batch_size * spec.data.max_seq_len, strategy=p.strategy,
        zero_stage=zero_stage, dtype=spec.model.dtype, ds_config=ds_config, fsdp=fsdp,
        derivations=derivations, notes=notes, model=model_dict, memory_gib_per_device=memory,
        train_rows=train_rows, steps_per_epoch=steps_per_epoch, total_steps=total_steps, threads_per_rank=threads,
    )


def read_model_info(config: dict) -> ModelInfo:
    """Parameter count of a decoder-only transformer from its HF config.json (Llama, Mistral,
    Qwen2 and alike: gated MLP, grouped-query attention), without loading weights."""
    try:
        h = int(config["hidden_size"])
        L = int(config["num_hidden_layers"])
        V = int(config["vocab_size"])
        heads = int(config.get("num_attention_heads", 1))
    except (KeyError, TypeError, ValueError) as e:
        raise JobError(f"model config.json: missing or bad field {e}; is this a causal LM folder?") from None
    inter = int(config.get("intermediate_size", 4 * h))
    kv = int(config.get("num_key_value_heads", heads))
    head_dim = int(config.get("head_dim") or h // heads)
    attn = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
    mlp = 3 * h * inter
    norms = 2 * h
    n = V * h + L * (attn + mlp + norms) + h
    if not config.get("tie_word_embeddings", False):
        n += V * h
    arch = (config.get("architectures") or [config.get("model_type", "unknown")])[0]
    return ModelInfo(n_params=n, hidden_size=h, n_layers=L, vocab_size=V,
                     max_position_embeddings=config.get("max_position_embeddings"), architecture=arch)
