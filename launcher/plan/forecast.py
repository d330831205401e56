"""The forecast of a job: steps, tokens, time, GPU-hours, kWh, kgCO2e and money, and the
communication each step needs. Pure arithmetic on the Plan and the stated assumptions of
:mod:`launcher.facts.hardware`; the carbon intensity and an earlier run's measurements
(the calibration history, ``--calibrate``) are handed in by the caller, which reads them
(:mod:`launcher.report.carbon`, :mod:`launcher.report.history`).

Time per optimizer step::

    compute  = tokens_per_step x (flops_per_token + recompute) / (world x peak x MFU)
    step     = max(compute, communication lower bound) + offload transfers and CPU optimizer

``flops_per_token`` is the report's model-FLOPs convention (:mod:`launcher.facts.flops`);
``recompute`` is one more forward (``2 N + 4 L h s``) with activation checkpointing; MFU is the
assumption for the GPU kind. Communication (bytes each GPU sends per step, ring collectives:
all-reduce ``2 (N-1)/N M``, all-gather and reduce-scatter ``(N-1)/N M``; ZeRO paper section 7,
FSDP paper, Zhao et al. 2023, section 3) can overlap compute, so the step is at least the larger
of the two; across nodes a collective's bus bandwidth is at most the node's network bandwidth
(nccl-tests doc/PERFORMANCE.md), so ``bytes / (interconnect_gbps / 8)`` bounds its time from
below. Offload copies and the CPU optimizer are counted as not overlapped.

Energy (PUE included, as CodeCarbon reports it): ``hours x (world x GPU power + nodes x host
power) x PUE``; CO2 = kWh x the country's intensity; cost = GPU-hours x ``gpu_hour_price`` (or
node-hours x ``node_hour_price``) + kWh x ``energy_price_per_kwh``.
"""
from __future__ import annotations

from typing import Optional

from launcher.plan.memory import DTYPE_BYTES, Layout, layout_of
from launcher.plan.calibration import (adapter_work, fitted_step_time, module_fetches, scaled_energy_per_token,
                                       scaled_step_time, sharded)
from launcher.plan.types import Calibration, Communication, CpuProbe, Forecast, Plan
from launcher.facts.flops import flops_per_token_from_config, matmul_params
from launcher.facts.hardware import (CPU_MFU, GPU_POWER_SHARE, HOST, HOST_LINK_EFFICIENCY, codecarbon_cpu_watts,
                                     match_accelerator, mfu_assumption)


def _g(n: float) -> str:
    return f"{n / 1e9:,.2f} GB"


def param_counts(plan: Plan) -> tuple[int, int, int]:
    """(parameters, LoRA adapters, trainable parameters) as :func:`communication` takes them; 0s
    for a plan without its model."""
    if not plan.model:
        return 0, 0, 0
    trainable = (plan.params or {}).get("trainable", 0)
    return plan.model.n_params, trainable if plan.job.train.method == "lora" else 0, trainable


def communication(lay: Layout, P: int, A: int, T: int) -> tuple[list[str], int]:
    """(one line per collective, bytes each GPU sends per optimizer step)."""
    N, b, k = lay.world, DTYPE_BYTES[lay.dtype], lay.grad_accum_steps
    if N <= 1:
        return ["one rank: no collectives"], 0
    r = (N - 1) / N
    lines: list[tuple[str, float]] = []
    if lay.strategy == "zero":
        s = lay.zero_stage
        if s == 0:
            lines.append((f"all-reduce gradients once per step: 2 x {r:.4f} x {b} B x {T:,}", 2 * r * b * T))
        else:
            per = k if s >= 2 else 1
            lines.append((f"reduce-scatter gradients {per}x per step (every micro batch from ZeRO-2): "
                          f"{per} x {r:.4f} x {b} B x {T:,}", per * r * b * T))
            if s < 3:
                lines.append((f"all-gather updated parameters once per step: {r:.4f} x {b} B x {T:,}", r * b * T))
            else:
                lines.append((f"all-gather parameters in forward and backward, {k} micro batch(es): 2 x {k} x "
                              f"{r:.4f} x {b} B x {P + A:,}", 2 * k * r * b * (P + A)))
    else:
        passes = 2 if lay.reshard_after_forward else 1
        lines.append((f"all-gather parameters ({'forward and backward' if passes == 2 else 'forward'}), {k} micro "
                      f"batch(es): {passes} x {k} x {r:.4f} x {b} B x {P + A:,}", passes * k * r * b * (P + A)))
        lines.append((f"reduce-scatter fp32 gradients once per step: {r:.4f} x 4 B x {T:,}", r * 4 * T))
    total = int(sum(v for _, v in lines))
    return [f"{text} = {_g(v)}" for text, v in lines], total


