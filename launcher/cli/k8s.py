"""`launcher k8s`: render k8s.yaml (a ConfigMap and a TrainJob or JobSet) into a run directory and
optionally apply it with kubectl."""
from __future__ import annotations

import shlex
from pathlib import Path

import click

from launcher.cli._common import job_argument, overrides_argument


@click.command()
@job_argument
@overrides_argument
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Run directory here (default <output_dir>/<name>-<YYYYmmdd-HHMMSS>); the pods' is the same name "
                   "under cluster.k8s.mount_path.")
@click.option("--flavor", type=click.Choice(["trainjob", "jobset"]), default="trainjob", show_default=True,
              help="trainjob: Kubeflow Trainer v2 (trainer.kubeflow.org/v1alpha1); jobset: a JobSet "
                   "(jobset.x-k8s.io/v1alpha2) with launcher's failure policy.")
@click.option("--dry-run", is_flag=True, help="Print k8s.yaml; write and apply nothing.")
@click.option("--submit", is_flag=True, help="kubectl apply --dry-run=server, then kubectl apply.")
def k8s(job_file, overrides, run_dir, flavor, dry_run, submit):
    """Render JOB_FILE (default: the embedded demo job) with key.sub=value OVERRIDES into a run
    directory with k8s.yaml, and print how to apply it; --submit applies it with kubectl.

    One pod per node runs `launcher k8s-node`: the run directory on the shared claim, the
    rendezvous from the controller's environment, torchrun; SIGTERM makes the trainer checkpoint
    and the pod exit with the code the failure policy restarts on without spending a restart."""
    from launcher import prepare, rundir
    from launcher.cli._common import load_job_or_default
    from launcher.errors import JobError

    if dry_run and submit:
        raise JobError("--dry-run and --submit: choose one")
    spec = load_job_or_default(job_file, overrides)
    target = Path(run_dir).absolute() if run_dir else rundir.new_run_dir(spec)
    if not dry_run:
        rundir.check_writable(target, "--run-dir" if run_dir else "output_dir")
        if rundir.is_run_dir(target):
            raise JobError(f"{target}: already a run directory; choose a new --run-dir")
    if submit:
        from launcher.execute.k8s import check_kubectl

        check_kubectl()
    plan, files = prepare.k8s_files(spec, target.name, flavor=flavor)
    if dry_run:
        click.echo(files[rundir.K8S_YAML], nl=False)
        return
    rundir.write_run_dir(target, plan, files)
    manifest = rundir.RunDir(target).k8s_yaml
    if not submit:
        click.echo(f"wrote {target}")
        click.echo(f"apply with: kubectl apply -f {shlex.quote(str(manifest))}")
        return
    from launcher.execute.k8s import apply

    apply(manifest, plan.job.cluster.k8s.namespace)
    click.echo(f"applied {manifest}")
