"""`launcher fetch`: a job's hub ids into the local Hugging Face cache, before any rank starts."""
from __future__ import annotations

import click

from launcher.cli._common import overrides_argument


@click.command()
@click.argument("job_file", required=False, type=click.Path())  # a job file or a run directory
@overrides_argument
def fetch(job_file, overrides):
    """Fetch the hub model, tokenizer and data set of JOB_FILE (a job file, or a run directory)
    into the local Hugging Face cache, and print their snapshot folders.

    `launcher run` does this itself before planning; a Slurm job's batch script runs it on the
    first node before srun. Run it by hand where there is network (a login node, with the cache the
    nodes share) when the nodes have none. With HF_HUB_OFFLINE=1 it only checks the cache."""

    from launcher import prepare, rundir
    from launcher.cli._common import load_job_or_default, split_job_file

    job_file, overrides = split_job_file(job_file, overrides)
    if job_file and rundir.is_run_dir(job_file):
        spec = rundir.read_plan(job_file).job
        if overrides:
            spec = load_job_or_default(str(rundir.RunDir(job_file).job_yaml), overrides)
    else:
        spec = load_job_or_default(job_file, overrides)
    found = prepare.fetch_hub(spec, echo=lambda line: click.echo(line, err=True))
    if not found:
        click.echo("nothing to fetch: the job names no hub id (model.path org/name, data.path hf://datasets/...)")
    for field, folder in found.items():
        click.echo(f"{field}: {folder}")