def _offload_s(lay: Layout, P: int, A: int, T: int, link_gb_s: float) -> tuple[float, list[str]]:
    """Seconds per step of host copies, the CPU optimizer and NVMe traffic (not overlapped)."""
    N, b, k, g = lay.world, DTYPE_BYTES[lay.dtype], lay.grad_accum_steps, lay.procs_per_node
    bw = link_gb_s * 1e9 * HOST_LINK_EFFICIENCY.value
    pcie = nvme = 0.0
    cpu_opt = 0.0
    notes: list[str] = []
    opt_off = lay.offload_optimizer != "none" or (lay.strategy == "fsdp" and lay.offload_params == "cpu")
    if opt_off:
        per = k if (lay.strategy == "zero" and lay.zero_stage >= 2) else 1
        pcie += per * (4 if lay.strategy == "fsdp" else b) * T / N + b * T / N
        cpu_opt = T / N * g / HOST.cpu_adam_params_per_s
        notes.append(f"CPU optimizer: {T / N * g:,.0f} parameters per node at {HOST.cpu_adam_params_per_s:.0e}/s")
    if lay.offload_params != "none":
        stored = 4 if (lay.strategy == "fsdp" and lay.method == "full") else b
        pcie += 2 * k * stored * (P + A) / N
        if lay.offload_params == "nvme":
            nvme += 2 * k * stored * (P + A) / N * g
    if lay.offload_optimizer == "nvme":
        nvme += 2 * 12 * T / N * g
    if pcie:
        notes.append(f"host link: {_g(pcie)} per GPU per step at {link_gb_s:g} GB/s x {HOST_LINK_EFFICIENCY.value}")
    if nvme:
        notes.append(f"NVMe: {_g(nvme)} per node per step at {HOST.nvme_gb_s:g} GB/s")
    return pcie / bw + cpu_opt + nvme / (HOST.nvme_gb_s * 1e9), notes


def _steps(plan: Plan) -> tuple[Optional[int], str]:
    t = plan.job.train
    if plan.train_rows is not None and plan.total_steps is not None:
        return plan.total_steps, f"the data: {plan.train_rows:,} rows, {plan.steps_per_epoch} steps per epoch x {t.epochs}"
    if t.max_steps is not None:
        return t.max_steps, "train.max_steps (at most: the data may give fewer)"
    return None, ""


