"""The Plan: every value of a job resolved, typed and frozen. It is written once to the run
directory (``plan.json``, through :mod:`launcher.rundir`) and read back by the ranks, the
renderers and the report: none of them re-derives a default."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, computed_field, model_validator

from launcher.plan.engines import FsdpSettings
from launcher.spec import JobSpec


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelInfo(_Frozen):
    """What the plan knows of a model without its weights: the shape from ``config.json`` and the
    exact parameter counts of the model built on the meta device (:mod:`launcher.modelinfo`)."""

    n_params: int  # the base model's parameters (LoRA adapters not included)
    n_trainable_params: Optional[int] = None  # for the job's method (LoRA: the adapters alone)
    hidden_size: int
    n_layers: int
    vocab_size: int
    n_heads: Optional[int] = None
    n_kv_heads: Optional[int] = None
    head_dim: Optional[int] = None
    intermediate_size: Optional[int] = None
    tie_word_embeddings: bool = False
    max_position_embeddings: Optional[int] = None
    architecture: str = "unknown"


class MemoryEstimate(_Frozen):
    """Model-state memory per device in GiB (no activations)."""

    params: float
    grads: float
    optimizer: float
    total: float


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
    memory_gib_per_device: Optional[MemoryEstimate] = None
    train_rows: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    total_steps: Optional[int] = None
    threads_per_rank: Optional[int] = None

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

    @model_validator(mode="before")
    @classmethod
    def _drop_computed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in _COMPUTED}
        return data

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


_COMPUTED = frozenset({"nodes", "strategy", "zero_stage", "dtype", "seq_len", "tokens_per_step"})
