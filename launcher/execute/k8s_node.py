"""The container command of a Kubernetes run's pods: ``launcher k8s-node RUN_DIR``.

1. The run directory on the shared claim: made from the ConfigMap's files (mounted at
   ``LAUNCHER_RUN_FILES``) by whichever pod comes first (a temporary folder, then a rename), kept
   as it is across restarts (the checkpoints are in it).
2. The rendezvous from the environment: a TrainJob's ``PET_NNODES``, ``PET_NODE_RANK``,
   ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT`` (Trainer's controller injects them); a JobSet's
   ``JOB_COMPLETION_INDEX`` (the Indexed Job's) and the ``LAUNCHER_*`` launcher's manifest sets.
   This node's address is the head's hostname with its own index (``<name>-node-0-<i>.<name>``).
3. Node 0: the stale ``STOP``/``PREEMPTED`` markers of an earlier attempt cleared, the hub ids
   fetched into the claim's Hugging Face cache (once, before any rank starts; the other nodes'
   ranks wait for node 0's in the rendezvous).
4. torchrun, in a session of its own: Kubernetes' SIGTERM reaches this process (PID 1) only.
   On SIGTERM it touches ``STOP``; the ranks agree on a step, checkpoint, write ``PREEMPTED`` and
   exit 0; this process then exits ``STOPPED_EXIT``, which the failure policy restarts on
   without spending a restart. Completed: node 0 writes the report (``launcher report --finish``).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping, Optional

from launcher import rundir
from launcher.errors import JobError


def materialize(run_dir: Path, files: Path) -> None:
    """RUN_DIR from the ConfigMap's files, unless a pod (this one, earlier) made it already."""
    if rundir.RunDir(run_dir).plan_json.is_file():
        return
    if not files.is_dir():
        raise JobError(f"LAUNCHER_RUN_FILES: {files}: no such folder; the pod mounts the run's ConfigMap there")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", dir=run_dir.parent))
    try:
        for f in files.iterdir():  # a ConfigMap volume holds its keys as links into ..data/
            if f.name.startswith(".") or not f.is_file():
                continue
            shutil.copyfile(f, tmp / f.name)
        rundir.RunDir(tmp).logs.mkdir()
        try:
            os.rename(tmp, run_dir)
        except OSError:
            if not rundir.RunDir(run_dir).plan_json.is_file():  # not another pod's: a real problem
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def rendezvous(env: Mapping[str, str], nodes: int) -> tuple[int, int, Optional[str], int, Optional[str]]:
    """(node rank, nodes, head address, port, this node's address) from the pod's environment."""
    if "PET_NNODES" in env:  # TrainJob: Trainer's controller
        nnodes, rank = int(env["PET_NNODES"]), int(env.get("PET_NODE_RANK", "0"))
        master, port = env.get("PET_MASTER_ADDR"), int(env.get("PET_MASTER_PORT", "29500"))
    else:  # JobSet: the Indexed Job's index, launcher's own variables
        nnodes = int(env.get("LAUNCHER_NNODES", str(nodes)))
        rank = int(env.get("JOB_COMPLETION_INDEX", "0"))
        master, port = env.get("LAUNCHER_MASTER_ADDR"), int(env.get("LAUNCHER_MASTER_PORT", "29500"))
    if not 0 <= rank < nnodes:
        raise JobError(f"k8s-node: node rank {rank} is outside the job's {nnodes} node(s)")
    local = env.get("LAUNCHER_LOCAL_ADDR")
    if local is None and master:
        m = re.match(r"^(.*-)0(\..*)?$", master)  # <name>-node-0-0.<subdomain>: pods differ in the last index
        local = f"{m.group(1)}{rank}{m.group(2) or ''}" if m else None
    return rank, nnodes, master, port, local


