"""`launcher status`, `launcher logs`, `launcher cancel`: a run directory's Slurm job and progress."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import click

RUNS_DIR = "runs"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def status_table(statuses: list[dict]) -> str:
    """The status of runs as a plain rich table (no box, no colour when piped)."""
    import io

    from launcher import rundir
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1), header_style="bold")
    for h in ("RUN", "JOB", "STATE", "NODES", "ELAPSED", "STEP", "LOSS", rundir.COMPLETED):
        table.add_column(h, no_wrap=True)
    for s in statuses:
        marker = rundir.COMPLETED if s["completed"] else (rundir.PREEMPTED if s["preempted"] else "-")
        table.add_row(s["run"], _fmt(s["job_id"]), _fmt(s["state"] or ("local" if not s["job_id"] else None)),
                      _fmt(s["nodes"]), _fmt(s["elapsed"]), _fmt(s["step"]), _fmt(s["loss"]), marker)
    con = Console(file=io.StringIO(), width=400, color_system=None, highlight=False, emoji=False)
    con.print(table)
    return "\n".join(line.rstrip() for line in con.file.getvalue().splitlines() if line.strip()) + "\n"


@click.command()
@click.argument("run_dirs", nargs=-1, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per run.")
def status(run_dirs, as_json):
    """Slurm state, nodes, elapsed time, last step and loss of RUN_DIRS (default: every run under
    ./runs). COMPLETED says the trainer finished and saved its final model."""
    import json

    from launcher import rundir
    from launcher.execute.status import run_status

    if run_dirs:
        runs = [rundir.require_run_dir(d) for d in run_dirs]
    else:
        base = Path(RUNS_DIR)
        runs = sorted(p for p in base.iterdir() if rundir.is_run_dir(p)) if base.is_dir() else []
        if not runs:
            click.echo(f"no run directories under ./{RUNS_DIR}")
            return
    statuses = [run_status(run) for run in runs]
    if as_json:
        for s in statuses:
            click.echo(json.dumps(s, sort_keys=True))
        return
    click.echo(status_table(statuses), nl=False)


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the logs grow, until the job ends.")
@click.option("--interval", type=float, default=1.0, hidden=True, help="Seconds between polls with -f.")
def logs(run_dir, follow, interval):
    """Print RUN_DIR's newest logs (the Slurm job's .out and .err; a Kubernetes run's pods, through
    kubectl logs); -f follows them until the job ends (or Ctrl-C)."""
    from launcher import rundir
    from launcher.execute.k8s import k8s_object
    from launcher.execute.status import is_finished, log_files, stored_job_id

    run = rundir.require_run_dir(run_dir)
    obj = k8s_object(run)
    if obj is not None:  # the pods' logs, through kubectl (the run directory is on the claim)
        import subprocess

        from launcher.execute.k8s import k8s_logs_argv

        try:
            raise SystemExit(subprocess.run(k8s_logs_argv(obj, follow)).returncode)
        except KeyboardInterrupt:
            return
    job_id = stored_job_id(run)
    files = log_files(run, job_id)
    if not files and not follow:
        click.echo(f"{run}: no logs yet", err=True)
        return
    offsets: dict[Path, int] = {}
    last: list[Optional[Path]] = [None]

    def drain(paths: list[Path]) -> None:
        for p in paths:
            try:
                with open(p, "rb") as fh:
                    fh.seek(offsets.get(p, 0))
                    data = fh.read()
                    offsets[p] = fh.tell()
            except FileNotFoundError:
                continue
            if data:
                if len(paths) > 1 and last[0] != p:  # as tail does: name the file when it changes
                    click.echo(f"==> {p} <==")
                last[0] = p
                text = data.decode(errors="replace")
                click.echo(text, nl=not text.endswith("\n") and not follow)

    drain(files)
    if not follow:
        return
    try:
        while True:
            done = is_finished(run, job_id)
            files = log_files(run, job_id) or files
            drain(files)
            if done:
                time.sleep(min(interval, 1.0))  # output written just before the end
                drain(files)
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def cancel(run_dir):
    """Cancel RUN_DIR's Slurm job (scancel), or its Kubernetes TrainJob/JobSet (kubectl delete). The
    run directory and its checkpoints stay."""
    from launcher import rundir
    from launcher.errors import JobError
    from launcher.execute.slurm import cancel as scancel
    from launcher.execute.status import stored_job_id

    run = rundir.require_run_dir(run_dir)
    from launcher.execute.k8s import k8s_cancel, k8s_object

    obj = k8s_object(run)
    if obj is not None:
        k8s_cancel(obj)
        click.echo(f"deleted {obj['kind']}/{obj['name']} and its ConfigMap in namespace {obj['namespace']} ({run}); "
                   "the run directory on the claim stays")
        return
    job_id = stored_job_id(run)
    if not job_id:
        raise JobError(f"{run_dir}: no Slurm job recorded (no {rundir.SLURM_JOB_ID}); "
                       f"was it submitted with launcher slurm --submit?")
    scancel(job_id)
    click.echo(f"cancelled job {job_id} ({run})")
