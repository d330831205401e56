"""`launcher slurm`: render job.sbatch into a run directory and optionally submit it."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from launcher.cli._common import job_argument, overrides_argument


@click.command()
@job_argument
@overrides_argument
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Run directory (default <output_dir>/<name>-<YYYYmmdd-HHMMSS>).")
@click.option("--dry-run", is_flag=True, help="Print job.sbatch; write and submit nothing.")
@click.option("--submit", is_flag=True, help="Submit with sbatch after writing the run directory.")
@click.option("--python", "python", default=None,
              help="Python on the nodes that has launcher installed (default: this interpreter, "
                   "i.e. a shared file system).")
@click.option("--carbon-aware", "carbon_aware", is_flag=True,
              help="Begin the job (#SBATCH --begin) at the start of least forecast CO2 within --start-window, from "
                   "report.intensity_forecast (an hourly CSV).")
@click.option("--start-window", "start_window", default=None, metavar="DURATION",
              help="With --carbon-aware: how long the job may wait (default 24h; 90m, 2d).")
@click.option("--preflight-only", is_flag=True, hidden=True,
              help="Ranks only join and run the preflight check (tests).")
def slurm(job_file, overrides, run_dir, dry_run, submit, python, carbon_aware, start_window, preflight_only):
    """Render JOB_FILE (default: the embedded demo job) with key.sub=value OVERRIDES into a run
    directory with job.sbatch, and print how to submit it; --submit also runs sbatch.

    One srun task per node starts torchrun with a c10d rendezvous on the first node; USR2 before
    the time limit makes the trainer checkpoint, and the job requeues itself."""
    from launcher import prepare, rundir
    from launcher.cli._common import load_job_or_default
    from launcher.errors import JobError

    if dry_run and submit:
        raise JobError("--dry-run and --submit: choose one")
    if start_window and not carbon_aware:
        raise JobError("--start-window: add --carbon-aware (the window is how long the job may wait for its start)")
    from launcher.cli._common import parse_window

    window_s = parse_window(start_window or "24h") if carbon_aware else None
    spec = load_job_or_default(job_file, overrides)
    target = Path(run_dir).absolute() if run_dir else rundir.new_run_dir(spec)
    if not dry_run:
        rundir.check_writable(target, "--run-dir" if run_dir else "output_dir")
    if rundir.is_run_dir(target) and not dry_run:
        raise JobError(f"{target}: already a run directory; choose a new --run-dir "
                       f"(a requeued job resumes in its own run directory by itself)")
    extra = ["--preflight-only"] if preflight_only else []
    plan, files = prepare.slurm_files(spec, str(target), python=python or sys.executable, extra_train_args=extra,
                                      start_window_s=window_s)
    if dry_run:
        click.echo(files[rundir.SBATCH], nl=False)
        return
    rundir.write_run_dir(target, plan, files)
    sbatch_path = rundir.RunDir(target).sbatch
    q = shlex.quote
    if not submit:
        click.echo(f"wrote {target}")
        click.echo(f"submit with: sbatch --parsable {q(str(sbatch_path))} > {q(str(rundir.RunDir(target).slurm_job_id))}")
        return
    from launcher.execute.slurm import submit as sbatch_submit

    job_id = sbatch_submit(sbatch_path)
    rundir.write_atomic(rundir.RunDir(target).slurm_job_id, f"{job_id}\n")
    click.echo(f"submitted job {job_id}: {target}")
    click.echo(f"follow with: launcher status {q(str(target))}   launcher logs {q(str(target))} -f")
