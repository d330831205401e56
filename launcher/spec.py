"""The job file: typed, frozen and strict.

A job is one YAML file plus ``key.sub=value`` overrides. ``load_job`` turns both into a
``JobSpec`` or raises ``JobError`` listing *every* problem with its field path at once.
Nothing here touches torch: it is imported by ``launcher plan`` and ``--help`` paths.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from launcher.engine_rules import ZERO_SIZE_MULTIPLE, offload_problems, size_problem
from launcher.errors import JobError, format_validation_error
from launcher.spec_parts import K8sSpec, ReportSpec, SlurmSpec, Strict as _Strict

# the embedded default job (a tiny model and task built locally): what `launcher run` runs bare
DEFAULT_JOB_PATH = Path(__file__).resolve().parent / "demo" / "default_job.yaml"
# ... and with train.task=classification: a tiny classifier on a synthetic topic task
DEFAULT_CLASSIFICATION_JOB_PATH = Path(__file__).resolve().parent / "demo" / "default_classification_job.yaml"

Dtype = Literal["bf16", "fp16", "fp32"]
Offload = Literal["none", "cpu", "nvme"]


class ModelSpec(_Strict):
    path: str = Field("demo:tiny-llama", description="Local model folder, a hub id (org/name: fetched into the Hugging "
                      "Face cache once, before any rank starts), or demo:tiny-llama.")
    revision: Optional[str] = Field(None, min_length=1, description="Branch, tag or commit of a hub model.path "
                                    "(default: main); also the tokenizer's when model.tokenizer is unset.")
    dtype: Dtype = Field("bf16", description="Training precision: bf16, fp16 or fp32.")
    tokenizer: Optional[str] = Field(None, description="Tokenizer folder or hub id (default: model.path).")
    trust_remote_code: bool = Field(False, description="Run Python code shipped with the model (trust_remote_code).")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel: sdpa (PyTorch), eager, or flash_attention_2 (needs flash-attn).")


class ReplaySpec(_Strict):
    path: str = Field(description="General text mixed back into training (a file, a saved data set or "
                      "hf://datasets/org/name[@revision]), one text per row.")
    fraction: float = Field(gt=0.0, lt=1.0, description="Share of every global batch's rows taken from it "
                            "(round(global_batch_size x fraction), at least 1): deterministic, resumable.")
    text_field: str = Field("text", description="Field holding the text.")


class DataSpec(_Strict):
    path: str = Field("demo:arithmetic", description="jsonl/json/parquet/csv file, a saved dataset folder, a hub data "
                      "set hf://datasets/org/name[@revision] (fetched into the Hugging Face cache once), or "
                      "demo:arithmetic (demo:topics: the classification demo).")
    split: str = Field("train", min_length=1, description="Split to train on, of a hub data set or a saved DatasetDict "
                       "(the eval rows are held out of it: eval_fraction).")
    config: Optional[str] = Field(None, min_length=1, description="Configuration (subset) of a hub data set, as its "
                                  "card names it (default: its only or default one).")
    format: Literal["text", "instruction", "chat", "classification"] = Field(
        "instruction", description="text (loss on every token), instruction (prompt/response, loss on the response "
        "only), chat (messages through the tokenizer's chat template, loss on assistant turns) or classification "
        "(text and label, for train.task classification).")
    max_seq_len: int = Field(2048, ge=8, description="Tokens per row (packed) or cap (padded).")
    truncate: bool = Field(True, description="Cut rows longer than max_seq_len to it (the report counts them); "
                           "false: refuse them, naming the first.")
    packing: bool = Field(True, description="Pack documents into full rows: no padding.")
    eval_fraction: float = Field(0.02, ge=0.0, lt=1.0, description="Share held out for eval.")
    text_field: str = Field("text", description="Field holding the text (format text or classification).")
    prompt_field: str = Field("prompt", description="Field holding the prompt (format instruction).")
    response_field: str = Field("response", description="Field holding the response (format instruction).")
    messages_field: str = Field("messages", description="Field holding the {role, content} messages (format chat).")
    label_field: str = Field("label", description="Field holding the class (format classification): a name or an "
                             "integer id.")
    labels: Optional[list[str]] = Field(
        None, min_length=2, description="The class names in id order (format classification): labels given as names "
        "must be among them, integers index them. Default: the sorted set of labels seen.")
    num_samples: Optional[int] = Field(None, ge=1, description="Use only the first N rows.")
    replay: Optional[ReplaySpec] = Field(
        None, description="Counter forgetting: mix general text ({path, fraction}) into every global batch "
        "(causal_lm; the report states the share).")


class LoraSpec(_Strict):
    r: int = Field(16, ge=1, description="Rank of the adapters (their inner dimension).")
    alpha: float = Field(32, gt=0, description="Scale: the adapters' update is multiplied by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapters' input.")
    target_modules: Union[Literal["all-linear"], list[str]] = Field("all-linear", description="Layers that get "
        "adapters: all-linear (every linear layer but the output head), or a list of names such as [q_proj, v_proj].")


class TrainSpec(_Strict):
    task: Literal["causal_lm", "classification"] = Field(
        "causal_lm", description="causal_lm (next-token prediction, AutoModelForCausalLM) or classification (a "
        "label per text, AutoModelForSequenceClassification on the same model folder: a new head, last-token "
        "pooling on decoders, [CLS] on encoders; data.format classification).")
    method: Literal["lora", "full"] = Field("lora", description="lora (adapters, base frozen) or full (every weight).")
    lora: LoraSpec = Field(LoraSpec(), description="The adapters (method lora).")
    epochs: int = Field(1, ge=1, description="Passes over the training rows (max_steps can stop earlier).")
    max_steps: Optional[int] = Field(None, ge=1, description="Stop after this many optimizer steps, even mid-epoch.")
    micro_batch_size: Optional[int] = Field(None, ge=1, description="Rows per rank per forward.")
    grad_accum_steps: Optional[int] = Field(
        None, ge=1, description="Micro batches per optimizer step. Give any two of micro_batch_size, "
        "grad_accum_steps and global_batch_size; the third is derived (global = micro x accum x world size).")
    global_batch_size: Optional[int] = Field(
        None, ge=1, description="Rows per optimizer step: global = micro x accum x world size, checked exactly.")
    lr: float = Field(2.0e-4, gt=0, description="Peak learning rate (AdamW).")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="Final lr as a share of lr.")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Share of the steps spent warming lr up linearly.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="After warmup: cosine or linear decay to min_lr_ratio x lr, or constant.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas [beta1, beta2], each in [0, 1).")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Clip the gradients' global norm to this; 0: no clipping.")
    activation_checkpointing: bool = Field(False, description="Recompute activations in the backward: less memory, "
                                           "about a third more compute.")
    save_every_steps: Optional[int] = Field(500, ge=1, description="Checkpoint every N steps (null: only on a stop "
                                            "request).")
    keep_last_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk; older ones are deleted.")
    max_restarts: int = Field(
        0, ge=0, description="Restarts after a rank dies (torchrun --max-restarts); each resumes from the "
        "newest verified checkpoint.")
    hang_timeout_s: Optional[float] = Field(
        None, gt=0, description="Seconds a step may take before the watchdog dumps every rank's stacks into "
        "logs/ and ends the job (default: 20 x the median step time, at least 300).")
    eval_every_steps: Optional[int] = Field(None, ge=1, description="Eval loss every N steps and before the first "
                                            "(null: at the end only).")
    log_every_steps: int = Field(1, ge=1, description="Progress line at most every N steps; piped output shows about "
                                 "30 a run, a terminal one redrawn line (metrics.jsonl has every step).")
    eval_accuracy_samples: int = Field(
        0, ge=0, description="Eval rows scored by greedy exact match of the response (instruction format).")
    seed: int = Field(0, description="Seed of the train/eval split, the data order and the adapters' init.")

    @field_validator("adam_betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"each beta must be in [0, 1), got {list(v)}")
        return v


class ParallelSpec(_Strict):
    strategy: Literal["zero", "fsdp"] = Field("zero", description="zero (DeepSpeed ZeRO) or fsdp (PyTorch FSDP2).")
    zero_stage: int = Field(3, ge=0, le=3, description="ZeRO stage: 0 (data parallel), 1 (optimizer states sharded), "
                            "2 (and gradients), 3 (and parameters).")
    offload_optimizer: Offload = Field("none", description="ZeRO 1-3: the optimizer states and step on cpu or nvme.")
    offload_params: Offload = Field(
        "none", description="Parameters in cpu memory or on nvme (ZeRO-3); FSDP2: cpu, optimizer states included.")
    nvme_path: Optional[str] = Field(None, description="Folder for NVMe offload (required with nvme).")
    zero_buckets: Union[Literal["deepspeed", "model"], int] = Field(
        "deepspeed",
        description="ZeRO bucket sizes: DeepSpeed's defaults, derived from hidden_size as the "
        "Hugging Face integration does (slower on small models), or a number of elements for the reduce "
        "and allgather buckets (even: DeepSpeed's ZeRO-1/2 assert it).",
    )
    reshard_after_forward: bool = Field(True, description="FSDP2: free gathered params after forward.")
    host_memory: Literal["auto", "lean", "fast"] = Field(
        "auto", description="Host memory of each rank: lean (the allocator's free memory returned after every "
        "step; on CPU also a fixed 1 MiB glibc mmap threshold and ZeRO's buckets and gathered parameters capped "
        "at a twentieth of the model: the lowest peak, fewer tokens/s), fast (glibc's defaults, DeepSpeed's "
        "sizes), or auto: lean when the planned host memory of a node passes half of its RAM, else fast.")

    @field_validator("zero_buckets")
    @classmethod
    def _bucket_size(cls, v: Union[str, int]) -> Union[str, int]:
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"a bucket size must be >= 1, got {v}")
            problem = size_problem(v, ZERO_SIZE_MULTIPLE["allgather_bucket_size"])
            if problem:
                raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _offload_rules(self) -> "ParallelSpec":
        errs = offload_problems(self.strategy, self.zero_stage, self.offload_optimizer, self.offload_params,
                                self.nvme_path)
        if errs:
            raise ValueError("; ".join(errs))
        return self


class ClusterSpec(_Strict):
    nodes: int = Field(1, ge=1, description="Nodes; one torchrun per node starts the ranks.")
    gpus_per_node: int = Field(8, ge=1, description="Processes per node on GPUs.")
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: cuda if visible, else cpu.")
    cpu_procs_per_node: int = Field(2, ge=1, description="Processes per node when running on CPU.")
    start_method: Literal["auto", "fork", "spawn"] = Field(
        "auto", description="How each node's ranks start. spawn: torchrun starts each rank as a new "
        "`python -m launcher train` that imports torch, transformers and the engine itself. fork: "
        "launcher.forkrun (torchrun's arguments, agent and restarts) imports them once per node and forks "
        "the ranks from it; CPU only, since a CUDA context does not survive a fork. auto: fork on CPU, "
        "spawn on CUDA.")
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="torch.distributed backend: auto (nccl on GPUs, gloo on CPU), nccl or gloo.")
    accelerator: Optional[str] = Field(None, description="GPU model for MFU and the forecast, e.g. H100-SXM (default: detected). "
                                       "With device auto, launcher plan plans for GPUs when it is set.")
    hosts: list[str] = Field(default_factory=list, description="Hosts for ssh/pdsh launches (no Slurm).")
    master_port: int = Field(
        29500, ge=1024, le=65535, description="Rendezvous port on the first host of a --hosts launch (one node "
        "picks a free port; Slurm derives one from the job id).")
    preflight_timeout_s: float = Field(
        60, gt=0, description="Seconds every rank has, once torchrun starts it, to check in on the rendezvous "
        "store, then to join the process group, and for each preflight check; past it the job stops in one line "
        "naming the late or unreachable ranks and their nodes, before any model loads.")
    interconnect_gbps: Optional[float] = Field(
        None, gt=0, description="Network bandwidth per node between nodes, Gbit/s (e.g. 3200 for 8x400G "
        "InfiniBand): the plan's lower bound on communication time per step.")
    slurm: SlurmSpec = Field(SlurmSpec(), description="Slurm settings, used by launcher slurm.")
    k8s: K8sSpec = Field(K8sSpec(), description="Kubernetes settings, used by launcher k8s (a TrainJob or a JobSet).")


class EvalSpec(_Strict):
    general_data: Optional[str] = Field(
        None, description="General text (a file, a saved data set or hf://datasets/org/name[@revision], text "
        "format) whose perplexity is measured before and after training: what the fine-tune cost the model "
        "elsewhere (causal_lm; LoRA's before is the same model with its adapters off).")
    general_max_tokens: int = Field(16384, ge=1, description="Tokens of general_data evaluated (its first rows): "
                                    "a bound on the two passes' cost.")
    general_text_field: str = Field("text", description="Field holding the text of general_data.")


class JobSpec(_Strict):
    name: str = Field(
        "job", min_length=1, description="Run directories are <output_dir>/<name>-<time>; the Slurm job name.")
    output_dir: str = Field("runs", description="Run directories go under this folder.")
    model: ModelSpec = Field(ModelSpec(), description="The model to fine-tune.")
    data: DataSpec = Field(DataSpec(), description="The training data and how rows become tokens.")
    train: TrainSpec = Field(
        TrainSpec(), description="Method, batch, optimizer, schedule, checkpoints and evaluation.")
    eval: EvalSpec = Field(EvalSpec(), description="Forgetting: the perplexity of general text before and after.")
    parallel: ParallelSpec = Field(
        ParallelSpec(), description="How the ranks share the model: DeepSpeed ZeRO or PyTorch FSDP2, offload.")
    cluster: ClusterSpec = Field(ClusterSpec(), description="Nodes, processes per node, device, Slurm.")
    report: ReportSpec = Field(ReportSpec(), description="Carbon intensity, prices and PUE for the report; "
                               "experiment trackers.")

    @model_validator(mode="before")
    @classmethod
    def _classification_defaults(cls, data: Any) -> Any:
        """A classification job's data is unpacked (one text, one label, one row) and in the
        classification format unless the job says otherwise (then _task_rules says what is wrong)."""
        if not isinstance(data, dict):
            return data
        train, d = data.get("train"), data.get("data")
        if isinstance(train, dict) and train.get("task") == "classification" and isinstance(d, (dict, type(None))):
            data = {**data, "data": {"packing": False, "format": "classification", **(d or {})}}
        return data

    @model_validator(mode="after")
    def _task_rules(self) -> "JobSpec":
        cls_task, cls_data = self.train.task == "classification", self.data.format == "classification"
        if cls_task and not cls_data:
            raise ValueError(f"train.task classification needs data.format: classification (text and label), got "
                             f"{self.data.format!r}")
        if cls_data and not cls_task:
            raise ValueError("data.format classification needs train.task: classification")
        if cls_task and self.data.packing:
            raise ValueError("data.packing: a classification row is one text with one label; set data.packing=false")
        if cls_task and self.eval.general_data:
            raise ValueError("eval.general_data measures a language model's perplexity; a classifier has no LM "
                             "head: leave it unset for train.task classification")
        if cls_task and self.data.replay:
            raise ValueError("data.replay mixes general text into language-model training; leave it unset for "
                             "train.task classification")
        if cls_task and self.train.eval_accuracy_samples:
            raise ValueError("train.eval_accuracy_samples scores generated responses (instruction data); a "
                             "classification eval reports accuracy and f1_macro on the whole eval split: set it to 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------- loading


_EXP_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise JobError(f"override {text!r}: expected key.sub=value (for example train.lr=1e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise JobError(f"override {text!r}: empty key part; expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _EXP_NUMBER.match(raw.strip()):  # YAML 1.1 reads 3e-4 as a string
        value = float(raw)
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a new dict with ``key.sub=value`` overrides applied (the input is untouched)."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        cur = out
        for p in parts[:-1]:
            nxt = cur.get(p)
            if nxt is None:
                nxt = cur[p] = {}
            if not isinstance(nxt, dict):
                raise JobError(f"override {text!r}: {p} is not a section")
            cur = nxt
        cur[parts[-1]] = value
    return out


def read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if p.is_dir():
        raise JobError(f"{p}: a folder, not a job file (launcher run RUN_DIR resumes a run directory: one "
                       "with a plan.json)")
    if not p.is_file():
        raise JobError(f"{p}: job file not found; check the path, or write one with launcher init "
                       "(overrides are key.sub=value)")
    try:
        data = yaml.safe_load(p.read_text())
    except UnicodeDecodeError as e:
        raise JobError(f"{p}: not UTF-8 text (byte {e.start}); a job file is YAML text (launcher init "
                       "writes one)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise JobError(f"{where}: YAML syntax error: {problem}") from None
    if data is None:
        raise JobError(f"{p}: the file is empty; write a job (launcher init) or leave the file out to run "
                       "the embedded default")
    if not isinstance(data, dict):
        raise JobError(f"{p}: a job file must be a mapping of sections, got {type(data).__name__}; write "
                       "sections such as model:, data:, train: at the top level (launcher init writes one)")
    return data


def build_job(data: dict, source: str = "job") -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise JobError(*format_validation_error(e, JobSpec, source)) from None


def load_job(path: Optional[str | os.PathLike], overrides: tuple[str, ...] | list[str] = ()) -> JobSpec:
    """The job at ``path`` (the embedded default when None) with overrides applied."""
    if path is None:
        tasks = [v for k, v in (parse_override(o) for o in overrides) if k == ["train", "task"]]
        if tasks and tasks[-1] == "classification":
            data, source = read_yaml(DEFAULT_CLASSIFICATION_JOB_PATH), "embedded classification default job"
        else:
            data, source = read_yaml(DEFAULT_JOB_PATH), "embedded default job"
    else:
        data, source = read_yaml(path), str(path)
    data = apply_overrides(data, list(overrides))
    return build_job(data, source)
