"""What a run is doing: its run directory's progress and, for Slurm runs, its job's state."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from launcher import rundir


def stored_job_id(run: Path) -> Optional[str]:
    """The Slurm job id of a run: RUN_DIR/slurm_job_id, else the newest logs/slurm-<id>.out
    (a script submitted by hand with plain sbatch)."""
    f = rundir.RunDir(run).slurm_job_id
    if f.is_file():
        text = f.read_text().strip()
        if text:
            return text.split(";", 1)[0]
    ids = [job_id for job_id, _ in rundir.RunDir(run).slurm_logs()]
    return str(max(ids)) if ids else None


def run_status(run: Path, *, query_slurm: bool = True) -> dict:
    """What `launcher status` shows for one run: job id, Slurm state, nodes, elapsed, last step
    and loss, and the COMPLETED / PREEMPTED markers."""
    trains = rundir.read_metrics(run).of(rundir.TrainRecord)
    last = trains[-1] if trains else None
    out = {
        "run": str(run),
        "job_id": stored_job_id(run),
        "state": None,
        "nodes": None,
        "elapsed": None,
        "step": last.step if last else None,
        "loss": last.loss if last else None,
        "completed": rundir.RunDir(run).completed.exists(),
        "preempted": rundir.RunDir(run).preempted.exists(),
    }
    from launcher.execute.k8s import k8s_object

    obj = k8s_object(run)
    if obj is not None and query_slurm:  # a Kubernetes run: its TrainJob or JobSet
        from launcher.execute.k8s import k8s_state

        out["job_id"] = f"{obj['kind']}/{obj['name']}"
        out.update(k8s_state(obj))
    elif out["job_id"] and query_slurm:
        from launcher.execute.slurm import job_state

        st = job_state(out["job_id"])
        out.update(state=st["state"], nodes=st["nodes"], elapsed=st["elapsed"], source=st["source"])
    return out


def log_files(run: Path, job_id: Optional[str]) -> list[Path]:
    """The job's own slurm-<id>.out/.err when the id is known, else the newest file(s) in logs/."""
    rd = rundir.RunDir(run)
    logs = rd.logs
    if not logs.is_dir():
        return []
    if job_id:
        mine = [p for p in (rd.slurm_out(job_id), rd.slurm_err(job_id)) if p.exists()]
        if mine:
            return mine
    files = [p for p in logs.rglob("*") if p.is_file() and not p.name.startswith(".")]
    if not files:
        return []
    newest = max(p.stat().st_mtime for p in files)
    return sorted(p for p in files if p.stat().st_mtime >= newest - 1.0)


def is_finished(run: Path, job_id: Optional[str]) -> bool:
    """Whether a followed run has ended: its Slurm job in a final state, or (no job) COMPLETED."""
    if job_id:
        from launcher.execute.slurm import is_final, job_state

        return is_final(job_state(job_id)["state"])
    return rundir.RunDir(run).completed.exists()
