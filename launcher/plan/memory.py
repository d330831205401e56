"""Memory per device and per node that a plan states before anything runs (docs/memory.md).

Model states follow the ZeRO paper (Rajbhandari et al. 2020, section 3 and 5: ``2 + 2 + K``
bytes per parameter with K = 12 for mixed-precision Adam, divided by the data-parallel degree
``N`` for what each stage partitions), made exact for what launcher's engines keep (read from the
engines' code):

* DeepSpeed ZeRO with bf16/fp16: the module in the compute dtype; fp32 master weights and Adam's
  m and v in the optimizer, partitioned from stage 1; gradients in the compute dtype (DeepSpeed's
  default ``grad_accum_dtype``), partitioned from stage 2; at the optimizer step an fp32 copy of
  this rank's gradient partition (``step_grads``; DeepSpeed's own estimators count it as
  "4_grads_32bit"). fp32 jobs keep the same copies (DeepSpeed clones the master weights), except
  ZeRO-0 in fp32, which runs a plain torch optimizer on the module's parameters.
* FSDP2: full fine-tuning keeps fp32 parameter shards (``MixedPrecisionPolicy`` gathers them in
  the compute dtype and reduces gradients in fp32); LoRA keeps the frozen base in the compute
  dtype and the adapters in fp32. Gradients are fp32 shards; with gradient accumulation the
  unsharded gradients of the micro batches before the last are kept in fp32 (FSDP2 accumulates
  them unsharded while ``set_requires_gradient_sync(False)``). AdamW's m and v are fp32 shards.

Activations and logits: :mod:`launcher.plan.activations`. The overhead (CUDA context, allocator
fragmentation), the processes' host memory and the staging buffers are stated assumptions
(``MemoryPlan.assumptions``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from launcher.plan.activations import LOSS_CHUNK_TOKENS, ActivationInputs, estimate_activations, lora_targets
from launcher.plan.engines import ZeroOptimization
from launcher.plan.types import DeviceMemory, HostMemory, MemoryPlan, ModelInfo

GIB = 1024 ** 3
FIT_MARGIN = 0.10  # share of the GPU's memory a fit leaves free
CUDA_CONTEXT_BYTES = GIB  # CUDA context, cuBLAS and NCCL workspaces: outside torch's allocator
FRAGMENTATION = 0.10  # the caching allocator's reserved-but-unused share, on top of what is allocated
RANK_RUNTIME_BYTES = {"cuda": 3 * GIB, "cpu": 3 * GIB // 4}  # a rank's process before the model
# On CPU under host_memory=fast, glibc raises its mmap threshold as large blocks are freed and keeps
# them in the heap, fragmented, where lean's fixed threshold maps and unmaps them. Measured above
# the plan's other terms (bench/RESULTS.md, issue 30): the embedded default +14.8 MiB on its
# largest rank over 740 steps, the 4.2M bench model +13 to +25 MiB over 40 steps (3 runs); a fixed
# threshold removes it at 45% more time per step on that model, so fast keeps it and counts it.
GLIBC_FAST_RETENTION = 16 * 2 ** 20
CHECKPOINT_SHARD_BYTES = 5 * 10 ** 9  # transformers' default max_shard_size ("5GB")
ZERO0_ALLREDUCE_BUCKET = 500_000_000  # DeepSpeed's allreduce_bucket_size default (elements)
NVME_STAGING = {"optimizer": (4, 100_000_000), "params": (5, 100_000_000)}  # DeepSpeed aio: buffers x elements
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class Layout:
    """Everything of a job that memory depends on (built from a Plan by :func:`layout_of`)."""

    device: str
    strategy: str
    zero_stage: int
    offload_optimizer: str
    offload_params: str
    dtype: str
    method: str
    world: int
    procs_per_node: int
    micro_batch_size: int
    grad_accum_steps: int
    seq_len: int
    packed: bool
    checkpointing: bool
    attn: str = "sdpa"
    reshard_after_forward: bool = True
    reduce_bucket: int = 500_000_000
    prefetch_bucket: int = 50_000_000
    persistence_threshold: int = 100_000
    max_live: int = 1_000_000_000  # ZeRO-3's stage3_max_live_parameters
    overlap_comm: bool = False
    contiguous_gradients: bool = True
    lora_targets: tuple[str, ...] = ()
    lora_dropout: float = 0.0
    lora_r: int = 0
    zero3_linear: bool = False  # DeepSpeed's ZeRO-3 linear: every nn.Linear keeps its input
    host_memory: str = "fast"  # parallel.host_memory as resolved


def layout_of(plan) -> Layout:
    job, p = plan.job, plan.job.parallel
    z = ZeroOptimization.of(plan.ds_config)
    lora = job.train.lora
    return Layout(
        device=plan.device, strategy=p.strategy, zero_stage=p.zero_stage if p.strategy == "zero" else 3,
        offload_optimizer=p.offload_optimizer, offload_params=p.offload_params, dtype=job.model.dtype,
        method=job.train.method, world=plan.world_size, procs_per_node=plan.procs_per_node,
        micro_batch_size=plan.micro_batch_size, grad_accum_steps=plan.grad_accum_steps, seq_len=job.data.max_seq_len,
        packed=job.data.packing, checkpointing=job.train.activation_checkpointing,
        attn=job.model.attn_implementation, reshard_after_forward=p.reshard_after_forward,
        reduce_bucket=z.reduce_bucket_size, prefetch_bucket=z.stage3_prefetch_bucket_size,
        persistence_threshold=z.stage3_param_persistence_threshold, max_live=z.stage3_max_live_parameters,
        overlap_comm=z.overlap_comm, contiguous_gradients=z.contiguous_gradients,
        lora_targets=lora_targets(lora.target_modules) if job.train.method == "lora" else (),
        lora_dropout=lora.dropout, lora_r=lora.r,
        zero3_linear=p.strategy == "zero" and p.zero_stage == 3 and z.memory_efficient_linear,
        host_memory=plan.host_memory,
    )


def _div(n: float, k: int) -> int:
    return -(-int(n) // k)  # ceil: every rank holds at least its padded share


def shapes(info: ModelInfo) -> dict[str, int]:
    """Parameters outside the decoder layers (embeddings, LM head, final norm), per layer, and
    the largest single module (what ZeRO-3 gathers at once)."""
    h, V, L = info.hidden_size, info.vocab_size, info.n_layers
    if info.task == "classification":  # the embedding, the final norm and a head of num_labels outputs
        root = V * h + h + (info.num_labels or 2) * h
    else:
        root = V * h * (1 if info.tie_word_embeddings else 2) + h
    per_layer = max(0, (info.n_params - root) // max(L, 1))
    inter = info.intermediate_size or 4 * h
    return {"root": root, "layer": per_layer, "largest": max(V * h, inter * h, h * h)}


def _persistent(info: ModelInfo, lay: Layout) -> int:
    """Parameters ZeRO-3 keeps gathered on every rank (fewer elements than the persistence
    threshold): the norms and, for LoRA, the small adapter matrices."""
    h, L, thr = info.hidden_size, info.n_layers, lay.persistence_threshold
    n = (2 * L + 1) * h if h < thr else 0
    if lay.method == "lora" and lay.lora_r:
        a = info.n_heads or 1
        d = info.head_dim or h // a
        kv = info.n_kv_heads or a
        inter = info.intermediate_size or 4 * h
        dims = {"q_proj": (h, a * d), "k_proj": (h, kv * d), "v_proj": (h, kv * d), "o_proj": (a * d, h),
                "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
        for name in lay.lora_targets:
            i, o = dims[name]
            n += L * sum(m for m in (lay.lora_r * i, o * lay.lora_r) if m < thr)
    return n


def _fmt(n: float) -> str:
    return f"{int(n):,}"


def _zero(info: ModelInfo, lay: Layout, P: int, A: int, T: int, b: int, f: list[str]) -> tuple[dict, dict]:
    s, N, cpu = lay.zero_stage, lay.world, lay.device == "cpu"
    mixed = lay.dtype != "fp32"
    sp, so, sg = (N if s == 3 else 1), (N if s >= 1 else 1), (N if s >= 2 else 1)
    dev: dict[str, int] = {}
    host: dict[str, int] = {"offload": 0, "buffers": 0, "nvme": 0}
    params = _div(b * (P + A), sp)
    dev["params"] = params if lay.offload_params == "none" else 0
    if lay.offload_params != "none":
        host["offload" if lay.offload_params == "cpu" else "nvme"] += params
        if lay.offload_params == "nvme":
            n, el = NVME_STAGING["params"]
            host["buffers"] += n * el * b
    f.append(f"params = {b} B x {_fmt(P + A)}" + (f" / {sp}" if sp > 1 else "") + f" = {_fmt(params)}"
             + ("" if lay.offload_params == "none" else f" (offloaded to {lay.offload_params})"))
    off = lay.offload_optimizer != "none"
    grads = _div(b * T, sg)
    dev["grads"] = 0 if (off and s >= 2) else grads  # offload: ZeRO-2/3 reduce straight into host memory
    f.append(f"grads = {b} B x {_fmt(T)}" + (f" / {sg}" if sg > 1 else "") + f" = {_fmt(grads)}"
             + (" (on the host: offloaded optimizer)" if off and s >= 2 else ""))
    keep_master = mixed or s >= 1
    master = _div(4 * T, so) if keep_master else 0
    moments = _div(8 * T, so)
    step = _div(4 * T, so) if keep_master else 0
    f.append(f"optimizer = ({'4 master + ' if keep_master else ''}8 Adam m, v) B x {_fmt(T)}"
             + (f" / {so}" if so > 1 else "") + f" = {_fmt(master + moments)}"
             + (f" (offloaded to {lay.offload_optimizer})" if off else ""))
    if step:
        f.append(f"step_grads = 4 B x {_fmt(T)}" + (f" / {so}" if so > 1 else "") + f" = {_fmt(step)} (fp32 "
                 "gradient partition at the optimizer step" + (", on the host)" if off else ")"))
    if off:
        host["offload"] += step + (master + moments if lay.offload_optimizer == "cpu" else 0)
        if lay.offload_optimizer == "nvme":
            host["nvme"] += master + moments
            n, el = NVME_STAGING["optimizer"]
            host["buffers"] += n * el * 4
        dev["optimizer"] = dev["step_grads"] = 0
    else:
        dev["optimizer"], dev["step_grads"] = master + moments, step
    buffers = 0
    if s == 0:
        buffers = b * min(T, ZERO0_ALLREDUCE_BUCKET)
        f.append(f"buffers = all-reduce bucket {b} B x min({_fmt(T)}, {_fmt(ZERO0_ALLREDUCE_BUCKET)}) = {_fmt(buffers)}")
    elif lay.contiguous_gradients:
        n_buf = 2 if (s < 3 and lay.overlap_comm) else 1
        el = min(lay.reduce_bucket, T) if cpu else lay.reduce_bucket  # CPU: only touched pages count
        buffers = n_buf * el * b
        f.append(f"buffers = {n_buf} reduce bucket(s) x {_fmt(el)} x {b} B = {_fmt(buffers)}"
                 + (" (the pages touched: at most the trainable elements)" if cpu else ""))
    if s == 3:
        sh = shapes(info)
        moving = sh["largest"] + min(lay.prefetch_bucket, P + A) + _persistent(info, lay)
        live = min(lay.max_live, P + A)  # kept gathered until reused (reuse distance as large): the whole
        gathered = b * max(moving, live)  # model under DeepSpeed's 1e9 for a model under 1B parameters
        buffers += gathered
        f.append(f"gathered = {b} B x max(largest module {_fmt(sh['largest'])} + prefetch bucket "
                 f"{_fmt(min(lay.prefetch_bucket, P + A))} + persistent {_fmt(_persistent(info, lay))}, "
                 f"live parameters min(stage3_max_live_parameters, all) {_fmt(live)}) = {_fmt(gathered)}")
    dev["buffers"] = buffers
    return dev, host


def _fsdp(info: ModelInfo, lay: Layout, P: int, A: int, T: int, b: int, f: list[str]) -> tuple[dict, dict]:
    N, lora = lay.world, lay.method == "lora"
    dev: dict[str, int] = {}
    host: dict[str, int] = {"offload": 0, "buffers": 0, "nvme": 0}
    stored = b if lora else 4  # LoRA: frozen base in the compute dtype; full: fp32 shards
    params = _div(stored * P + 4 * A, N)
    grads = _div(4 * T, N)
    opt = _div(8 * T, N)
    unsharded = 4 * T if lay.grad_accum_steps > 1 else 0
    f.append(f"params = ({stored} B x {_fmt(P)}" + (f" + 4 B x {_fmt(A)} adapters" if A else "") + f") / {N} = {_fmt(params)}")
    f.append(f"grads = 4 B x {_fmt(T)} / {N} = {_fmt(grads)}"
             + (f"; unsharded fp32 accumulation 4 B x {_fmt(T)} = {_fmt(unsharded)} in buffers (grad_accum_steps "
                f"{lay.grad_accum_steps} > 1: FSDP2 keeps unsharded gradients until the last micro batch)"
                if unsharded else ""))
    f.append(f"optimizer = 8 B (AdamW m, v) x {_fmt(T)} / {N} = {_fmt(opt)}")
    # the unsharded accumulation lives only through the backward passes of one step (reduce-
    # scattered and freed at the last micro batch): a buffer, not a state the optimizer steps
    if lay.offload_params == "cpu":
        host["offload"] = params + grads + opt
        dev.update(params=0, grads=0, optimizer=0)
    else:
        dev.update(params=params, grads=grads, optimizer=opt)
    dev["step_grads"] = 0
    sh = shapes(info)
    if lay.reshard_after_forward:
        gathered = b * (sh["root"] + 2 * sh["layer"])
        how = f"root {_fmt(sh['root'])} (kept gathered from forward to backward) + 2 layers x {_fmt(sh['layer'])}"
    else:
        gathered = b * (P + A)
        how = f"every parameter {_fmt(P + A)} (reshard_after_forward=false)"
    t_unit = max(T // max(info.n_layers, 1), 0) if lora else max(sh["layer"], sh["root"])
    reduce = (b + 4) * t_unit
    dev["buffers"] = gathered + reduce + unsharded
    f.append(f"buffers = gathered {b} B x ({how}) + reduce ({b} + 4) B x {_fmt(t_unit)}"
             + (f" + unsharded accumulation {_fmt(unsharded)}" if unsharded else "")
             + f" = {_fmt(gathered + reduce + unsharded)}")
    return dev, host


def estimate_memory(info: ModelInfo, lay: Layout, n_trainable: int, *, loss_chunk_tokens: Optional[int] = None) -> MemoryPlan:
    """Memory per device and per node for ``lay`` (docs/memory.md states every term)."""
    b = DTYPE_BYTES[lay.dtype]
    P = info.n_params
    A = n_trainable if lay.method == "lora" else 0
    T = n_trainable
    formulas: list[str] = [f"P = {_fmt(P)} parameters, T = {_fmt(T)} trainable, N = {lay.world} ranks, "
                           f"{b} B per value ({lay.dtype})"]
    states, host = (_zero if lay.strategy == "zero" else _fsdp)(info, lay, P, A, T, b, formulas)
    act = estimate_activations(info, ActivationInputs(
        bytes_per_value=b, micro_batch_size=lay.micro_batch_size, seq_len=lay.seq_len,
        checkpointing=lay.checkpointing, attn=lay.attn, packed=lay.packed, full=lay.method == "full",
        lora_targets=lay.lora_targets, lora_dropout=lay.lora_dropout, lora_r=lay.lora_r,
        frozen_keep_input=lay.zero3_linear), loss_chunk_tokens)
    formulas += list(act.formulas)
    model_states = states["params"] + states["grads"] + states["optimizer"] + states["step_grads"]
    allocated = model_states + act.activations + act.logits + states["buffers"]
    context = CUDA_CONTEXT_BYTES if lay.device == "cuda" else 0
    glibc = GLIBC_FAST_RETENTION if (lay.device == "cpu" and lay.host_memory == "fast") else 0
    overhead = context + int(FRAGMENTATION * allocated) + glibc
    total = allocated + overhead
    formulas.append(f"overhead = {'CUDA context ' + _fmt(context) + ' + ' if context else ''}"
                    f"{FRAGMENTATION:.0%} of {_fmt(allocated)} allocated"
                    f"{' + glibc heap retention (host_memory fast) ' + _fmt(glibc) if glibc else ''} = {_fmt(overhead)}")
    per_device = DeviceMemory(params=states["params"], grads=states["grads"], optimizer=states["optimizer"],
                              step_grads=states["step_grads"], model_states=model_states, activations=act.activations,
                              logits=act.logits, buffers=states["buffers"], overhead=overhead, total=total)
    g = lay.procs_per_node
    runtime = g * RANK_RUNTIME_BYTES[lay.device]
    if lay.strategy == "fsdp":  # built on the meta device; each rank reads its shards (memory-mapped)
        load_rank = states["params"] + host["offload"]
    elif lay.zero_stage == 3:  # zero.Init: partitioned as created; the checkpoint read a shard file at a time
        load_rank = min(b * (P + A), CHECKPOINT_SHARD_BYTES)
    else:  # one whole copy in the compute dtype before DeepSpeed moves it to the device
        load_rank = b * (P + A)
    training = g * total if lay.device == "cpu" else 0  # on CPU the device is the host
    hm = HostMemory(runtime=runtime, offload=g * host["offload"], buffers=g * host["buffers"],
                    loading=g * load_rank, total=0)
    host_total = runtime + max(training + hm.offload + hm.buffers, hm.loading)
    hm = hm.model_copy(update={"total": host_total})
    formulas.append(
        f"host per node = {g} ranks x runtime {_fmt(RANK_RUNTIME_BYTES[lay.device])} + max("
        + (f"training {g} x {_fmt(total)} + " if training else "")
        + f"offload {_fmt(hm.offload)} + staging {_fmt(hm.buffers)}, loading {g} x {_fmt(load_rank)}) = {_fmt(host_total)}")
    assumptions = [
        "launcher's trainer: DeepSpeed keeps the module in the compute dtype, FSDP2 keeps fp32 shards "
        "(LoRA: frozen base in the compute dtype, adapters fp32), the loss is taken in pieces of "
        f"{loss_chunk_tokens or LOSS_CHUNK_TOKENS} positions",
        f"overhead: {'CUDA context, cuBLAS and NCCL workspaces ' + _fmt(CUDA_CONTEXT_BYTES) + ' B per GPU + ' if context else ''}"
        f"{FRAGMENTATION:.0%} allocator fragmentation"
        + (f"; on CPU under host_memory fast, {_fmt(GLIBC_FAST_RETENTION)} B glibc keeps in its heap (measured)"
           if glibc else ""),
        f"each rank's process takes {_fmt(RANK_RUNTIME_BYTES[lay.device])} B of host memory before the model",
        "loading: ZeRO 0-2 hold the whole model in the compute dtype on the host per rank; ZeRO-3 (zero.Init) one "
        f"checkpoint shard per rank (at most {_fmt(CHECKPOINT_SHARD_BYTES)} B); FSDP2 (meta device) its own shards",
        "tokens per micro batch: micro_batch_size x max_seq_len (" + ("packed: exact" if lay.packed else
                                                                      "padded: the longest possible batch") + ")",
    ]
    if host["buffers"]:
        assumptions.append("NVMe offload: DeepSpeed's aio staging buffers (optimizer 4 x 1e8 fp32, parameters "
                           "5 x 1e8 elements) in pinned host memory per rank")
    return MemoryPlan(device=lay.device, per_device_bytes=per_device, host_per_node_bytes=host_total, host_per_node=hm,
                      nvme_per_node_bytes=g * host["nvme"], tokens_per_micro_batch=lay.micro_batch_size * lay.seq_len,
                      formulas=formulas, assumptions=assumptions)
