"""The run directory's smaller files, typed. Writers build the model; readers validate it, and a
damaged file, or one of another schema version, is one line naming the file
(:func:`read_model`). ``report.json`` is :mod:`launcher.rundir.report_file`, the energy files
:mod:`launcher.rundir.energy_file`, the metrics :mod:`launcher.rundir.metrics`.

    slurm_accounting.json  SlurmAccounting  sacct's attempts of the job (`launcher report` writes it)
    checkpoints/step-N/manifest.json       Manifest      every file's size and sha256, written last
    checkpoints/step-N/trainer_state.json  TrainerState  the step and the running totals at it
    trackers.json          TrackerIds       the experiment trackers' runs, kept across attempts
    logs/preflight.json    Preflight        the ranks' versions and connectivity, or the failure
    LOCK                   Lock             the `launcher run` that uses the folder
    logs/hang-rankN.json   HangRecord       the watchdog's record of a hang
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from launcher.errors import JobError
from launcher.fs import write_json


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def write(self, path: Union[str, os.PathLike]) -> Path:
        return write_json(path, self.model_dump(mode="json"))


M = TypeVar("M", bound=BaseModel)


class DamagedFile(JobError):
    """A run-directory file that is not what its model says (one line, naming the file)."""


def read_model(cls: type[M], path: Union[str, os.PathLike], *, missing_ok: bool = False) -> Optional[M]:
    """``path`` validated as ``cls``. A missing file is None with ``missing_ok``; a damaged file,
    or another schema version, raises :class:`DamagedFile` (one line naming the file)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        if missing_ok:
            return None
        raise DamagedFile(f"{p}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedFile(f"{p}: not valid JSON ({e})") from None
    want = cls.model_fields.get("schema_version")
    if want is not None and isinstance(data, dict) and data.get("schema_version", want.default) != want.default:
        raise DamagedFile(f"{p}: schema version {data.get('schema_version')!r}, this launcher reads {want.default}")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(top)"
        raise DamagedFile(f"{p}: {where}: {first['msg']}") from None


class SlurmAttempt(_File):
    state: str
    start: str = ""
    end: str = ""
    elapsed_s: int = 0
    gpus: int = 0
    nodes: int = 0
    alloc_tres: str = ""


class SlurmAccounting(_File):
    job_id: str
    queried_at: float
    attempts: list[SlurmAttempt] = Field(default_factory=list)


class FileHash(_File):
    bytes: int
    sha256: str


class Manifest(_File):
    step: int
    world_size: int
    time: float
    files: dict[str, FileHash] = Field(default_factory=dict)


class RunningTotals(_File):
    """What the loop counts across the run, saved at each checkpoint so that a resume goes on
    from the checkpoint's totals instead of re-reading metrics.jsonl."""

    cum_tokens: int = 0
    cum_samples: int = 0


class TrainerState(_File):
    """A checkpoint's trainer_state.json (schema 1 had the step and time alone)."""

    schema_version: int = 2
    step: int
    time: float
    totals: Optional[RunningTotals] = None  # None in checkpoints of launchers before schema 2


class TrackerRun(_File):
    run_id: Optional[str] = None
    tracking_uri: Optional[str] = None
    log_dir: Optional[str] = None


class TrackerIds(_File):
    """trackers.json: each tracker's run, continued by later attempts (one tracker run a job)."""

    model_config = ConfigDict(extra="forbid")

    tensorboard: Optional[TrackerRun] = None
    mlflow: Optional[TrackerRun] = None
    wandb: Optional[TrackerRun] = None

    def of(self, name: str) -> Optional[TrackerRun]:
        return getattr(self, name, None)


class RankFacts(_File):
    """What one rank reports about itself in the preflight."""

    model_config = ConfigDict(extra="allow")  # one entry per checked package: torch, deepspeed, ...

    rank: int
    local_rank: int = 0
    node_rank: int = 0
    hostname: str
    slurm_node: Optional[str] = None
    pid: int
    python: str


class Preflight(_File):
    """logs/preflight.json: rank 0's report, or the line of the rank that failed first."""

    ok: bool
    error: Optional[str] = None
    time: float
    rank: Optional[int] = None
    hostname: Optional[str] = None
    backend: Optional[str] = None
    world_size: Optional[int] = None
    nodes: Optional[int] = None
    hosts: list[str] = Field(default_factory=list)
    allreduce_s: Optional[float] = None
    elapsed_s: Optional[float] = None
    ranks: list[RankFacts] = Field(default_factory=list)


class Lock(_File):
    host: str
    pid: int
    time: float


class HangRecord(_File):
    rank: int
    host: str
    step: int
    elapsed_s: float
    timeout_s: float
    behind: list[int] = Field(default_factory=list)
    not_responding: list[int] = Field(default_factory=list)
    heartbeats: dict[str, Any] = Field(default_factory=dict)


class DataStats(_File):
    """cache/<key>/stats.json: what tokenizing (and packing) made of the data set."""

    documents: int  # examples kept after tokenizing
    train_documents: int
    eval_documents: int
    train_rows: int
    eval_rows: int
    train_tokens: int  # real tokens in the train rows
    train_label_tokens: int  # tokens with a loss in the train rows
    eval_tokens: int
    truncated: int  # examples cut to max_seq_len
    dropped: int  # examples with nothing to train on after the cut
    packed: bool
    max_seq_len: int
    labels: Optional[list[str]] = None  # the class names in id order (format classification)
