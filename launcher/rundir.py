"""The run directory: the contract between every stage.

Layout of ``runs/<name>-<id>/`` (names are constants below so that no stage spells them twice):

    job.yaml             the resolved job (every default filled in)
    plan.json            the Plan (launcher.plan.Plan.to_dict())
    ds_config.json       the DeepSpeed config (strategy zero only), no "auto" in it
    launch.sh            the torchrun command(s) for this node (local runs, --hosts runs)
    job.sbatch           the Slurm batch script (Slurm runs), slurm_job_id once submitted
    artifacts.sha256     hashes of the files above, written last
    logs/                torchrun and rank logs
    metrics.jsonl        one JSON object per line, see METRICS below
    emissions/<node>.csv CodeCarbon output, one file per node (local rank 0 only)
    emissions/<node>.json  our summary of that node's tracker (energy_kwh, emissions_kg, measured/estimated)
    checkpoints/step-N/  resumable checkpoints, written to a temp folder then renamed
    final/               the Hugging Face model or LoRA adapter
    COMPLETED            written by rank 0 after the final save: the job succeeded
    report.json, report.md, report.html

METRICS (metrics.jsonl), written by global rank 0 only; every line has "kind":

    {"kind": "start", "time": <unix s>, "world_size": int, "nodes": int, "device": "cpu"|"cuda",
     "accelerator": str|null, "strategy": "zero"|"fsdp", "zero_stage": int|null, "method": "lora"|"full",
     "dtype": "bf16"|"fp16"|"fp32", "seq_len": int, "n_params": int, "n_trainable_params": int,
     "flops_per_token": float, "planned_steps": int, "train_rows": int, "train_samples": int,
     "train_tokens": int, "resumed_from_step": int|null}
    {"kind": "train", "step": int (optimizer steps done, from 1), "epoch": float, "loss": float,
     "lr": float, "grad_norm": float|null, "samples": int, "tokens": int (non-padding, this step,
     all ranks), "padding_tokens": int, "step_time_s": float, "time": <unix s>,
     "cum_samples": int, "cum_tokens": int}
    {"kind": "eval", "step": int, "eval_loss": float, "eval_tokens": int, "time": <unix s>,
     "accuracy": float|null}
    {"kind": "checkpoint", "step": int, "path": str, "time": <unix s>}
    {"kind": "end", "time": <unix s>, "steps": int, "status": "completed"|"preempted"|"failed",
     "final_path": str|null}
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

JOB_YAML = "job.yaml"
PLAN_JSON = "plan.json"
DS_CONFIG = "ds_config.json"
LAUNCH_SH = "launch.sh"
SBATCH = "job.sbatch"
SLURM_JOB_ID = "slurm_job_id"
HASHES = "artifacts.sha256"
LOGS = "logs"
METRICS = "metrics.jsonl"
EMISSIONS = "emissions"
CHECKPOINTS = "checkpoints"
FINAL = "final"
COMPLETED = "COMPLETED"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"


def write_atomic(path: str | os.PathLike, text: str | bytes, mode: int | None = None) -> Path:
    """Write to a temp file beside ``path`` then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All complete lines of metrics.jsonl (a torn last line from a killed job is skipped)."""
    p = Path(run_dir) / METRICS
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def iter_kind(records: list[dict], kind: str) -> Iterator[dict]:
    return (r for r in records if r.get("kind") == kind)


def hash_files(run_dir: str | os.PathLike, names: list[str]) -> str:
    lines = []
    for n in sorted(names):
        p = Path(run_dir) / n
        if p.exists():
            lines.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {n}")
    return "\n".join(lines) + "\n"


def is_run_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / PLAN_JSON).exists()


def resolve_local_paths(spec):
    """The job with model, tokenizer, data and NVMe paths that exist here made absolute, so the
    run directory means the same thing from any working directory (and on every node of a
    shared filesystem). Hub ids and demo: names are left as they are."""
    def absolute(p):
        if p is None or p.startswith("demo:"):
            return p
        q = Path(p).expanduser()
        return str(q.resolve()) if q.exists() else p

    model = spec.model.model_copy(update={"path": absolute(spec.model.path),
                                          "tokenizer": absolute(spec.model.tokenizer)})
    data = spec.data.model_copy(update={"path": absolute(spec.data.path)})
    parallel = spec.parallel.model_copy(update={"nvme_path": absolute(spec.parallel.nvme_path)})
    return spec.model_copy(update={"model": model, "data": data, "parallel": parallel,
                                   "output_dir": str(Path(spec.output_dir).expanduser().resolve())})


def write_run_dir(run_dir: Path, spec, plan, files: dict[str, str]) -> None:
    """job.yaml (resolved), plan.json, ds_config.json (ZeRO) and the launch files (0755), each
    written atomically; the hashes of all of them last."""
    import yaml

    from launcher.render.deepspeed import render_ds_config

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Slurm does not create the folder of --output/--error: without it a job dies unlogged
    (run_dir / LOGS).mkdir(exist_ok=True)
    write_atomic(run_dir / JOB_YAML, yaml.safe_dump(spec.to_dict(), sort_keys=False))
    write_json(run_dir / PLAN_JSON, plan.to_dict())
    names = [JOB_YAML, PLAN_JSON]
    if plan.ds_config is not None:
        write_atomic(run_dir / DS_CONFIG, render_ds_config(plan.ds_config))
        names.append(DS_CONFIG)
    for name, text in files.items():
        write_atomic(run_dir / name, text, mode=0o755)
        names.append(name)
    write_atomic(run_dir / HASHES, hash_files(run_dir, names))


def new_run_dir(spec) -> Path:
    """``<output_dir>/<name>-<YYYYmmdd-HHMMSS>`` (absolute), with -2, -3... if it exists."""
    import time

    safe = spec.name.replace("/", "_")
    base = Path(spec.output_dir).expanduser().absolute() / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}"
    p, i = base, 1
    while p.exists():
        i += 1
        p = base.with_name(f"{base.name}-{i}")
    return p
