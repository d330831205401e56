from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("path", required=False, default="job.yaml", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--task", type=click.Choice(["causal_lm", "classification"]), default="causal_lm", show_default=True,
              help="causal_lm: a 2-node, 8-GPU LoRA fine-tune on instruction data; classification: a one-node LoRA "
                   "classifier on text/label data.")
def init(path, force, task):
    """Write a commented starter job file to PATH (default job.yaml): a 2-node, 8-GPU LoRA job
    (or with --task classification, a LoRA text classifier), every key commented from the spec
    (docs/job-reference.md lists them all)."""
    from launcher.errors import JobError
    from launcher.jobdoc import render_starter
    from launcher.rundir import write_atomic

    if Path(path).exists() and not force:
        raise JobError(f"{path}: already exists; pass --force to overwrite it or choose another path")
    write_atomic(path, render_starter(path, task))
    click.echo(f"wrote {path}; next: launcher plan {path}")
