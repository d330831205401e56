"""A run directory's past: whether it can be resumed with this plan, what a start-over removes,
the markers a resume clears, a preflight that failed, the newest run of a job."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from launcher import rundir
from launcher.errors import JobError


def check_resume(run_dir: Path, plan) -> Optional[str]:
    """A run directory resumed with another world size: FSDP2 reshards its checkpoint
    (torch.distributed.checkpoint), and the note says so; a ZeRO checkpoint is refused before
    any rank starts, naming both sizes. Never a silent change of plan.json."""
    from launcher.train.checkpoint import latest_checkpoint

    if not rundir.is_run_dir(run_dir) or latest_checkpoint(run_dir) is None:
        return None
    before = rundir.read_plan(run_dir)
    if before.world_size == plan.world_size:
        return None
    if plan.strategy != "fsdp" or before.strategy != "fsdp":
        key = "cluster.gpus_per_node" if plan.device == "cuda" else "cluster.cpu_procs_per_node"
        raise JobError(f"world size: {run_dir} holds a checkpoint written by {before.world_size} ranks and this "
                       f"launch has {plan.world_size}; DeepSpeed ZeRO checkpoints are not resharded here: "
                       f"resume with {before.world_size} ranks ({key}, cluster.nodes or --nproc-per-node)")
    return (f"world size {before.world_size} -> {plan.world_size}: FSDP2 reshards the checkpoint "
            f"(global batch {plan.global_batch_size} unchanged: micro {plan.micro_batch_size} x accum "
            f"{plan.grad_accum_steps} x {plan.world_size})")


def clear_run_outputs(run_dir: Path) -> None:
    """What a run produced (checkpoints, final model, metrics, energy, reports, markers, tracker
    runs), removed before it trains again from step 0 (`launcher run --start-over`). The job, the
    plan, the tokenized data and the logs stay."""
    import shutil

    folders, files = rundir.RunDir(run_dir).outputs()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    for file in files:
        file.unlink(missing_ok=True)


def clear_stop_markers(run_dir: Path) -> list[str]:
    """The last attempt's ``STOP`` and ``PREEMPTED`` markers, removed before a resumed run's first
    step, as the Slurm batch script does before each attempt (a stale ``STOP`` would stop the
    resumed run at its first step). Returns the names removed."""
    removed = []
    for marker in (rundir.RunDir(run_dir).stop, rundir.RunDir(run_dir).preempted):
        if marker.exists():
            marker.unlink()
            removed.append(marker.name)
    return removed


def preflight_failure(run_dir: Path, since: float) -> Optional[str]:
    """The line of a preflight that failed after ``since`` (logs/preflight.json), or None."""
    from launcher.rundir.artifacts import DamagedFile, Preflight, read_model

    try:
        report = read_model(Preflight, rundir.RunDir(run_dir).preflight_json, missing_ok=True)
    except DamagedFile:
        return None
    if report is not None and not report.ok and report.time >= since and report.error:
        return report.error
    return None


def latest_run_dir(spec) -> Optional[Path]:
    runs = [p for p in Path(spec.output_dir).glob(f"{spec.name}-*") if rundir.is_run_dir(p)]
    return max(runs, key=lambda p: p.stat().st_mtime).resolve() if runs else None