def build_forecast(plan: Plan, *, carbon_intensity: Optional[float] = None, carbon_source: Optional[str] = None,
                   calibration: Optional[Calibration] = None, accelerator: Optional[str] = None,
                   cpu: Optional[CpuProbe] = None) -> Forecast:
    """The forecast of ``plan`` (``accelerator``: a GPU name when the job names none; ``cpu``: this
    machine's measured matrix throughput and power, for a CPU job that runs here)."""
    job, rep = plan.job, plan.job.report
    missing: list[str] = []
    assumptions: list[str] = []
    steps, steps_source = _steps(plan)
    if steps is None:
        missing.append("steps: the forecast needs the data's row count (launcher plan --with-data) or train.max_steps")
    tps = plan.tokens_per_step
    tokens = steps * tps if steps is not None else None
    m, lay = plan.model, layout_of(plan)
    P, A, T = param_counts(plan)
    fpt, recompute = _flops(plan, P, A, missing)
    name = job.cluster.accelerator or accelerator
    accel = match_accelerator(name) if plan.device == "cuda" else None
    on_cpu = plan.device == "cpu" and cpu is not None
    peak = accel.peak_tflops(plan.dtype) if accel else (cpu.matmul_gflops / 1000 if on_cpu else None)
    mfu = mfu_assumption(accel) if accel else (CPU_MFU if on_cpu else None)
    if plan.device == "cuda" and accel is None:
        missing.append("GPU kind: set cluster.accelerator (e.g. H100-SXM) for the time and energy forecast"
                       if not name else f"GPU kind {name!r} is not in launcher.facts.hardware")
    elif plan.device == "cpu" and cpu is None and calibration is None:
        missing.append("time: the CPU's matrix throughput is measured only where the job runs (launcher run, or "
                       "launcher plan there); use --calibrate RUN_DIR with an earlier run")
    comm_lines, comm_bytes = communication(lay, P, A, T) if m else ([], 0)
    gbps = job.cluster.interconnect_gbps
    comm_s = comm_bytes / (gbps / 8 * 1e9) if (gbps and plan.nodes > 1 and comm_bytes) else None
    compute_s = offload_s = step_s = None
    mfu_fc = None
    point = calibration.point if calibration else None
    fit = calibration.fit if calibration else None
    if fit is not None and fpt:
        gathered = comm_bytes if sharded(plan.strategy, plan.zero_stage) else 0  # calibration.gathered_bytes
        fetches, adapters = module_fetches(plan), adapter_work(plan)
        compute_s = fitted_step_time(fit, tps, fpt + (recompute or 0), plan.world_size, plan.threads_per_rank,
                                     gathered, fetches, adapters)
        step_s = max(compute_s, comm_s or 0.0)
        sends = (f" + {_g(gathered)} sent per rank at {fit.s_per_gb_gathered:.3g} s per GB (sharded parameters, "
                 f"gathered every step)" if fit.s_per_gb_gathered and gathered else "")
        if fit.ms_per_fetch and fetches:
            sends += f" + {fetches:,} parameter fetches per step at {fit.ms_per_fetch:.3g} ms each"
        if fit.ns_per_adapter_value and adapters:
            sends += (f" + {adapters:,.0f} LoRA adapter values per step that the rank's threads do not share at "
                      f"{fit.ns_per_adapter_value:.3g} ns each")
        if fit.multi_rank_s and plan.world_size > 1:
            sends += f" + {fit.multi_rank_s:.3g} s per step of more than one rank (their collectives and waits)"
        assumptions.append(f"time: {fit.overhead_s:.3g} s of overhead per step + the FLOPs per thread at "
                           f"{fit.gflops_per_thread:,.1f} GFLOP/s{sends}, fitted over {fit.points} runs of the "
                           f"calibration history on this device (nearest: {calibration.run_dir})")
    elif point is not None and point.flops_per_token and fpt:
        compute_s = scaled_step_time(point, tps, fpt + (recompute or 0), plan.world_size)
        step_s = max(compute_s, comm_s or 0.0)
        assumptions.append(f"time: {point.step_time_s:.4g} s per step measured in {point.run_dir} "
                           f"({point.tokens_per_step:,} tokens of {point.flops_per_token:,.0f} FLOPs on "
                           f"{point.world_size} ranks), scaled by the FLOPs per rank per step")
    elif calibration and calibration.tokens_per_s_per_device:
        step_s = tps / (calibration.tokens_per_s_per_device * plan.world_size)
        assumptions.append(f"time: {calibration.tokens_per_s_per_device:,.1f} tokens/s per device measured in "
                           f"{calibration.run_dir}")
    elif fpt and peak and mfu:
        compute_s = tps * (fpt + (recompute or 0)) / (plan.world_size * peak * 1e12 * mfu.value)
        if accel:
            offload_s, off_notes = _offload_s(lay, P, A, T, accel.host_link_gb_s)
        else:
            offload_s, off_notes = 0.0, []
        step_s = max(compute_s, comm_s or 0.0) + offload_s
        mfu_fc = tps * fpt / (step_s * plan.world_size * peak * 1e12)
        if accel:
            assumptions.append(f"MFU {mfu.value:.0%} on {accel.name} ({mfu.source})")
        else:
            assumptions.append(f"{cpu.matmul_gflops:,.1f} GFLOP/s per rank: {cpu.dtype} {cpu.matmul_n}x{cpu.matmul_n} "
                               f"matrix products with {cpu.threads} thread(s) on this {cpu.cpu_model} "
                               f"(launcher.prepare.probe, {cpu.cache_file}); MFU {mfu.value:.0%} of it ({mfu.source})")
        if recompute:
            assumptions.append(f"activation checkpointing recomputes the forward: +{recompute:,.0f} FLOPs per token")
        assumptions += off_notes
    comm = _communication(plan, comm_lines, comm_bytes, comm_s, compute_s) if m and plan.world_size > 1 else None
    general_s = None
    if job.eval.general_data and step_s is not None and tps:
        # a forward pass costs about a third of a training step's FLOPs per token
        general_s = 2 * job.eval.general_max_tokens * step_s / tps / 3
        assumptions.append(f"forgetting: 2 forward passes (before, after) over eval.general_max_tokens "
                           f"{job.eval.general_max_tokens:,} tokens of eval.general_data, a third of a training "
                           f"step's time per token each: {general_s:.3g} s")
    warmup_s = point.warmup_s if (point is not None and step_s is not None) else None
    if warmup_s:
        assumptions.append(f"warm-up: {warmup_s:.3g} s once, what the first step took over the steady step in "
                           f"{point.run_dir}")
    hours = ((steps * step_s + (warmup_s or 0.0) + (general_s or 0.0)) / 3600
             if (steps is not None and step_s is not None) else None)
    gpu_hours = hours * plan.world_size if hours is not None else None
    node_hours = hours * plan.nodes if hours is not None else None
    gpu_w, host_w, kwh = _energy(plan, accel, cpu, hours, tokens, step_s, calibration, assumptions, missing)
    kg = kwh * carbon_intensity / 1000 if (kwh is not None and carbon_intensity is not None) else None
    if kwh is not None and carbon_intensity is None:
        missing.append(f"CO2: no carbon intensity for {rep.country_iso_code} was handed in")
    compute_cost = energy_cost = None
    if rep.gpu_hour_price is not None and gpu_hours is not None:
        compute_cost = gpu_hours * rep.gpu_hour_price
    elif rep.node_hour_price is not None and node_hours is not None:
        compute_cost = node_hours * rep.node_hour_price
    if rep.energy_price_per_kwh is not None and kwh is not None:
        energy_cost = kwh * rep.energy_price_per_kwh
    parts = [c for c in (compute_cost, energy_cost) if c is not None]
    offset = kg / 1000.0 * rep.offset_price_per_tonne if (kg is not None and rep.offset_price_per_tonne is not None) \
        else None
    return Forecast(
        steps=steps, steps_source=steps_source, tokens=tokens, tokens_per_step=tps, flops_per_token=fpt,
        accelerator=accel.name if accel else (cpu.cpu_model if (plan.device == "cpu" and cpu) else name),
        peak_tflops=peak, mfu_assumed=mfu.value if mfu else None,
        mfu_source=mfu.source if mfu else None, mfu_forecast=mfu_fc, compute_s_per_step=compute_s,
        offload_s_per_step=offload_s, step_time_s=step_s, warmup_s=warmup_s, general_eval_s=general_s,
        tokens_per_s_per_device=tps / step_s / plan.world_size if step_s else None, hours=hours, gpu_hours=gpu_hours,
        node_hours=node_hours, gpu_power_w=gpu_w, host_power_w=host_w, pue=rep.pue, kwh=kwh,
        country_iso_code=rep.country_iso_code, carbon_intensity_g_per_kwh=carbon_intensity, carbon_source=carbon_source,
        kg_co2e=kg, compute_cost=compute_cost, energy_cost=energy_cost, cost=sum(parts) if parts else None,
        currency=rep.currency, offset_price_per_tonne=rep.offset_price_per_tonne, offset_cost=offset,
        calibration=calibration, cpu=cpu if plan.device == "cpu" else None, communication=comm,
        assumptions=assumptions, missing=missing,
    )


