from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from launcher.cli._common import job_argument, overrides_argument


def latest_run_dir(spec) -> Path | None:
    from launcher.rundir import is_run_dir

    runs = [p for p in Path(spec.output_dir).glob(f"{spec.name}-*") if is_run_dir(p)]
    return max(runs, key=lambda p: p.stat().st_mtime).resolve() if runs else None


def prepare_run(spec, *, device: str, nproc: int | None, run_dir: Path, with_data: bool = True):
    """Resolve paths, build the demo assets, tokenize once (cached in RUN_DIR/cache, before any
    process group exists) and plan with the real row count."""
    from launcher.cli.plan import local_model_info
    from launcher.plan import plan_job
    from launcher.rundir import resolve_local_paths

    if nproc is not None:
        key = "gpus_per_node" if device == "cuda" else "cpu_procs_per_node"
        spec = spec.model_copy(update={"cluster": spec.cluster.model_copy(update={key: nproc})})
    spec = resolve_local_paths(spec)
    info = local_model_info(spec.model.path)
    plan = plan_job(spec, device=device, model_info=info, cpu_count=os.cpu_count())  # fail before any I/O
    train_rows = None
    if with_data:
        from transformers import AutoTokenizer

        from launcher.train.data import prepare_data
        from launcher.train.loop import resolve_paths

        _, tok_path, data_path = resolve_paths(spec)
        tok = AutoTokenizer.from_pretrained(tok_path, trust_remote_code=spec.model.trust_remote_code)
        prepared = prepare_data(spec, tok, data_path, run_dir / "cache")
        train_rows = len(prepared.train)
        plan = plan_job(spec, device=device, model_info=info, train_rows=train_rows, cpu_count=os.cpu_count())
    return spec, plan


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
def run(job_file, overrides, run_dir, resume, dry_run, nproc_per_node, device, hosts):
    """Fine-tune JOB_FILE (default: the embedded demo job) on this node under torchrun.

    Writes the run directory (resolved job, plan, DeepSpeed config, launch.sh), starts one
    process per GPU (gloo processes on CPU), streams logs to the terminal and RUN_DIR/logs, and
    exits with the job's status. Re-running on an existing run directory resumes it."""
    from launcher import rundir
    from launcher.cli._common import load_job_or_default
    from launcher.cli.plan import resolve_device
    from launcher.errors import JobError
    from launcher.render.torchrun import default_torchrun, render_env, render_launch_script, render_torchrun_argv

    if job_file and rundir.is_run_dir(job_file):  # `launcher run RUN_DIR` resumes that run
        run_dir, job_file = job_file, str(Path(job_file) / rundir.JOB_YAML)
    spec = load_job_or_default(job_file, overrides)
    dev = resolve_device(spec, device, probe=True)
    if dev == "cuda" and not hosts:
        import torch

        if not torch.cuda.is_available():
            raise JobError("cluster.device: cuda was asked for but this machine has no visible GPU; "
                           "use cluster.device=cpu (gloo) or auto")
    if run_dir is None and resume:
        found = latest_run_dir(spec)
        if found is None:
            raise JobError(f"--resume: no run of job {spec.name!r} under {spec.output_dir}/; start one without --resume")
        run_dir = found
    target = Path(run_dir).resolve() if run_dir else rundir.new_run_dir(spec)
    resuming = rundir.is_run_dir(target)
    if resuming and not job_file:
        spec = load_job_or_default(str(target / rundir.JOB_YAML), overrides)

    if hosts:
        return _render_hosts(spec, dev, nproc_per_node, target, hosts, dry_run)
    if dry_run:
        spec2, plan = prepare_run(spec, device=dev, nproc=nproc_per_node, run_dir=target, with_data=False)
        argv = render_torchrun_argv(plan, str(target), torchrun=default_torchrun())
        click.echo(render_launch_script(argv, render_env(plan)), nl=False)
        return

    try:
        spec, plan = prepare_run(spec, device=dev, nproc=nproc_per_node, run_dir=target)
    except BaseException:
        if not resuming:  # nothing half-made is left behind: only the tokenized-data cache was there
            import shutil

            shutil.rmtree(target, ignore_errors=True)
        raise
    argv = render_torchrun_argv(plan, str(target), torchrun=default_torchrun())
    env = render_env(plan)
    rundir.write_run_dir(target, spec, plan, {rundir.LAUNCH_SH: render_launch_script(argv, env)})
    click.echo(f"{'resuming' if resuming else 'run directory'}: {target}")
    click.echo(f"{plan.world_size} x {plan.device} ({plan.backend}), {plan.strategy}"
               f"{'-' + str(plan.zero_stage) if plan.zero_stage is not None else ''}, {plan.total_steps} steps of "
               f"{plan.global_batch_size} rows")
    from launcher.execute.local import launch_local

    rc = launch_local(argv, env, target)
    completed = (target / rundir.COMPLETED).exists()
    if completed and rc != 0:
        click.echo(f"note: torchrun exited {rc} after the job completed (COMPLETED marker written): "
                   "treating the job as successful", err=True)
        rc = 0
    if completed:
        _print_summary(target)
    elif (target / "PREEMPTED").exists():
        click.echo(f"stopped at a checkpoint; resume with: launcher run {shlex.quote(str(target))}", err=True)
    sys.exit(rc)


