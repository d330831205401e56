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
              help="Run directory (default runs/<name>-<time>); an existing one is resumed.")
@click.option("--resume", is_flag=True, help="Resume the newest run of this job under output_dir.")
@click.option("--dry-run", is_flag=True, help="Print the exact command and environment; start nothing.")
@click.option("--nproc-per-node", type=click.IntRange(min=1), default=None,
              help="Processes on this node (default: cluster.gpus_per_node, or cpu_procs_per_node without GPU).")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None, help="Default: cuda if visible.")
@click.option("--hosts", default=None,
              help="h1,h2,...: render one torchrun command per host (c10d on h1) into the run dir, for ssh/pdsh.")
@click.option("--start-over", is_flag=True,
              help="Train a completed (or stopped) run directory again from step 0: its checkpoints, final model, "
                   "metrics and reports are removed first.")
def run(job_file, overrides, run_dir, resume, dry_run, nproc_per_node, device, hosts, start_over):
    """Fine-tune JOB_FILE (default: the embedded demo job) on this node under torchrun.

    Writes the run directory (resolved job, plan, DeepSpeed config, launch.sh), starts one
    process per GPU (gloo processes on CPU), streams logs to the terminal and RUN_DIR/logs, and
    exits with the job's status. `launcher run RUN_DIR` resumes a run from its newest verified
    checkpoint with the job stored in it; a completed run is left alone unless --start-over.
    One run at a time per run directory (RUN_DIR/LOCK)."""
    from launcher import prepare, rundir
    from launcher.cli._common import load_job_or_default, split_job_file
    from launcher.errors import JobError

    job_file, overrides = split_job_file(job_file, overrides)
    if job_file and rundir.is_run_dir(job_file):  # `launcher run RUN_DIR` resumes that run
        run_dir, job_file = job_file, str(rundir.RunDir(job_file).job_yaml)
    spec = load_job_or_default(job_file, overrides)
    dev = prepare.resolve_device(spec, device, probe=True)
    if not hosts:
        prepare.check_device_here(dev)
        prepare.check_precision_here(spec, dev)
    if run_dir is None and resume:
        run_dir = prepare.latest_run_dir(spec)
        if run_dir is None:
            raise JobError(f"--resume: no run of job {spec.name!r} under {spec.output_dir}/; start one without --resume")
    target = Path(run_dir).resolve() if run_dir else rundir.new_run_dir(spec)
    rundir.check_writable(target, "--run-dir" if run_dir else "output_dir")
    resuming = rundir.is_run_dir(target)
    if resuming and not job_file:
        spec = load_job_or_default(str(rundir.RunDir(target).job_yaml), overrides)
    spec = prepare.with_procs(spec, dev, nproc_per_node)

    if hosts:
        names = prepare.host_names(hosts)
        plan, files = prepare.hosts_launch_files(spec, dev, names, target)
        if dry_run:
            for name, text in files.items():
                if name.endswith(".sh"):
                    click.echo(f"# {name}\n{text}")
            return
        rundir.write_run_dir(target, plan, files)
        click.echo(f"run directory: {target}")
        for i, host in enumerate(names):
            click.echo(f"  on {host}: bash {shlex.quote(str(rundir.RunDir(target).host_launch(i, host)))}")
        return
    if dry_run:
        plan = prepare.plan_run(spec, dev, target, with_data=False, probe=False, history=False)  # commands only
        _, _, files = prepare.local_launch_files(plan, target)
        click.echo(files[rundir.LAUNCH_SH], nl=False)
        return
    if resuming and rundir.RunDir(target).completed.exists() and not start_over:
        click.echo(f"{target}: complete ({rundir.COMPLETED}); nothing to run. To train it again from step 0: "
                   f"launcher run {shlex.quote(str(target))} --start-over")
        return

    from launcher.rundir.lock import RunLock

    made = None  # the outermost folder this run creates (output_dir too, when it is new)
    if not target.exists():
        made = target
        while not made.parent.exists():
            made = made.parent
    lock = RunLock(target).acquire()
    try:
        _run_locked(target, spec, dev, resuming, start_over, made)
    finally:
        lock.release()


def _run_locked(target: Path, spec, dev: str, resuming: bool, start_over: bool, made) -> None:
    import os

    from launcher import prepare, rundir
    from launcher.execute.local import Torchrun

    if resuming and start_over:
        prepare.clear_run_outputs(target)
    early = None  # torchrun, started while the data is tokenized (its ranks import meanwhile)
    try:
        spec, plan = prepare.plan_before_data(spec, dev)
        if os.environ.get("LAUNCHER_NO_PRESTART") != "1":  # 1: ranks start after the data (bench/first_step.py)
            argv, env, _ = prepare.local_launch_files(plan, target)
            early = Torchrun(argv, env, target, prestart=prepare.prestart_hint(plan))
        plan = prepare.plan_with_data(spec, plan, target)
        note = prepare.check_resume(target, plan) if resuming else None
        cleared = prepare.clear_stop_markers(target) if resuming else []
        argv, env, files = prepare.local_launch_files(plan, target)
        rundir.write_run_dir(target, plan, files)
    except BaseException:
        if early is not None:
            early.cancel()
        if made is not None:  # nothing half-made is left behind
            import shutil

            shutil.rmtree(made, ignore_errors=True)
        raise
    if early is None or not early.runs(argv, env):
        if early is not None:
            early.cancel()
        early = Torchrun(argv, env, target)
    click.echo(f"{'resuming' if resuming else 'run directory'}: {target}")
    if note:
        click.echo(f"note: {note}")
    if cleared:
        click.echo(f"cleared the last attempt's {' and '.join(cleared)}")
    click.echo(f"{plan.world_size} x {plan.device} ({plan.backend}), {plan.strategy}"
               f"{'-' + str(plan.zero_stage) if plan.zero_stage is not None else ''}, {plan.total_steps} steps of "
               f"{plan.global_batch_size} rows")
    import time

    launched_at = time.time()
    rc = early.go()
    completed = rundir.RunDir(target).completed.exists()
    if rc and not completed:
        failed = prepare.preflight_failure(target, since=launched_at)
        if failed:  # bad input of the cluster's kind: one line, exit 2, nothing trained
            from launcher.errors import JobError

            raise JobError(failed)
    if completed and rc != 0:
        click.echo(f"note: torchrun exited {rc} after the job completed ({rundir.COMPLETED} marker written): "
                   "treating the job as successful", err=True)
        rc = 0
    if completed:
        from launcher.execute.finish import finish_run

        _print_summary(target, finish_run(target, slurm_job_id=os.environ.get("SLURM_JOB_ID"),
                                          warn=lambda line: click.echo(line, err=True)))
    elif rundir.RunDir(target).preempted.exists():
        click.echo(f"stopped at a checkpoint; resume with: launcher run {shlex.quote(str(target))}", err=True)
    if rc:
        sys.exit(rc)


def _print_summary(run_dir: Path, report) -> None:
    from launcher.report import read_or_build_report, what_changed
    from launcher.report.render import render_table

    try:
        report = report or read_or_build_report(run_dir)
        click.echo(render_table(report))
        line = what_changed(report)
        if line:
            click.echo(line)
    except Exception as e:  # the job succeeded; a summary problem must not change that
        click.echo(f"(summary unavailable: {e})", err=True)