def _flops(plan: Plan, P: int, A: int, missing: list[str]) -> tuple[Optional[float], Optional[float]]:
    """(model FLOPs per token, the forward's FLOPs per token recomputed under activation
    checkpointing), from the model's shape (None without one)."""
    m = plan.model
    if not m:
        missing.append("flops per token: the model's config.json is not known here")
        return None, None
    cfg = {"num_hidden_layers": m.n_layers, "hidden_size": m.hidden_size, "vocab_size": m.vocab_size,
           # a classifier has no LM head: its embedding table is never a matmul, tied or not
           "tie_word_embeddings": m.tie_word_embeddings and m.task != "classification"}
    fpt = flops_per_token_from_config(cfg, plan.seq_len, P + A, A if A else None, plan.job.train.method)
    recompute = None
    if plan.job.train.activation_checkpointing:
        recompute = 2.0 * matmul_params(cfg, P + A) + 4.0 * m.n_layers * m.hidden_size * plan.seq_len
    return fpt, recompute


def _communication(plan: Plan, lines: list[str], nbytes: int, comm_s: Optional[float],
                   compute_s: Optional[float]) -> Communication:
    """What a step sends per GPU, its time at the interconnect's bandwidth, and what bounds the step."""
    gbps = plan.job.cluster.interconnect_gbps
    if plan.nodes <= 1:
        note = "one node: NVLink/PCIe between the GPUs is not modelled"
    elif not gbps:
        note = "cluster.interconnect_gbps unknown: no lower bound on communication time"
    else:
        note = (f"lower bound: {_g(nbytes)} per GPU at {gbps:g} Gbit/s per node (a collective's bus "
                "bandwidth across nodes is at most the node's network bandwidth)")
    bound = None
    if comm_s is not None and compute_s is not None:
        bound = "communication" if comm_s > compute_s else "compute"
    return Communication(collectives=lines, bytes_per_gpu_per_step=nbytes, interconnect_gbps=gbps,
                         time_lower_bound_s=comm_s, compute_s=compute_s, bound=bound, note=note)


