"""``report.json``, typed: the report of one run (launcher.report.build writes it; the renderers,
``launcher export``, the experiment trackers and ``launcher report`` read it).

Every section is a model; a figure the run could not give is ``None`` with the section's
``reason``. ``Report.read`` validates a file: another schema version, or a damaged file, is one
line naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from launcher.errors import JobError
from launcher.rundir.artifacts import DamagedFile, read_model
from launcher.rundir.energy_file import EnergyKwh, Measured

REPORT_SCHEMA_VERSION = 1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Job(_Section):
    """The job as planned, with what actually ran (the last attempt) taking precedence."""

    name: str
    model: str
    strategy: str
    zero_stage: Optional[int] = None
    method: str
    dtype: str
    nodes: int
    procs_per_node: int
    world_size: int
    device: str
    accelerator: Optional[str] = None
    accelerator_key: Optional[str] = None
    seq_len: int
    packing: bool
    micro_batch_size: int
    grad_accum_steps: int
    global_batch_size: int
    n_params: Optional[int] = None
    n_trainable_params: Optional[int] = None
    planned_steps: Optional[int] = None
    task: str = "causal_lm"
    labels: Optional[list[str]] = None  # classification: the class names in id order
    replay_path: Optional[str] = None  # data.replay.path
    replay_rows_per_step: int = 0  # general rows in every global batch (of global_batch_size)


class StatusDetail(_Section):
    complete: bool
    completed_marker: bool
    end_record: bool
    end_status: Optional[str] = None
    steps_done: int = 0
    planned_steps: Optional[int] = None
    attempts: int = 0


class Throughput(_Section):
    steps: int = 0
    last_step: int = 0
    redone_steps: int = 0
    planned_steps: Optional[int] = None
    tokens: int = 0
    samples: int = 0
    padding_tokens: int = 0
    padding_share: Optional[float] = None
    eval_tokens: int = 0
    step_time_sum_s: Optional[float] = None
    step_time_median_s: Optional[float] = None
    step_time_p90_s: Optional[float] = None
    # the mean of the steps after each attempt's first, and what an attempt's first step took over
    # it, on average (launcher.report.compute.steady_and_warmup)
    steady_step_time_s: Optional[float] = None
    warmup_s: Optional[float] = None
    tokens_per_s: Optional[float] = None
    tokens_per_s_per_device: Optional[float] = None
    samples_per_s: Optional[float] = None
    samples_per_s_per_device: Optional[float] = None
    tokens_per_s_wall: Optional[float] = None
    tokens_per_s_wall_per_device: Optional[float] = None
    time_to_first_step_s: Optional[float] = None
    wall_time_s: Optional[float] = None
    busy_time_s: Optional[float] = None
    attempts: int = 0
    device_hours: Optional[float] = None
    device_hours_label: str = "device-hours"
    node_hours: Optional[float] = None
    first_time: Optional[float] = None
    last_time: Optional[float] = None


class Mfu(_Section):
    value: Optional[float] = None
    mfu_wall: Optional[float] = None
    reason: Optional[str] = None
    flops_per_token: Optional[float] = None
    peak_tflops: Optional[float] = None
    dtype: str = "bf16"
    accelerator: Optional[str] = None
    accelerator_source: Optional[str] = None
    achieved_tflops_per_device: Optional[float] = None
    note: Optional[str] = None


class NodeEnergyRow(_Section):
    node: Optional[str] = None
    energy_kwh: EnergyKwh = Field(default_factory=EnergyKwh)
    emissions_kg: Optional[float] = None
    duration_s: Optional[float] = None
    measured: Measured = Field(default_factory=Measured)
    final: bool = False
    pue: Optional[float] = None
    country_iso_code: Optional[str] = None
    cpu_model: Optional[str] = None
    gpu_model: Optional[str] = None


class HourlyCo2(_Section):
    """The job's CO2 from the intensity of the hours it ran (``report.intensity_forecast``): each
    tracker session's energy spread evenly over its start and end, times the time-weighted mean
    intensity of those hours; beside CodeCarbon's flat figure for the country."""

    available: bool = False
    reason: Optional[str] = None
    source: Optional[str] = None
    kg_co2e: Optional[float] = None
    mean_g_co2e_per_kwh: Optional[float] = None
    flat_kg_co2e: Optional[float] = None  # CodeCarbon's, the country's annual intensity
    start: Optional[str] = None  # UTC, the first session's
    end: Optional[str] = None


class Energy(_Section):
    """The job's energy: the sum over the node files (PUE included), or why there is none."""

    available: bool = False
    reason: Optional[str] = None
    nodes: int = 0
    node_names: list[Optional[str]] = Field(default_factory=list)
    energy_kwh: EnergyKwh = Field(default_factory=EnergyKwh)
    it_energy_kwh: Optional[float] = None
    emissions_kg: Optional[float] = None
    duration_s: Optional[float] = None
    node_seconds: Optional[float] = None
    pue: Optional[float] = None
    pue_values: list[float] = Field(default_factory=list)
    pue_included: bool = True
    measured: Measured = Field(default_factory=Measured)
    final: bool = False
    country_iso_code: Optional[str] = None
    region: Optional[str] = None
    nodes_expected: Optional[int] = None
    partial: bool = False
    total_label: Optional[str] = None
    energy_per_token_j: Optional[float] = None
    kwh_per_million_tokens: Optional[float] = None
    gco2e_per_million_tokens: Optional[float] = None
    hourly: Optional[HourlyCo2] = None
    per_node: list[NodeEnergyRow] = Field(default_factory=list)


