"""Reading and writing a run directory: atomic writes, the plan, the job, the hashes."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from launcher.errors import JobError
from launcher.fs import json_text, write_atomic, write_json  # noqa: F401 - re-exported: the run directory's writers
from launcher.rundir.names import HASHES, JOB_YAML, LOGS, PLAN_JSON


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


def require_run_dir(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or the one error every command gives for a folder that is not a run."""
    p = Path(path)
    if not is_run_dir(p):
        raise JobError(f"{path}: not a run directory (no {PLAN_JSON}); pass a folder made by launcher run "
                       "or launcher slurm")
    return p


def write_plan(run_dir: str | os.PathLike, plan) -> Path:
    return write_json(Path(run_dir) / PLAN_JSON, plan.to_dict())


def read_plan(run_dir: str | os.PathLike):
    """The run's Plan, validated; a damaged plan.json is one clear line."""
    from pydantic import ValidationError

    from launcher.plan.types import Plan

    p = require_run_dir(run_dir) / PLAN_JSON
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JobError(f"{p}: not valid JSON ({e}); the run directory is damaged") from None
    try:
        return Plan.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise JobError(f"{p}: {where}: {first['msg']}; the plan was written by another launcher version "
                       "or damaged: make a new run directory") from None


def plan_files(plan) -> dict[str, str]:
    """job.yaml (the resolved job) and plan.json as a run directory holds them: what write_run_dir
    writes, and what a Kubernetes run's ConfigMap carries to its pods."""
    import yaml

    return {JOB_YAML: yaml.safe_dump(plan.job.to_dict(), sort_keys=False), PLAN_JSON: json_text(plan.to_dict())}


def write_run_dir(run_dir: Path, plan, files: dict[str, str]) -> None:
    """job.yaml (resolved), plan.json and the rendered files (ds_config.json, launch scripts,
    job.sbatch; scripts 0755), each written atomically; the hashes of all of them last."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Slurm does not create the folder of --output/--error: without it a job dies unlogged
    (run_dir / LOGS).mkdir(exist_ok=True)
    names = []
    for name, text in plan_files(plan).items():
        write_atomic(run_dir / name, text)
        names.append(name)
    for name, text in files.items():
        write_atomic(run_dir / name, text, mode=0o755 if name.endswith((".sh", ".sbatch")) else None)
        names.append(name)
    write_atomic(run_dir / HASHES, hash_files(run_dir, names))


def check_writable(path: str | os.PathLike, what: str = "--run-dir") -> None:
    """Before anything is written: a run directory can be made at ``path`` (its nearest existing
    folder is a folder, and writable here). One line naming ``what`` (the flag or field) if not."""
    p = Path(path).absolute()
    if p.exists() and not p.is_dir():
        raise JobError(f"{what}: {p} is a file, not a folder; choose another run directory")
    near = p
    while not near.exists() and near != near.parent:
        near = near.parent
    if not near.is_dir():
        raise JobError(f"{what}: {p}: {near} is a file, so no folder can be made under it; choose a run "
                       "directory under a folder")
    if not os.access(near, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if os.statvfs(near).f_flag & os.ST_RDONLY else "is not writable here"
        raise JobError(f"{what}: {p}: {near} {why}; choose a run directory on a writable disk (--run-dir, or "
                       "output_dir in the job)")


def new_run_dir(spec) -> Path:
    """``<output_dir>/<name>-<YYYYmmdd-HHMMSS>`` (absolute), with -2, -3... if it exists."""
    safe = spec.name.replace("/", "_")
    base = Path(spec.output_dir).expanduser().absolute() / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}"
    p, i = base, 1
    while p.exists():
        i += 1
        p = base.with_name(f"{base.name}-{i}")
    return p