def _energy(plan: Plan, accel, cpu: Optional[CpuProbe], hours: Optional[float], tokens: Optional[int],
            step_s: Optional[float], calibration: Optional[Calibration], assumptions: list[str],
            missing: list[str]) -> tuple[Optional[float], Optional[float], Optional[float]]:
    """(W per GPU, W of a node's host, kWh with PUE): from an earlier run's energy per token, or
    from the GPU's board power (the CPU's and RAM's as CodeCarbon counts them, on CPU) and the
    host's assumed power over the forecast hours."""
    rep = plan.job.report
    point = calibration.point if calibration else None
    pue_ratio = rep.pue / ((calibration.pue if calibration else None) or 1.0)
    if point is not None and point.energy_per_token_j and tokens is not None and step_s:
        threads = plan.threads_per_rank if plan.device == "cpu" else None
        ept = scaled_energy_per_token(point, step_s, plan.tokens_per_step, plan.world_size, threads)
        assumptions.append(f"energy: {point.energy_per_token_j:.4g} J per token measured in {point.run_dir}, "
                           f"scaled by the time per token and the devices (on CPU: the cores) drawing power: {ept:.4g} J "
                           f"(PUE {calibration.pue:g} there, {rep.pue:g} here)")
        return None, None, tokens * ept / 3.6e6 * pue_ratio
    if calibration and calibration.energy_per_token_j and tokens is not None:
        assumptions.append(f"energy: {calibration.energy_per_token_j:.4g} J per token measured in "
                           f"{calibration.run_dir} (PUE {calibration.pue:g} there, {rep.pue:g} here)")
        return None, None, tokens * calibration.energy_per_token_j / 3.6e6 * pue_ratio
    if accel is not None and hours is not None:
        gpu_w = accel.tdp_w * GPU_POWER_SHARE.value
        host_w = HOST.cpu_w + HOST.ram_w
        assumptions.append(f"power: {gpu_w:g} W per GPU ({GPU_POWER_SHARE.source}); host {host_w:.0f} W per node "
                           f"(CPU: {HOST.cpu_source}; RAM: {HOST.ram_source}); PUE {rep.pue:g}")
        return gpu_w, host_w, hours * (plan.world_size * gpu_w + plan.nodes * host_w) / 1000 * rep.pue
    if plan.device == "cpu" and cpu is not None and hours is not None:
        load = min(1.0, plan.procs_per_node * (plan.threads_per_rank or 1) / cpu.logical_cpus)
        cpu_w = codecarbon_cpu_watts(cpu.cpu_tdp_w, load)
        host_w = cpu_w + cpu.ram_w
        assumptions.append(f"power: {host_w:.3g} W per node as CodeCarbon counts it: CPU {cpu_w:.3g} W ({cpu.cpu_tdp_source}, "
                           f"x (0.1 + 0.9 x load^3) at load {load:.0%}), RAM {cpu.ram_w:.3g} W (its RAM model); "
                           f"PUE {rep.pue:g}")
        return None, host_w, hours * plan.nodes * host_w / 1000 * rep.pue
    if hours is not None or calibration:
        missing.append("energy: no power figures for this device; --calibrate RUN_DIR gives energy per token")
    return None, None, None


def with_forecast(plan: Plan, **kw) -> Plan:
    """``plan`` with its forecast made again (after the steps, the intensity or a calibration
    changed); what the old forecast was handed in is kept unless ``kw`` replaces it."""
    old = plan.forecast
    args = {"carbon_intensity": old.carbon_intensity_g_per_kwh if old else None,
            "carbon_source": old.carbon_source if old else None,
            "calibration": old.calibration if old else None,
            "accelerator": old.accelerator if (old and plan.device == "cuda") else None,
            "cpu": old.cpu if old else None}
    args.update(kw)
    return plan.model_copy(update={"forecast": build_forecast(plan, **args)})
