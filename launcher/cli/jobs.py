"""`launcher status`, `launcher logs`, `launcher cancel`: a run directory's Slurm job and progress."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional

import click

RUNS_DIR = "runs"


def _require_run_dir(path: str) -> Path:
    from launcher import rundir
    from launcher.errors import JobError

    p = Path(path)
    if not rundir.is_run_dir(p):
        why = "no such folder" if not p.exists() else f"no {rundir.PLAN_JSON}"
        raise JobError(f"{path}: not a run directory ({why}); make one with launcher run or launcher slurm")
    return p


def stored_job_id(run: Path) -> Optional[str]:
    """The Slurm job id of a run: RUN_DIR/slurm_job_id, else the newest logs/slurm-<id>.out
    (a script submitted by hand with plain sbatch)."""
    from launcher import rundir

    f = run / rundir.SLURM_JOB_ID
    if f.is_file():
        text = f.read_text().strip()
        if text:
            return text.split(";", 1)[0]
    ids = [int(m.group(1)) for p in (run / rundir.LOGS).glob("slurm-*.*")
           if (m := re.fullmatch(r"slurm-(\d+)\.(out|err)", p.name))]
    return str(max(ids)) if ids else None


def run_status(run: Path, *, query_slurm: bool = True) -> dict:
    """What `launcher status` shows for one run (also used by tests)."""
    from launcher import rundir

    records = rundir.read_metrics(run)
    last = None
    for r in records:
        if r.get("kind") == "train":
            last = r
    out = {
        "run": str(run),
        "job_id": stored_job_id(run),
        "state": None,
        "nodes": None,
        "elapsed": None,
        "step": last.get("step") if last else None,
        "loss": last.get("loss") if last else None,
        "completed": (run / rundir.COMPLETED).exists(),
        "preempted": (run / "PREEMPTED").exists(),
    }
    if out["job_id"] and query_slurm:
        from launcher.execute.slurm import job_state

        st = job_state(out["job_id"])
        out.update(state=st["state"], nodes=st["nodes"], elapsed=st["elapsed"], source=st["source"])
    return out


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


@click.command()
@click.argument("run_dirs", nargs=-1, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per run.")
def status(run_dirs, as_json):
    """Slurm state, nodes, elapsed time, last step and loss of RUN_DIRS (default: every run under
    ./runs). COMPLETED says the trainer finished and saved its final model."""
    import json

    from launcher import rundir

    if run_dirs:
        runs = [_require_run_dir(d) for d in run_dirs]
    else:
        base = Path(RUNS_DIR)
        runs = sorted(p for p in base.iterdir() if rundir.is_run_dir(p)) if base.is_dir() else []
        if not runs:
            click.echo(f"no run directories under ./{RUNS_DIR}")
            return
    if as_json:
        for run in runs:
            click.echo(json.dumps(run_status(run), sort_keys=True))
        return
    rows = [("RUN", "JOB", "STATE", "NODES", "ELAPSED", "STEP", "LOSS", "COMPLETED")]
    for run in runs:
        s = run_status(run)
        marker = "COMPLETED" if s["completed"] else ("PREEMPTED" if s["preempted"] else "-")
        rows.append((s["run"], _fmt(s["job_id"]), _fmt(s["state"] or ("local" if not s["job_id"] else None)),
                     _fmt(s["nodes"]), _fmt(s["elapsed"]), _fmt(s["step"]), _fmt(s["loss"]), marker))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _log_files(run: Path, job_id: Optional[str]) -> list[Path]:
    """The job's own slurm-<id>.out/.err when the id is known, else the newest file(s) in logs/."""
    from launcher import rundir

    logs = run / rundir.LOGS
    if not logs.is_dir():
        return []
    if job_id:
        mine = [logs / f"slurm-{job_id}.out", logs / f"slurm-{job_id}.err"]
        mine = [p for p in mine if p.exists()]
        if mine:
            return mine
    files = [p for p in logs.rglob("*") if p.is_file() and not p.name.startswith(".")]
    if not files:
        return []
    newest = max(p.stat().st_mtime for p in files)
    return sorted(p for p in files if p.stat().st_mtime >= newest - 1.0)


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the logs grow, until the job ends.")
@click.option("--interval", type=float, default=1.0, hidden=True, help="Seconds between polls with -f.")
def logs(run_dir, follow, interval):
    """Print RUN_DIR's newest logs (the Slurm job's .out and .err); -f follows them until the job
    ends (or Ctrl-C)."""
    run = _require_run_dir(run_dir)
    job_id = stored_job_id(run)
    files = _log_files(run, job_id)
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
    from launcher.execute.slurm import is_final, job_state

    try:
        while True:
            done = False
            if job_id:
                done = is_final(job_state(job_id)["state"])
            elif (run / "COMPLETED").exists():
                done = True
            files = _log_files(run, job_id) or files
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
    """Cancel RUN_DIR's Slurm job (scancel). The run directory and its checkpoints stay."""
    from launcher.errors import JobError
    from launcher.execute.slurm import cancel as scancel

    run = _require_run_dir(run_dir)
    job_id = stored_job_id(run)
    if not job_id:
        raise JobError(f"{run_dir}: no Slurm job recorded (no slurm_job_id); "
                       f"was it submitted with launcher slurm --submit?")
    scancel(job_id)
    click.echo(f"cancelled job {job_id} ({run})")
