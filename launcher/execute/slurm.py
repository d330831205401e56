"""The only place that starts Slurm commands: sbatch, scontrol, sacct, scancel.

Each is run with an argv list (never a shell) and a timeout; a missing binary or a refusal
becomes a one-line ``JobError``.
"""
from __future__ import annotations

import os
import re
import subprocess
from typing import Optional, Sequence

from launcher.errors import JobError

TIMEOUT_S = 60
# states after which a job will not run again (REQUEUED/PENDING/RUNNING/... are not final)
FINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
    "REVOKED", "TIMEOUT",
})

_HINTS = {
    "sbatch": "is Slurm installed on this machine? use --dry-run to only render the script",
}


def _run(argv: Sequence[str], *, check: bool = True, cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=TIMEOUT_S, cwd=cwd)
    except FileNotFoundError:
        hint = _HINTS.get(argv[0], "is Slurm installed on this machine?")
        raise JobError(f"{argv[0]} not found: {hint}") from None
    except subprocess.TimeoutExpired:
        raise JobError(f"{argv[0]}: no answer within {TIMEOUT_S} s; is slurmctld up (scontrol ping)?") from None
    if check and proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()
        raise JobError(f"{argv[0]} failed: {msg[-1] if msg else ''}")
    return proc


def parse_sbatch_parsable(out: str) -> str:
    """``sbatch --parsable`` prints ``id`` or ``id;cluster``: the job id."""
    text = out.strip().splitlines()[-1].strip() if out.strip() else ""
    job_id = text.split(";", 1)[0]
    if not re.fullmatch(r"\d+(_\d+)?", job_id):
        raise JobError(f"sbatch: could not read a job id from its output {out.strip()!r}")
    return job_id


def submit(script_path: str | os.PathLike, *, cwd: Optional[str] = None) -> str:
    """``sbatch --parsable SCRIPT``: the new job's id."""
    proc = _run(["sbatch", "--parsable", os.fspath(script_path)], cwd=cwd)
    return parse_sbatch_parsable(proc.stdout)


def cancel(job_id: str) -> None:
    """``scancel JOB_ID``."""
    _run(["scancel", str(job_id)])


def signal_batch(job_id: str, signal: str = "USR2") -> None:
    """Send ``signal`` to the job's batch shell only (``scancel --batch``): what Slurm does at
    ``--signal=B:USR2@N``, without waiting for the time limit."""
    _run(["scancel", "--batch", f"--signal={signal}", str(job_id)])


def parse_scontrol_job(line: str, job_id: str) -> Optional[dict]:
    """The fields we use from one line of ``scontrol show job -o``. The job name comes second and
    may hold spaces and '=': we read only what follows ``UserId=...(uid) GroupId=``, and take the
    first occurrence of each key (user paths such as StdOut come last)."""
    m = re.match(r"JobId=(\S+) ", line)
    if not m or m.group(1) != str(job_id):
        return None
    anchor = re.search(r" UserId=\S*\(\d+\) GroupId=", line)
    rest = line[anchor.start():] if anchor else line

    def field(key: str) -> Optional[str]:
        f = re.search(rf"(?:^|\s){re.escape(key)}=(\S*)", rest)
        return f.group(1) if f else None

    nodes = field("NodeList")
    return {
        "job_id": str(job_id),
        "state": field("JobState") or "UNKNOWN",
        "reason": field("Reason"),
        "nodes": None if nodes in (None, "(null)", "") else nodes,
        "elapsed": field("RunTime"),
        "exit_code": field("ExitCode"),
        "restarts": int(field("Restarts") or 0),
        "source": "scontrol",
    }


def parse_sacct(out: str, job_id: str) -> Optional[dict]:
    """``sacct -X -n -P -o JobID,State,NodeList,Elapsed,ExitCode`` output for one job."""
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 5 or parts[0].split(";")[0] != str(job_id):
            continue
        state = parts[1].split()[0] if parts[1].strip() else "UNKNOWN"  # "CANCELLED by 0"
        nodes = parts[2] if parts[2] not in ("", "None assigned") else None
        return {"job_id": str(job_id), "state": state, "reason": None, "nodes": nodes, "elapsed": parts[3],
                "exit_code": parts[4], "restarts": None, "source": "sacct"}
    return None


def job_state(job_id: str) -> dict:
    """State of a job: from slurmctld while it knows the job (``scontrol show job -o``), else from
    accounting (``sacct``). Keys: job_id, state, reason, nodes, elapsed, exit_code, restarts,
    source ("scontrol", "sacct" or "none": state is then UNKNOWN)."""
    proc = _run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
    if proc.returncode == 0:
        for line in proc.stdout.splitlines():
            info = parse_scontrol_job(line.strip(), job_id)
            if info:
                return info
    # purged from slurmctld (MinJobAge after the end) or another cluster's: ask accounting
    proc = _run(["sacct", "-j", str(job_id), "-X", "-n", "-P", "-o", "JobID,State,NodeList,Elapsed,ExitCode"],
                check=False)
    if proc.returncode == 0:
        info = parse_sacct(proc.stdout, job_id)
        if info:
            return info
    return {"job_id": str(job_id), "state": "UNKNOWN", "reason": None, "nodes": None, "elapsed": None,
            "exit_code": None, "restarts": None, "source": "none"}


def is_final(state: str) -> bool:
    return state.split()[0] in FINAL_STATES if state else False


SACCT_ATTEMPT_FIELDS = "JobID,State,Start,End,ElapsedRaw,AllocTRES,NNodes"


def _gpus(tres: str) -> int:
    """GPUs in an AllocTRES string (``billing=16,cpu=64,gres/gpu=8,mem=...,node=2``)."""
    for part in tres.split(","):
        key, _, value = part.partition("=")
        if key in ("gres/gpu", "gpu") or key.startswith("gres/gpu:") and ":" not in key[len("gres/gpu:"):]:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def parse_sacct_attempts(out: str, job_id: str) -> list[dict]:
    """Every attempt of a job (``sacct -D -X -n -P -o JobID,State,Start,End,ElapsedRaw,AllocTRES,NNodes``):
    a requeued job has one line per run. ``gpus`` comes from AllocTRES (0 on a CPU cluster)."""
    attempts = []
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 7 or parts[0].split(";")[0] != str(job_id):
            continue
        try:
            elapsed = int(parts[4] or 0)
            nodes = int(parts[6] or 0)
        except ValueError:
            continue
        attempts.append({"state": parts[1].split()[0] if parts[1].strip() else "UNKNOWN", "start": parts[2],
                         "end": parts[3], "elapsed_s": elapsed, "gpus": _gpus(parts[5]), "nodes": nodes,
                         "alloc_tres": parts[5]})
    return attempts


def write_accounting(run_dir, job_id: str):
    """Slurm's accounting of the job (every attempt's allocated time and GPUs, from sacct) into
    RUN_DIR/slurm_accounting.json, where the report reads it: the SlurmAccounting written, None
    when sacct cannot say."""
    import time

    from launcher import rundir
    from launcher.rundir.artifacts import SlurmAccounting

    proc = _run(["sacct", "-j", str(job_id), "-D", "-X", "-n", "-P", "-o", SACCT_ATTEMPT_FIELDS], check=False)
    attempts = parse_sacct_attempts(proc.stdout, job_id) if proc.returncode == 0 else []
    if not attempts:
        return None
    data = SlurmAccounting(job_id=str(job_id), queried_at=time.time(), attempts=attempts)
    data.write(rundir.RunDir(run_dir).slurm_accounting)
    return data