def _print_summary(run_dir: Path) -> None:
    import json

    from launcher import rundir
    from launcher.report import build_report
    from launcher.report.render import render_table

    try:
        path = run_dir / rundir.REPORT_JSON
        report = json.loads(path.read_text()) if path.exists() else build_report(run_dir)
        click.echo(render_table(report))
        evals = [r for r in rundir.read_metrics(run_dir) if r.get("kind") == "eval"]
        if len(evals) >= 2:
            first, last = evals[0], evals[-1]
            line = f"what changed: eval loss {first['eval_loss']:.4f} (step {first['step']}) -> {last['eval_loss']:.4f} (step {last['step']})"
            if first.get("accuracy") is not None and last.get("accuracy") is not None:
                line += f", task accuracy {first['accuracy']:.1%} -> {last['accuracy']:.1%}"
            click.echo(line)
    except Exception as e:  # the job succeeded; a summary problem must not change that
        click.echo(f"(summary unavailable: {e})", err=True)


def _render_hosts(spec, dev, nproc, target: Path, hosts: str, dry_run: bool) -> None:
    from launcher import rundir
    from launcher.errors import JobError
    from launcher.render.torchrun import default_torchrun, render_env, render_launch_script, render_torchrun_argv

    names = [h.strip() for h in hosts.split(",") if h.strip()]
    if len(names) < 1:
        raise JobError("--hosts: give at least one host name, e.g. --hosts node1,node2")
    spec = spec.model_copy(update={"cluster": spec.cluster.model_copy(update={"nodes": len(names), "hosts": names})})
    spec, plan = prepare_run(spec, device=dev, nproc=nproc, run_dir=target, with_data=False)
    endpoint = f"{names[0]}:{spec.cluster.master_port}"
    files = {}
    for i, host in enumerate(names):
        argv = render_torchrun_argv(plan, str(target), rdzv_endpoint=endpoint, rdzv_id=target.name, node_rank=str(i),
                                    local_addr=host, torchrun=default_torchrun())
        files[f"launch-{i}-{_safe(host)}.sh"] = render_launch_script(argv, render_env(plan))
    if dry_run:
        for name, text in files.items():
            click.echo(f"# {name}\n{text}")
        return
    rundir.write_run_dir(target, spec, plan, files)
    click.echo(f"run directory: {target}")
    for i, (name, _) in enumerate(files.items()):
        click.echo(f"  on {names[i]}: bash {shlex.quote(str(target / name))}")


def _safe(host: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in host)
