"""The launch files of a plan: the engine config, torchrun's argv and environment for this node,
one script per host (--hosts), the Slurm batch script."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from launcher import rundir
from launcher.errors import JobError
from launcher.prepare.here import check_trackers_here, resolve_device
from launcher.prepare.planning import fetch_hub, plan_without_data, with_best_start


def prestart_hint(plan) -> dict:
    """What a rank started before its plan is written imports while it waits
    (launcher.train.prestart): the engine's modules and the model's (by its config's
    model_type)."""
    import json

    from launcher.sources import job_paths

    try:
        model_type = json.loads((Path(job_paths(plan.job).model) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None  # the ranks find out, after the plan; nothing is warmed for it here
    return {"strategy": plan.strategy, "zero_stage": plan.zero_stage, "method": plan.job.train.method,
            "model_type": model_type if isinstance(model_type, str) else None,
            "trackers": list(plan.job.report.trackers)}


def local_launch_files(plan, run_dir: Path) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """(torchrun argv, environment, files to write) of a run on this node."""
    from launcher.render.torchrun import default_torchrun, render_env, render_launch_script, render_torchrun_argv

    argv = render_torchrun_argv(plan, str(run_dir), torchrun=default_torchrun(plan))
    env = render_env(plan, run_dir=str(run_dir))
    return argv, env, {**engine_files(plan), rundir.LAUNCH_SH: render_launch_script(argv, env)}


def engine_files(plan) -> dict[str, str]:
    """ds_config.json for ZeRO (what `launcher ds-config` writes for the job); nothing for FSDP2."""
    from launcher.render.deepspeed import render_ds_config

    return {rundir.DS_CONFIG: render_ds_config(plan.ds_config)} if plan.ds_config is not None else {}


def host_names(hosts: str) -> list[str]:
    names = [h.strip() for h in hosts.split(",") if h.strip()]
    if not names:
        raise JobError("--hosts: give at least one host name, e.g. --hosts node1,node2")
    return names


def hosts_launch_files(spec, device: str, names: Sequence[str], run_dir: Path):
    """(plan, files): one launch script per host, c10d on the first, for ssh/pdsh clusters."""
    from launcher.render.torchrun import default_torchrun, render_env, render_launch_script, render_torchrun_argv

    spec = spec.model_copy(update={"cluster": spec.cluster.model_copy(update={"nodes": len(names),
                                                                              "hosts": list(names)})})
    check_trackers_here(spec)
    fetch_hub(spec)  # on this node: the hosts share its Hugging Face cache, or fill theirs with launcher fetch
    spec, plan = plan_without_data(spec, device, cpu_count=os.cpu_count())
    endpoint = f"{names[0]}:{spec.cluster.master_port}"
    files = engine_files(plan)
    for i, host in enumerate(names):
        argv = render_torchrun_argv(plan, str(run_dir), rdzv_endpoint=endpoint, rdzv_id=run_dir.name,
                                    node_rank=str(i), local_addr=host, torchrun=default_torchrun(plan))
        finish = (str(rundir.RunDir(run_dir).completed),
                  [sys.executable, "-m", "launcher", "report", str(run_dir), "--finish"]) if i == 0 else None
        files[rundir.RunDir(run_dir).host_launch(i, host).name] = render_launch_script(argv, render_env(plan, run_dir=str(run_dir)),
                                                                     finish=finish)
    return plan, files


def slurm_files(spec, run_dir: str, *, python: str, extra_train_args: Sequence[str] = (),
                start_window_s: Optional[float] = None):
    """(plan, files) of a Slurm run: job.sbatch and the engine config. "auto" means the cluster's
    GPUs (this machine, a login node, says nothing about them); threads per rank on CPU come from
    the CPUs the job asks for per node, not from this machine. ``start_window_s`` (carbon-aware):
    the job begins at the start of least forecast CO2 within it (``#SBATCH --begin``)."""
    from launcher.render.slurm import render_sbatch

    check_trackers_here(spec)  # the nodes run this Python environment (sys.executable)
    spec, plan = plan_without_data(spec, resolve_device(spec), cpu_count=spec.cluster.slurm.cpus_per_task, here=False)
    if start_window_s is not None:
        plan = with_best_start(plan, start_window_s)
    script = render_sbatch(plan, run_dir, python=python, extra_train_args=list(extra_train_args))
    return plan, {**engine_files(plan), rundir.SBATCH: script}


def k8s_files(spec, run_name: str, *, flavor: str = "trainjob"):
    """(plan, files) of a Kubernetes run: k8s.yaml (a ConfigMap holding job.yaml, plan.json and the
    engine config, which the pods copy into the run directory on the claim, and the TrainJob or
    JobSet) and the engine config. The pods' paths are their own: nothing is made absolute here;
    the device is the cluster's (cuda unless cluster.device says cpu), threads per rank come from
    cluster.k8s.cpu."""
    from launcher.render.k8s import render_k8s

    device = "cpu" if spec.cluster.device == "cpu" else "cuda"
    cpus = None
    if device == "cpu" and spec.cluster.k8s.cpu:
        try:
            cpus = max(1, int(float(spec.cluster.k8s.cpu)))
        except ValueError:
            cpus = None  # millicores ("500m"): one thread per rank
    spec, plan = plan_without_data(spec, device, cpu_count=cpus, here=False, absolute=False)
    files = engine_files(plan)
    run_files = {**rundir.plan_files(plan), **files}
    return plan, {**files, rundir.K8S_YAML: render_k8s(plan, run_name, run_files, flavor)}
