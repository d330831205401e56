"""metrics.jsonl: one typed record per line, keyed on ``kind``.

Global rank 0 appends them (:class:`MetricsWriter`); the report, ``launcher status`` and the
trainer's resume read them back (:func:`read_metrics`) as these models, never as loose dicts.
A torn last line (a killed job) and lines this version cannot read are skipped and counted.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Callable, Literal, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from launcher.fs import write_atomic
from launcher.rundir.names import METRICS


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    time: float = Field(default_factory=time.time, description="unix seconds when written")


class StartRecord(_Record):
    """One per attempt, written once the model is built and wrapped."""

    kind: Literal["start"] = "start"
    world_size: int
    nodes: int
    device: Literal["cuda", "cpu"]
    accelerator: Optional[str] = None
    strategy: Literal["zero", "fsdp"]
    zero_stage: Optional[int] = None
    method: Literal["lora", "full"]
    dtype: Literal["bf16", "fp16", "fp32"]
    seq_len: int
    n_params: int
    n_trainable_params: int
    flops_per_token: Optional[float] = None
    planned_steps: int
    train_rows: int
    train_samples: Optional[int] = None  # documents
    train_tokens: Optional[int] = None
    resumed_from_step: Optional[int] = None
    setup_s: float = Field(0.0, description="process start to this record: counted in wall time and device-hours")
    restart: int = Field(0, description="torchrun's restart counts (TORCHELASTIC_RESTART_COUNT) summed over the "
                         "nodes' agents: it grows at every automatic restart, and is 0 under a new torchrun")
    steps_lost: int = Field(0, description="steps the previous attempt had done past the checkpoint resumed from")
    packed: bool = False
    labels: Optional[list[str]] = None  # classification: the class names in id order
    replay_rows_per_step: int = 0  # data.replay: general rows in every global batch
    hostname: Optional[str] = None


class TrainRecord(_Record):
    """One per optimizer step (``step`` counts from 1)."""

    kind: Literal["train"] = "train"
    step: int
    epoch: float
    loss: float
    lr: float
    grad_norm: Optional[float] = None
    samples: int  # documents in this step, all ranks
    tokens: int  # non-padding tokens in this step, all ranks
    padding_tokens: int
    label_tokens: int  # tokens the loss was taken on, all ranks
    step_time_s: float
    cum_samples: int
    cum_tokens: int
    rank_compute_s: Optional[list[float]] = None  # each rank's time outside collectives; the rest of step_time_s is waiting


class EvalRecord(_Record):
    kind: Literal["eval"] = "eval"
    step: int
    eval_loss: float
    eval_tokens: int
    accuracy: Optional[float] = None
    f1_macro: Optional[float] = None  # classification


class GeneralEvalRecord(_Record):
    """Forgetting: the perplexity of eval.general_data, before training (phase before: the model at
    step 0; LoRA: the trained model with its adapters off) and after (the model as trained)."""

    kind: Literal["general_eval"] = "general_eval"
    phase: Literal["before", "after"]
    step: int
    loss: float  # mean token loss over the general rows
    perplexity: float
    tokens: int  # label tokens evaluated
    adapters_off: bool = False


class CheckpointRecord(_Record):
    kind: Literal["checkpoint"] = "checkpoint"
    step: int
    path: str


class EndRecord(_Record):
    kind: Literal["end"] = "end"
    steps: int
    status: Literal["completed", "preempted", "failed"]
    final_path: Optional[str] = None


class RankMemory(BaseModel):
    """What one rank measured of its memory. Host figures are bytes of this process; the
    baseline is the anonymous memory after the libraries were imported, before the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int
    host: str
    rss_anon_baseline_bytes: int
    rss_anon_peak_bytes: int  # high-water of RssAnon, sampled (Linux keeps no anonymous high-water)
    vm_hwm_bytes: int  # the kernel's RSS high-water (VmHWM): anonymous and file-backed pages
    cuda_max_allocated_bytes: Optional[int] = None
    cuda_max_reserved_bytes: Optional[int] = None
    params_bytes: Optional[int] = None  # model states counted from this rank's tensors
    grads_bytes: Optional[int] = None
    optimizer_bytes: Optional[int] = None


class MemoryRecord(_Record):
    """Every rank's memory, gathered by rank 0: after setup (model built and wrapped) and at the
    end (peaks over the whole run, model states with optimizer state allocated)."""

    kind: Literal["memory"] = "memory"
    phase: Literal["setup", "end"]
    step: int
    ranks: list[RankMemory]


Record = Annotated[Union[StartRecord, TrainRecord, EvalRecord, GeneralEvalRecord, CheckpointRecord, EndRecord,
                         MemoryRecord],
                   Field(discriminator="kind")]
_ADAPTER: TypeAdapter = TypeAdapter(Record)
STEP_KINDS = ("train", "eval", "checkpoint")  # records that belong to a step
R = TypeVar("R", bound=_Record)


class Metrics(list):
    """The records of a metrics.jsonl in file order, and how many lines were skipped."""

    skipped: int = 0

    def of(self, cls: type[R]) -> list[R]:
        return [r for r in self if isinstance(r, cls)]


def parse_metrics(text: str) -> Metrics:
    out = Metrics()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(_ADAPTER.validate_python(json.loads(line)))
        except (json.JSONDecodeError, ValidationError, TypeError):
            out.skipped += 1
    return out


def read_metrics(run_dir: str | os.PathLike) -> Metrics:
    """Every readable record of RUN_DIR/metrics.jsonl (none when the file does not exist)."""
    p = Path(run_dir) / METRICS
    if not p.exists():
        return Metrics()
    return parse_metrics(p.read_text(errors="replace"))


def dump(record: _Record) -> str:
    return json.dumps(record.model_dump(mode="json"), sort_keys=True) + "\n"


class MetricsWriter:
    """Appends records to RUN_DIR/metrics.jsonl (one line each, flushed). Only the rank given
    ``enabled=True`` (global rank 0) writes; on the others every call is a no-op. Each of
    ``listeners`` (the experiment trackers) is handed every record once it is written."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool):
        self.path = Path(run_dir) / METRICS
        self.enabled = enabled
        self.listeners: list[Callable[[_Record], None]] = []

    def write(self, record: _Record) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(dump(record))
            f.flush()
        for listener in self.listeners:
            listener(record)

    def truncate_after(self, step: int) -> None:
        """On resume: drop the records of steps past ``step`` (the checkpoint's), so that no step
        is counted twice."""
        if not self.enabled or not self.path.exists():
            return
        keep = [r for r in read_metrics(self.path.parent)
                if not (r.kind in STEP_KINDS and r.step > step)]
        write_atomic(self.path, "".join(dump(r) for r in keep))