class ComputeCost(_Section):
    basis: str
    hours: float
    price_per_hour: float
    cost: float


class EnergyCost(_Section):
    kwh: float
    price_per_kwh: float
    cost: float
    label: Optional[str] = None


class OffsetCost(_Section):
    """The price of offsetting the job's CO2 (``report.offset_price_per_tonne``): not part of the total."""

    price_per_tonne: float
    tonnes_co2e: float
    cost: float


class Cost(_Section):
    available: bool = False
    currency: str = "USD"
    compute: Optional[ComputeCost] = None
    energy: Optional[EnergyCost] = None
    offset: Optional[OffsetCost] = None
    total: Optional[float] = None
    per_million_tokens: Optional[float] = None
    reason: Optional[str] = None


class ForecastRow(_Section):
    forecast: Optional[float] = None
    actual: Optional[float] = None
    ratio: Optional[float] = None
    unit: str = ""
    note: str = ""


class ForecastCheck(_Section):
    """What the plan forecast against what the run measured (rows: time_s, kwh, kg_co2e, cost,
    peak_memory_bytes)."""

    available: bool = False
    steps_done: int = 0
    steps_forecast: Optional[int] = None
    calibrated_from: Optional[str] = None
    calibration_source: Optional[str] = None  # history | --calibrate
    calibration_distance: Optional[float] = None
    rows: dict[str, ForecastRow] = Field(default_factory=dict)
    missing: list[str] = Field(default_factory=list)


class EvalPoint(_Section):
    step: int
    eval_loss: Optional[float] = None
    accuracy: Optional[float] = None
    f1_macro: Optional[float] = None  # classification
    eval_tokens: int = 0


class Loss(_Section):
    first_train_loss: Optional[float] = None
    last_train_loss: Optional[float] = None
    min_train_loss: Optional[float] = None
    min_train_loss_step: Optional[int] = None
    eval: list[EvalPoint] = Field(default_factory=list)
    first_eval_loss: Optional[float] = None
    last_eval_loss: Optional[float] = None
    min_eval_loss: Optional[float] = None
    min_eval_loss_step: Optional[int] = None
    last_accuracy: Optional[float] = None
    first_accuracy: Optional[float] = None
    first_f1_macro: Optional[float] = None  # classification: before training (step 0)
    last_f1_macro: Optional[float] = None


class Forgetting(_Section):
    """eval.general_data's perplexity before and after training (change: after / before - 1)."""

    data: str
    tokens: int
    before_ppl: Optional[float] = None
    after_ppl: Optional[float] = None
    change: Optional[float] = None
    before_adapters_off: bool = False  # LoRA: "before" is the trained model with its adapters off


class Checkpoints(_Section):
    count: int = 0
    last_step: Optional[int] = None


class Restarts(_Section):
    attempts: int = 0
    automatic_restarts: int = 0
    resumes: int = 0
    resumed_from_steps: list[int] = Field(default_factory=list)
    redone_steps: int = 0
    steps_lost: int = 0


class RankTime(_Section):
    rank: int
    host: Optional[str] = None
    compute_median_s: float
    wait_median_s: float
    compute_s: float
    wait_s: float


class Stragglers(_Section):
    available: bool = False
    reason: Optional[str] = None
    ranks: int = 0
    compute_median_s: dict[str, float] = Field(default_factory=dict)
    per_rank: list[RankTime] = Field(default_factory=list)
    slowest_rank: Optional[int] = None
    slowest_host: Optional[str] = None
    slowest_node: Optional[str] = None
    fastest_rank: Optional[int] = None
    spread: Optional[float] = None
    step_median_s: Optional[float] = None
    wait_share: Optional[float] = None
    max_wait_median_s: Optional[float] = None


class Allocation(_Section):
    """What Slurm allocated (sacct, every attempt), next to the trainer's device-hours."""

    available: bool = False
    reason: Optional[str] = None
    source: Optional[str] = None
    job_id: Optional[str] = None
    attempts: int = 0
    states: list[str] = Field(default_factory=list)
    elapsed_s: Optional[float] = None
    device_hours: Optional[float] = None
    devices_from: Optional[str] = None
    trainer_device_hours: Optional[float] = None
    trainer_share: Optional[float] = None


class Report(BaseModel):
    """The content of report.json."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = REPORT_SCHEMA_VERSION
    run_dir: str
    generated_at: str
    job: Job
    status: str
    complete: bool
    status_detail: StatusDetail
    throughput: Throughput
    mfu: Mfu
    energy: Energy
    cost: Cost
    offset_cost: Optional[float] = None  # cost.offset.cost: the price of offsetting the job's CO2
    forecast: ForecastCheck
    loss: Loss
    forgetting: Optional[Forgetting] = None  # eval.general_data
    checkpoints: Checkpoints
    restarts: Restarts
    stragglers: Stragglers
    allocation: Allocation
    notes: list[str] = Field(default_factory=list)

    def to_json(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def read(cls, path: Union[str, os.PathLike]) -> "Report":
        """report.json at ``path``, validated; one line naming the file when it is not one this
        launcher reads (damaged, or of another schema version)."""
        p = Path(path)
        try:
            return read_model(cls, p)
        except DamagedFile as e:
            raise JobError(f"{e}; rebuild it with launcher report {p.parent}") from None