def torchrun_argv(plan, run_dir: Path, rank: int, nnodes: int, master: Optional[str], port: int,
                  local: Optional[str]) -> list[str]:
    from launcher.render.torchrun import default_torchrun, render_torchrun_argv

    torchrun = default_torchrun(plan)
    if nnodes == 1:
        return render_torchrun_argv(plan, str(run_dir), torchrun=torchrun)
    if not master:
        raise JobError("k8s-node: no head address (PET_MASTER_ADDR or LAUNCHER_MASTER_ADDR) for a multi-node job")
    argv = render_torchrun_argv(plan, str(run_dir), rdzv_endpoint=f"{master}:{port}", rdzv_id=run_dir.name,
                                node_rank=str(rank), nnodes=str(nnodes), local_addr=local, torchrun=torchrun)
    if rank == 0:  # the head hosts the c10d store: said, not guessed from hostnames
        i = argv.index("--rdzv-backend")
        argv[i:i] = ["--rdzv-conf", "is_host=1"]
    return argv


def record_pod(run: Path, rank: int, start: float, code: int, devices: int) -> None:
    """This pod's line in RUN_DIR/k8s_pods.jsonl: what the cluster allocated it (from its start to
    its end), for the report's allocation. One append of one line: pods end at once."""
    import json
    import socket

    from launcher.fs import append_line

    line = json.dumps({"pod": os.environ.get("HOSTNAME") or socket.gethostname(), "node_rank": rank,
                       "start": start, "end": time.time(), "exit": code, "devices": devices}, sort_keys=True)
    try:
        append_line(rundir.RunDir(run).k8s_pods, line)
    except OSError:
        pass  # the allocation is then missing from the report: the run is not affected


def main(run_dir: str, env: Optional[Mapping[str, str]] = None) -> int:
    """The pod's life (see the module docstring); its exit code, recorded in k8s_pods.jsonl."""
    t0 = time.time()
    code, rank, devices = 1, -1, 0
    try:
        code, rank, devices = _node(run_dir, env)
        return code
    finally:
        if rank >= 0:
            record_pod(Path(run_dir), rank, t0, code, devices)


def _node(run_dir: str, env: Optional[Mapping[str, str]] = None) -> tuple[int, int, int]:
    """(exit code, node rank or -1 when this pod's line is already written, devices)."""
    from launcher.prepare.resume import clear_stop_markers
    from launcher.render.k8s import RUN_FILES_MOUNT, STOPPED_EXIT

    t_start = time.time()
    env = dict(os.environ if env is None else env)
    run = Path(run_dir)
    stop = {"asked": False}

    def on_term(signum, frame):  # noqa: ARG001
        stop["asked"] = True
        try:
            rundir.RunDir(run).stop.touch()
        except OSError:
            pass
        print("launcher: SIGTERM: asking the trainer to checkpoint and stop", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, on_term)
    materialize(run, Path(env.get("LAUNCHER_RUN_FILES", RUN_FILES_MOUNT)))
    plan = rundir.read_plan(run)
    rank, nnodes, master, port, local = rendezvous(env, plan.nodes)
    devices = plan.procs_per_node
    print(f"launcher: node {rank} of {nnodes}, rendezvous {master or 'standalone'}:{port}, run {run}",
          file=sys.stderr, flush=True)
    if rank == 0:
        clear_stop_markers(run)
        fetch = {k: v for k, v in env.items() if k != "HF_HUB_OFFLINE"}
        out = subprocess.run([sys.executable, "-m", "launcher", "fetch", str(run)], env=fetch)
        if out.returncode != 0:
            return out.returncode, rank, devices
    if stop["asked"]:
        return STOPPED_EXIT, rank, devices
    proc = subprocess.Popen(torchrun_argv(plan, run, rank, nnodes, master, port, local), env=env,
                            start_new_session=True)
    status = proc.wait()  # SIGTERM runs on_term meanwhile; the wait goes on (PEP 475)
    marks = rundir.RunDir(run)
    if marks.preempted.exists():
        print(f"launcher: the trainer saved a checkpoint and stopped; exit {STOPPED_EXIT} (restart without "
              "spending a restart)", file=sys.stderr, flush=True)
        return STOPPED_EXIT, rank, devices
    if marks.completed.exists():
        if rank == 0:
            record_pod(run, rank, t_start, 0, devices)  # before the report, which reads it
            rank = -1  # recorded
            subprocess.run([sys.executable, "-m", "launcher", "report", str(run), "--finish"], env=env)
        return 0, rank, devices
    if stop["asked"]:
        return (STOPPED_EXIT if status == 0 else status), rank, devices
    return status, rank, devices
