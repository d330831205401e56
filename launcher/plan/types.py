"""The Plan: every value of a job resolved, typed and frozen. It is written once to the run
directory (``plan.json``, through :mod:`launcher.rundir`) and read back by the ranks, the
renderers and the report: none of them re-derives a default."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, computed_field, model_validator

from launcher.modelinfo import ModelInfo
from launcher.plan.engines import FsdpSettings
from launcher.spec import JobSpec


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceMemory(_Frozen):
    """Bytes per device (per rank on CPU) at the peak of a training step (launcher.plan.memory)."""

    params: int  # parameters stored on this device (sharded where the strategy shards them)
    grads: int  # gradients kept for the optimizer step (sharded where the strategy shards them)
    optimizer: int  # fp32 master weights (where kept apart from the parameters) and Adam's m and v
    step_grads: int = 0  # the fp32 gradient partition DeepSpeed builds at the optimizer step
    model_states: int  # params + grads + optimizer + step_grads
    activations: int
    logits: int  # the LM head's logits, their gradient and one fp32 loss chunk
    buffers: int  # gathered parameters, reduce buckets, unsharded gradients
    overhead: int  # CUDA context and allocator fragmentation (stated in MemoryPlan.assumptions)
    total: int


class HostMemory(_Frozen):
    """Bytes of host memory per node."""

    runtime: int  # the ranks' processes (Python, torch, CUDA and communication libraries)
    offload: int  # offloaded parameters, gradients and optimizer states (pinned)
    buffers: int  # pinned staging buffers of NVMe offload
    loading: int  # the weights while loading (before training; not at the same time as offload)
    total: int  # runtime + max(offload + buffers, loading)


class MemoryPlan(_Frozen):
    """Memory per device and per node, each term with its formula (docs/memory.md)."""

    device: Literal["cuda", "cpu"]
    per_device_bytes: DeviceMemory
    host_per_node_bytes: int
    host_per_node: HostMemory
    nvme_per_node_bytes: int = 0
    tokens_per_micro_batch: int
    formulas: list[str] = []
    assumptions: list[str] = []


class CpuProbe(_Frozen):
    """What this machine measured for a CPU job's forecast (``launcher.prepare.probe``): the matrix
    throughput one rank reaches with its threads in the job's dtype, and the CPU and RAM power
    CodeCarbon would use for it."""

    cpu_model: str
    logical_cpus: int
    threads: int
    dtype: str
    matmul_gflops: float  # one rank's, with ``threads`` threads
    matmul_n: int  # the square matrices multiplied
    cpu_tdp_w: float
    cpu_tdp_source: str
    ram_w: float
    torch_version: str
    measured_at: float
    cache_file: Optional[str] = None


class CalibrationPoint(_Frozen):
    """One finished run, as the calibration history keeps it: its configuration and what it
    measured (``launcher.report.history``)."""

    run_dir: str
    finished_at: float
    device: str  # cuda | cpu
    device_kind: str  # the GPU's name, or the CPU's model
    n_params: int
    n_trainable_params: int
    method: str
    strategy: str
    task: str = "causal_lm"  # points written before classification existed are causal LM
    zero_stage: Optional[int] = None
    dtype: str
    seq_len: int
    packing: bool
    micro_batch_size: int
    grad_accum_steps: int
    world_size: int
    nodes: int
    threads_per_rank: Optional[int] = None
    activation_checkpointing: bool = False
    offload: str = "none"  # "optimizer->cpu, params->nvme" or none
    host_memory: str = "fast"  # parallel.host_memory as resolved (lean trims the host's memory after each step)
    # bytes each rank sends per step where the parameters are sharded and gathered (ZeRO-3, FSDP2:
    # launcher.plan.calibration.gathered_bytes), 0 elsewhere; None in points written before it was kept
    gathered_bytes: Optional[int] = None
    # parameter fetches each rank makes per step where the parameters are sharded (ZeRO-3's modules,
    # FSDP2's units: launcher.plan.calibration.module_fetches), 0 elsewhere; None in points written
    # before it was kept
    module_fetches: Optional[int] = None
    # the LoRA adapter values each rank passes per step that its threads do not share
    # (launcher.plan.calibration.adapter_work), 0 elsewhere; None in points written before it was kept
    adapter_work: Optional[float] = None
    tokens_per_step: int
    flops_per_token: Optional[float] = None
    steps: int
    # the mean of the run's training steps after each attempt's first (the report's
    # steady_step_time_s); the mean over all of them in points written before it was kept
    step_time_s: float
    warmup_s: Optional[float] = None  # what an attempt's first step took over it
    tokens_per_s_per_device: Optional[float] = None
    energy_per_token_j: Optional[float] = None  # PUE included
    pue: float = 1.0


class StepFit(_Frozen):
    """A step's time as ``overhead_s + work / (gflops_per_thread x 1e9) + gathered GB x s_per_gb_gathered``,
    ``+ multi_rank_s`` for more than one rank ``+ fetches x ms_per_fetch / 1e3 + adapter work x
    ns_per_adapter_value / 1e9`` (work: the FLOPs each thread computes per step, on GPUs each rank's;
    gathered: what a rank sends per step under ZeRO-3 or FSDP2; fetches: how many parameter fetches
    it makes there; adapter work: the LoRA adapter values a rank's threads do not share), fitted
    over the calibration history's runs on this device in this dtype: the rate from all of them, the
    overhead from those whose configuration is like the job's
    (:func:`launcher.plan.calibration.fit_step`)."""

    points: int
    gflops_per_thread: float
    overhead_s: float
    # + gathered bytes x this: seconds per GB a rank sends per step under ZeRO-3 or FSDP2, which
    # gather every parameter each step; None when the history has no such run to tell it by
    s_per_gb_gathered: Optional[float] = None
    # + this for a step of more than one rank: their collectives and waits, which one rank does not
    # pay; None when the history lacks runs of one rank or of several to tell it by
    multi_rank_s: Optional[float] = None
    # + this x the parameter fetches per step where the parameters are sharded (ZeRO-3 fetches each
    # module, FSDP2 each unit: hooks and a collective each); None when the history cannot tell it
    ms_per_fetch: Optional[float] = None
    # + this x the LoRA adapter values per step a rank's threads do not share (peft's rank-r
    # products are too thin to split); None when the history cannot tell it
    ns_per_adapter_value: Optional[float] = None


class Calibration(_Frozen):
    """What an earlier run measured, to replace the forecast's assumptions: the nearest run of the
    calibration history (``source`` history), or one named with ``--calibrate`` (``source``
    --calibrate). ``distance``: how far its configuration is from the job's
    (``launcher.plan.calibration.distance``; 0 = the same)."""

    run_dir: str
    source: Literal["history", "--calibrate"] = "--calibrate"
    distance: Optional[float] = None
    tokens_per_s_per_device: Optional[float] = None
    energy_per_token_j: Optional[float] = None  # PUE included (as CodeCarbon reports it)
    pue: float = 1.0
    world_size: Optional[int] = None
    strategy: Optional[str] = None
    zero_stage: Optional[int] = None
    accelerator: Optional[str] = None
    point: Optional[CalibrationPoint] = None  # the run's configuration: the forecast scales from it
    fit: Optional[StepFit] = None  # history only, when no run of the same configuration is in it


class BestStart(_Frozen):
    """The start within ``--start-window`` whose hours give the job the least forecast CO2, from an
    hourly intensity forecast (``report.intensity_forecast``; launcher.plan.start)."""

    at: str  # UTC, ISO 8601
    at_epoch: float
    kg_co2e: float
    kg_co2e_now: float
    saving_kg: float
    window_h: float
    duration_h: float
    source: str


class Communication(_Frozen):
    """Bytes each GPU sends (and receives) per optimizer step, and the inter-node lower bound."""

    collectives: list[str]
    bytes_per_gpu_per_step: int
    interconnect_gbps: Optional[float] = None
    time_lower_bound_s: Optional[float] = None
    compute_s: Optional[float] = None
    bound: Optional[Literal["compute", "communication"]] = None
    note: str = ""


class Forecast(_Frozen):
    """Steps, time, energy, CO2 and money of a job before it runs (launcher.plan.forecast)."""

    steps: Optional[int] = None
    steps_source: str = ""
    tokens: Optional[int] = None
    tokens_per_step: int
    flops_per_token: Optional[float] = None
    accelerator: Optional[str] = None
    peak_tflops: Optional[float] = None
    mfu_assumed: Optional[float] = None
    mfu_source: Optional[str] = None
    mfu_forecast: Optional[float] = None  # model FLOPs over the peak, after recompute and waits
    compute_s_per_step: Optional[float] = None
    offload_s_per_step: Optional[float] = None
    general_eval_s: Optional[float] = None  # eval.general_data: the two passes (before and after)
    step_time_s: Optional[float] = None
    # once per start: what the calibration run's first step took over its steady step (first-touch
    # allocations, the optimizer's state, first kernel calls); in hours, not in step_time_s
    warmup_s: Optional[float] = None
    tokens_per_s_per_device: Optional[float] = None
    hours: Optional[float] = None
    gpu_hours: Optional[float] = None  # device-hours on CPU
    node_hours: Optional[float] = None
    gpu_power_w: Optional[float] = None  # per device
    host_power_w: Optional[float] = None  # per node
    pue: float = 1.0
    kwh: Optional[float] = None  # PUE included
    country_iso_code: str = "USA"
    carbon_intensity_g_per_kwh: Optional[float] = None
    carbon_source: Optional[str] = None
    kg_co2e: Optional[float] = None
    compute_cost: Optional[float] = None
    energy_cost: Optional[float] = None
    cost: Optional[float] = None
    currency: str = "USD"
    offset_price_per_tonne: Optional[float] = None
    offset_cost: Optional[float] = None  # kgCO2e / 1000 x report.offset_price_per_tonne
    best_start: Optional[BestStart] = None
    calibration: Optional[Calibration] = None
    cpu: Optional[CpuProbe] = None  # this machine's probe, for a CPU job that runs here
    communication: Optional[Communication] = None
    assumptions: list[str] = []
    missing: list[str] = []  # why a figure is None


class Plan(_Frozen):
    job: JobSpec
    device: Literal["cuda", "cpu"]
    backend: Literal["nccl", "gloo"]
    procs_per_node: int
    world_size: int
    micro_batch_size: int
    grad_accum_steps: int
    global_batch_size: int
    ds_config: Optional[dict[str, Any]] = None
    fsdp: Optional[FsdpSettings] = None
    derivations: list[str] = []
    notes: list[str] = []
    model: Optional[ModelInfo] = None
    memory: Optional[MemoryPlan] = None
    forecast: Optional[Forecast] = None
    train_rows: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    total_steps: Optional[int] = None
    threads_per_rank: Optional[int] = None
    host_memory: Literal["lean", "fast"] = "fast"  # parallel.host_memory resolved (auto: from the memory plan)

    # Facts of the job, shown in plan.json for readers (jq, scripts) but never stored twice:
    # they are computed from ``job`` and dropped again when a plan.json is read.
    @computed_field
    @property
    def nodes(self) -> int:
        return self.job.cluster.nodes

    @computed_field
    @property
    def strategy(self) -> str:
        return self.job.parallel.strategy

    @computed_field
    @property
    def zero_stage(self) -> Optional[int]:
        return self.job.parallel.zero_stage if self.job.parallel.strategy == "zero" else None

    @computed_field
    @property
    def dtype(self) -> str:
        return self.job.model.dtype

    @computed_field
    @property
    def seq_len(self) -> int:
        return self.job.data.max_seq_len

    @computed_field
    @property
    def tokens_per_step(self) -> int:
        """At most; exactly this with packing."""
        return self.global_batch_size * self.job.data.max_seq_len

    @computed_field
    @property
    def params(self) -> Optional[dict[str, int]]:
        """The base model's parameters, the trainable ones, and the LoRA adapters among them."""
        if self.model is None:
            return None
        m = self.model
        lora = self.job.train.method == "lora"
        trainable = m.n_trainable_params if m.n_trainable_params is not None else (0 if lora else m.n_params)
        return {"total": m.n_params, "trainable": trainable, "adapters": trainable if lora else 0}

    @model_validator(mode="before")
    @classmethod
    def _drop_computed(cls, data: Any) -> Any:
        if isinstance(data, dict):  # and the model-state estimate of launcher <= 0.1 (memory_gib_per_device)
            return {k: v for k, v in data.items() if k not in _COMPUTED and k != "memory_gib_per_device"}
        return data

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


_COMPUTED = frozenset({"nodes", "strategy", "zero_stage", "dtype", "seq_len", "tokens_per_step", "params"})
