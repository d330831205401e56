from __future__ import annotations

import sys

import click


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--preflight-only", is_flag=True, help="Join the process group, run the preflight check, exit.")
def train(run_dir, preflight_only):
    """Per-rank entry point: torchrun starts one per GPU (or CPU process) with RUN_DIR made by
    `launcher run` or `launcher slurm`. Resumes from the run's latest checkpoint by itself."""
    from launcher.train.entry import main

    rc = main(run_dir, preflight_only=preflight_only)
    if rc:
        sys.exit(rc)
