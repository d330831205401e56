"""Sections of the job spec that no rule across sections touches: the report's (carbon intensity,
prices, PUE, trackers) and Slurm's, and the strict base every section shares. Part of
:mod:`launcher.spec`, which re-exports them."""
from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

Tracker = Literal["tensorboard", "mlflow", "wandb"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ReportSpec(Strict):
    country_iso_code: str = Field(
        "USA", min_length=3, max_length=3, description="Where the job runs, ISO 3166 alpha-3 (USA, FRA, DEU...): "
        "the grid's carbon intensity, from CodeCarbon's data.")
    region: Optional[str] = Field(
        None, description="Region within the country, for CodeCarbon's measured figures (the forecast uses the "
        "country's).")
    gpu_hour_price: Optional[float] = Field(
        None, ge=0, description="Price of one GPU-hour (device-hour on CPU); compute cost = device-hours x price.")
    node_hour_price: Optional[float] = Field(
        None, ge=0, description="Price of one node-hour, for nodes billed whole (used when gpu_hour_price is unset).")
    currency: str = Field("USD", description="Currency the prices are in, as printed.")
    energy_price_per_kwh: Optional[float] = Field(None, ge=0, description="Price of one kWh, added to compute cost.")
    pue: float = Field(
        1.0, ge=1.0, description="Data center's power usage effectiveness: energy figures are multiplied by it once.")
    offset_price_per_tonne: Optional[float] = Field(
        None, ge=0, description="Price of offsetting one tonne of CO2e (in report.currency): the plan's "
        "forecast.offset_cost, the report's offset_cost and a line in the model card.")
    intensity_forecast: Optional[str] = Field(
        None, description="CSV of hourly grid carbon intensity, columns timestamp,g_co2e_per_kwh (UTC; exported "
        "from Electricity Maps, WattTime or the UK Carbon Intensity API): launcher plan --start-window picks "
        "the start of least CO2, launcher slurm --carbon-aware writes it as #SBATCH --begin, and the report "
        "adds the CO2 of the hours the job ran.")
    trackers: list[Tracker] = Field(
        default_factory=list, description="Experiment trackers global rank 0 logs to: tensorboard (event files in "
        "the run directory), mlflow (MLFLOW_TRACKING_URI, else a SQLite store in the run directory), wandb (offline "
        "without WANDB_API_KEY). Per-step train metrics, eval, and the report's figures as the run's summary; one "
        "tracker run across resumes and restarts (its id is kept in the run directory).")

    @field_validator("trackers", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("trackers")
    @classmethod
    def _once_each(cls, v: list[str]) -> list[str]:
        twice = sorted({t for t in v if v.count(t) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} listed more than once")
        return v


_SBATCH_TIME = re.compile(r"\d+(:\d+){0,2}|\d+-\d+(:\d+){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SlurmSpec(Strict):
    job_name: Optional[str] = Field(None, description="Default: the job's name.")
    partition: Optional[str] = Field(None, description="sbatch --partition.")
    account: Optional[str] = Field(None, description="sbatch --account.")
    qos: Optional[str] = Field(None, description="sbatch --qos.")
    time: str = Field("01:00:00", description="Wall time limit, as sbatch --time takes it.")
    cpus_per_task: Optional[int] = Field(
        None, ge=1, description="CPUs per node for the one task per node (sbatch and srun --cpus-per-task); "
        "on CPU it sets the threads per rank.")
    mem: Optional[str] = Field(None, description="Memory per node, e.g. 200G (sbatch --mem).")
    constraint: Optional[str] = Field(None, description="sbatch --constraint (node features).")
    exclusive: bool = Field(False, description="sbatch --exclusive: no other job shares the nodes.")
    requeue: bool = Field(
        True, description="After the checkpoint on USR2, requeue the job to resume (off: stop; resubmit to resume).")
    signal_grace_s: int = Field(120, ge=10, description="USR2 this many seconds before the time limit.")
    gres: Optional[str] = Field(None, description="Default gpu:<gpus_per_node> on GPU clusters.")
    extra_sbatch: list[str] = Field(default_factory=list, description="More #SBATCH lines, e.g. --mail-type=END.")
    setup: list[str] = Field(default_factory=list, description="Shell lines run before launch (module load ...).")
    env: dict[str, str] = Field(default_factory=dict, description="Exported before launch.")

    @field_validator("time", mode="before")
    @classmethod
    def _time_as_text(cls, v):
        if isinstance(v, int):  # YAML 1.1 reads 12:00:00 as a base-60 integer
            raise ValueError(f"got the number {v}: quote the time limit, e.g. time: \"12:00:00\"")
        return v

    @field_validator("time")
    @classmethod
    def _time_format(cls, v: str) -> str:
        if not _SBATCH_TIME.fullmatch(v.strip()):
            raise ValueError(f"{v!r} is not a time limit sbatch --time takes: write minutes, MM:SS, HH:MM:SS, "
                             "D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED, e.g. \"12:00:00\"")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict) -> dict:
        for k in v:
            if not _ENV_NAME.fullmatch(k):
                raise ValueError(f"{k!r} is not a valid environment variable name: use letters, digits and _, "
                                 "not starting with a digit")
        return v

    @field_validator("mem", mode="before")
    @classmethod
    def _mem_as_text(cls, v):
        return str(v) if isinstance(v, int) else v


class K8sToleration(Strict):
    key: Optional[str] = Field(None, description="Taint key (e.g. nvidia.com/gpu).")
    operator: Literal["Equal", "Exists"] = Field("Equal", description="Equal (key and value) or Exists (key).")
    value: Optional[str] = Field(None, description="Taint value (operator Equal).")
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = Field(None, description="Taint effect.")
    toleration_seconds: Optional[int] = Field(None, ge=0, description="NoExecute: seconds the pod stays bound.")


class K8sSpec(Strict):
    namespace: str = Field("default", description="Namespace of the TrainJob or JobSet.")
    image: Optional[str] = Field(None, description="Container image with launcher installed (the same versions as "
                                 "here: the pods' preflight compares them across nodes). Required by launcher k8s.")
    runtime: str = Field("torch-distributed", description="TrainJob flavour: the ClusterTrainingRuntime it runs on "
                         "(Kubeflow Trainer's torch-distributed), whose JobSet failure policy decides restarts; "
                         "launcher: a TrainingRuntime written beside the TrainJob with launcher's (a stop checkpoint "
                         "restarts without spending a restart), as the jobset flavour has.")
    queue: Optional[str] = Field(None, description="Kueue LocalQueue (the label kueue.x-k8s.io/queue-name).")
    pvc: Optional[str] = Field(None, description="PersistentVolumeClaim every pod mounts (ReadWriteMany): the run "
                               "directory, the Hugging Face cache and launcher's cache live on it.")
    mount_path: str = Field("/workspace", description="Where the claim is mounted, and the pods' working directory "
                            "(relative model and data paths are relative to it).")
    service_account: Optional[str] = Field(None, description="serviceAccountName of the pods.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector of the pods, e.g. "
                                          "{nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}.")
    tolerations: list[K8sToleration] = Field(default_factory=list, description="Tolerations of the pods.")
    priority_class: Optional[str] = Field(None, description="priorityClassName of the pods.")
    env: dict[str, str] = Field(default_factory=dict, description="More environment variables of the container.")
    grace_period_s: Optional[int] = Field(
        None, ge=1, description="terminationGracePeriodSeconds (default: the planner's forecast of the stop "
        "checkpoint, one step and the save, plus a margin).")
    cpu: Optional[str] = Field(None, description="CPU request and limit per pod (default: none; on CPU-only jobs "
                               "the threads per rank follow it).")
    memory: Optional[str] = Field(None, description="Memory request and limit per pod, e.g. 200Gi.")

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantity_as_text(cls, v):
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
