"""``plan_job``: every derived value of a job, as a pure function of its arguments (no I/O, no
torch), so that `launcher plan`, the renderers and the trainer see the same numbers."""
from __future__ import annotations

from typing import Optional

from launcher.errors import JobError
from launcher.plan.batch import resolve_batch
from launcher.plan.engines import ZERO3_MAX_LIVE_PARAMETERS, ZeroOptimization, build_ds_config, build_fsdp_settings
from launcher.plan.forecast import build_forecast, with_forecast
from launcher.plan.memory import estimate_memory, layout_of
from launcher.plan.schedule import steps_per_epoch as _steps_per_epoch
from launcher.plan.schedule import total_steps as _total_steps
from launcher.plan.types import Calibration, CpuProbe, ModelInfo, Plan
from launcher.spec import JobSpec


def procs_per_node(spec: JobSpec, device: str) -> int:
    return spec.cluster.gpus_per_node if device == "cuda" else spec.cluster.cpu_procs_per_node


def plan_job(
    spec: JobSpec,
    *,
    device: str = "cuda",
    model_info: Optional[ModelInfo] = None,
    train_rows: Optional[int] = None,
    cpu_count: Optional[int] = None,
    host_memory_bytes: Optional[int] = None,
    carbon_intensity: Optional[float] = None,
    carbon_source: Optional[str] = None,
    calibration: Optional[Calibration] = None,
    cpu: Optional[CpuProbe] = None,
) -> Plan:
    """Resolve every derived value of ``spec``. ``device`` is the resolved device ("auto" is
    resolved by the caller, who may look at the hardware). ``train_rows`` (rows after
    tokenization/packing) gives steps per epoch; ``cpu_count`` gives threads per rank on CPU,
    ``host_memory_bytes`` (a node's RAM) the host-memory mode ``parallel.host_memory=auto`` picks.
    ``carbon_intensity`` (gCO2e/kWh of ``report.country_iso_code``, read by the caller:
    :func:`launcher.report.carbon.carbon_intensity`), ``calibration`` (an earlier run's
    measurements) and ``cpu`` (this machine's probe, for a CPU job run here) feed the forecast."""
    if device not in ("cuda", "cpu"):
        raise JobError(f"cluster.device: must be cuda or cpu once resolved, got {device!r}")
    c, t, p = spec.cluster, spec.train, spec.parallel
    procs = procs_per_node(spec, device)
    world = c.nodes * procs
    backend = c.backend if c.backend != "auto" else ("nccl" if device == "cuda" else "gloo")
    batch = _check_job(spec, device, backend, world, model_info)
    derivations = [
        f"world_size = nodes {c.nodes} x procs_per_node {procs} = {world}"
        + (" (cpu_procs_per_node: no GPU)" if device == "cpu" else " (gpus_per_node)"),
        batch.derived,
        f"tokens_per_step = global_batch_size {batch.global_batch_size} x max_seq_len {spec.data.max_seq_len} "
        f"= {batch.global_batch_size * spec.data.max_seq_len}" + (" (packed: exact)" if spec.data.packing else " (padded: at most)"),
    ]
    notes: list[str] = []
    ds_kw = _ds_config_args(spec, device, batch, world, model_info, notes) if p.strategy == "zero" else None
    ds_config = build_ds_config(**ds_kw) if ds_kw else None
    if ds_config:
        derivations.append(f"ds_config.train_batch_size = {ds_config['train_batch_size']} (= global_batch_size, checked)")
    threads = None
    if device == "cpu" and cpu_count:
        threads = max(1, cpu_count // procs)
        derivations.append(f"threads_per_rank = cpu_count {cpu_count} // procs_per_node {procs} = {threads}")

    plan = Plan(
        job=spec, device=device, backend=backend, procs_per_node=procs, world_size=world,
        micro_batch_size=batch.micro_batch_size, grad_accum_steps=batch.grad_accum_steps,
        global_batch_size=batch.global_batch_size, ds_config=ds_config,
        fsdp=build_fsdp_settings(spec) if p.strategy != "zero" else None,
        derivations=derivations, notes=notes, model=model_info, total_steps=t.max_steps, threads_per_rank=threads,
    )
    if model_info:
        if t.method == "lora" and model_info.n_trainable_params is None:
            raise JobError("model info: LoRA adapters were not counted (a ModelInfo counted for full fine-tuning)")
        plan = plan.model_copy(update={"memory": estimate_memory(model_info, layout_of(plan), plan.params["trainable"])})
    plan = _with_host_memory(plan, ds_kw, host_memory_bytes)
    if train_rows is not None:
        plan = with_train_rows(plan, train_rows)
    return plan.model_copy(update={"forecast": build_forecast(plan, carbon_intensity=carbon_intensity,
                                                              carbon_source=carbon_source, calibration=calibration,
                                                              cpu=cpu)})


def _check_job(spec: JobSpec, device: str, backend: str, world: int, model_info: Optional[ModelInfo]):
    """The resolved batch; every rule of the job that the device, the model or the batch
    arithmetic breaks, at once (one JobError with a line each)."""
    p, errors = spec.parallel, []
    if device == "cpu" and backend == "nccl":
        errors.append("cluster.backend: nccl needs GPUs; use gloo (or auto) on CPU")
    if device == "cpu" and p.strategy == "fsdp" and p.offload_params == "cpu":
        errors.append("parallel.offload_params: FSDP2 offloads from an accelerator to the host; on cpu the "
                      "parameters are already in host memory: set parallel.offload_params=none")
    if device == "cuda" and spec.cluster.start_method == "fork":
        errors.append("cluster.start_method: fork is for CPU ranks (a CUDA context does not survive a fork, "
                      "and importing the engines may touch the driver); use spawn or auto on GPUs")
    if device == "cpu" and spec.model.dtype == "fp16":
        errors.append("model.dtype: fp16 is not supported on CPU; use bf16 or fp32")
    elif p.strategy == "fsdp" and spec.model.dtype == "fp16":
        errors.append("model.dtype: fp16 under FSDP2 needs a gradient scaler for sharded gradients, which "
                      "launcher does not run; use bf16, or parallel.strategy=zero (DeepSpeed scales fp16 losses)")
    if model_info and model_info.max_position_embeddings and spec.data.max_seq_len > model_info.max_position_embeddings:
        errors.append(
            f"data.max_seq_len: {spec.data.max_seq_len} exceeds the model's limit "
            f"max_position_embeddings={model_info.max_position_embeddings}; lower data.max_seq_len"
        )
    batch = None
    try:
        batch = resolve_batch(spec.train.micro_batch_size, spec.train.grad_accum_steps, spec.train.global_batch_size,
                              world)
    except JobError as e:
        errors.extend(e.lines)
    if errors:  # every problem at once, the batch arithmetic's among them
        raise JobError(*errors)
    assert batch is not None
    return batch


def _ds_config_args(spec: JobSpec, device: str, batch, world: int, model_info: Optional[ModelInfo],
                    notes: list[str]) -> dict:
    """The arguments of build_ds_config for this job (buckets from the model when it is known)."""
    t, p = spec.train, spec.parallel
    hidden = model_info.hidden_size if (model_info and p.zero_buckets == "model") else None
    if p.zero_buckets == "model" and not model_info:
        notes.append("parallel.zero_buckets=model but the model's config is unknown: DeepSpeed defaults used")
    return dict(
        stage=p.zero_stage, micro_batch_size=batch.micro_batch_size, grad_accum_steps=batch.grad_accum_steps,
        world_size=world, precision=spec.model.dtype, offload_optimizer=p.offload_optimizer,
        offload_params=p.offload_params, nvme_path=p.nvme_path, hidden_size=hidden,
        bucket_size=p.zero_buckets if isinstance(p.zero_buckets, int) else None,
        n_params=model_info.n_params if model_info else None,
        n_trainable=(model_info.n_trainable_params if t.method == "lora" else model_info.n_params)
        if model_info else None, lr=t.lr,
        betas=t.adam_betas, eps=t.adam_eps, weight_decay=t.weight_decay, gradient_clipping=t.max_grad_norm,
        torch_adam=device == "cpu",
    )


def _with_host_memory(plan: Plan, ds_kw: Optional[dict], host_memory_bytes: Optional[int]) -> Plan:
    """``plan`` in the host-memory mode ``parallel.host_memory`` resolves to (auto: lean only when
    the plan's host memory for a node passes LEAN_SHARE of its RAM), with why, and lean's note."""
    p, model_info = plan.job.parallel, plan.model
    mode, why = resolve_host_memory(p.host_memory, plan.memory.host_per_node_bytes if plan.memory else None,
                                    host_memory_bytes)
    if mode == "fast" and plan.device == "cpu" and ds_kw is not None and model_info:
        # on CPU what ZeRO gathers and buckets is host memory too: fast takes DeepSpeed's sizes
        # (buckets no larger than the model), unless that plan itself passes the share of the RAM
        fast = plan.model_copy(update={"ds_config": build_ds_config(**ds_kw, cap_at_twentieth=False)})
        fast = fast.model_copy(update={"memory": estimate_memory(model_info, layout_of(fast), plan.params["trainable"])})
        mode2, why2 = resolve_host_memory(p.host_memory, fast.memory.host_per_node_bytes, host_memory_bytes)
        if mode2 == "fast":
            plan, why = fast, why2
        else:  # within the share only with lean's caps
            mode, why = "lean", why2 + " with DeepSpeed's sizes: lean caps them"
    plan = plan.model_copy(update={"host_memory": mode, "derivations": [*plan.derivations, why, *_zero3_caps(plan)],
                                   "notes": [*plan.notes, *([LEAN_NOTE] if mode == "lean" else [])]})
    if mode == "lean" and plan.device == "cpu" and plan.memory and model_info:
        # the estimates above took Plan's default mode, fast, whose glibc heap lean does not keep
        plan = plan.model_copy(update={"memory": estimate_memory(model_info, layout_of(plan), plan.params["trainable"])})
    return plan


def _zero3_caps(plan: Plan) -> list[str]:
    z = ZeroOptimization.of(plan.ds_config)
    if z.stage != 3 or not plan.model:
        return []
    live = z.stage3_max_live_parameters
    if live < ZERO3_MAX_LIVE_PARAMETERS:
        return [f"stage3_max_live_parameters = min(1e9, n_params {plan.model.n_params:,} / 20) = {live:,} "
                "(host_memory lean: DeepSpeed's 1e9 would keep a model under 1B parameters gathered whole)"]
    return [f"stage3_max_live_parameters = {live:,} (DeepSpeed's default; a model under 1B parameters stays gathered "
            "through forward and backward)"]


LEAN_SHARE = 0.5  # auto picks lean when a node's planned host memory passes this share of its RAM
LEAN_NOTE = ("parallel.host_memory=lean trades speed for host memory: each step maps and trims the host heap "
             "and ZeRO's buckets are capped, so steps run slower than fast (bench/RESULTS.md measures by how much); "
             "set parallel.host_memory=fast where the node's memory allows")


def resolve_host_memory(asked: str, planned_host_bytes: Optional[int], ram_bytes: Optional[int]) -> tuple[str, str]:
    """``parallel.host_memory`` resolved, and the line that says why. lean: a fixed glibc mmap
    threshold (CPU ranks) and the allocator's free memory returned to the system after every
    step, the lowest host peak; fast: glibc's own dynamic threshold, memory returned only after
    loading. auto: lean when the node's planned host memory passes LEAN_SHARE of its RAM."""
    if asked != "auto":
        return asked, f"host_memory = {asked} (parallel.host_memory)"
    if planned_host_bytes is None or not ram_bytes:
        return "fast", "host_memory = fast (auto: the planned host memory or the node's RAM is unknown)"
    share = planned_host_bytes / ram_bytes
    mode = "lean" if share > LEAN_SHARE else "fast"
    return mode, (f"host_memory = {mode} (auto: planned host memory {planned_host_bytes / 2**30:.2f} GiB per node is "
                  f"{share:.0%} of its {ram_bytes / 2**30:.1f} GiB RAM, {'over' if mode == 'lean' else 'within'} "
                  f"{LEAN_SHARE:.0%})")


def with_train_rows(plan: Plan, train_rows: int) -> Plan:
    """The plan completed with the steps that ``train_rows`` (rows after tokenizing and packing)
    give: steps per epoch and total steps, with their derivations."""
    from launcher.plan.schedule import replay_rows_per_step

    t = plan.job.train
    g = plan.global_batch_size
    replay = plan.job.data.replay
    r = replay_rows_per_step(g, replay.fraction if replay else None)
    spe = _steps_per_epoch(train_rows, g - r, plan.world_size, plan.micro_batch_size, plan.grad_accum_steps)
    total = _total_steps(spe, t.epochs, t.max_steps)
    dropped = train_rows - spe * (g - r)
    per_step = f"(global_batch_size {g} - replay {r})" if r else f"global_batch_size {g}"
    derivations = [
        *([f"replay rows per step = round(global_batch_size {g} x data.replay.fraction {replay.fraction:g}) = {r} "
           f"(of data.replay.path; the task's rows fill the other {g - r})"] if r else []),
        f"steps_per_epoch = train_rows {train_rows} // {per_step} = {spe}"
        + (f" ({dropped} rows of the last partial batch unused per epoch)" if dropped else ""),
        "total_steps = " + (f"min(max_steps {t.max_steps}, " if t.max_steps else "")
        + f"steps_per_epoch {spe} x epochs {t.epochs}" + (")" if t.max_steps else "") + f" = {total}",
    ]
    plan = plan.model_copy(update={"train_rows": train_rows, "steps_per_epoch": spe, "total_steps": total,
                                   "derivations": [*plan.derivations, *derivations]})
    return with_forecast(plan) if plan.forecast is not None else plan
