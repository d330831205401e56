"""Options shared by several commands."""
from __future__ import annotations

import click

# a folder is let through: `launcher run RUN_DIR` resumes a run; load_job says when it is no job file
job_argument = click.argument("job_file", required=False, type=click.Path())
overrides_argument = click.argument("overrides", nargs=-1)


def split_job_file(job_file, overrides) -> tuple:
    """(job file or None, overrides). ``launcher run a.b=1`` puts the first override where the
    job file goes: recognise it by its ``=`` when no such file exists."""
    import os

    if job_file is not None and "=" in job_file and not os.path.exists(job_file):
        return None, (job_file, *overrides)
    return job_file, tuple(overrides)


def load_job_or_default(job_file, overrides):
    """The job (or the embedded default) with overrides."""
    from launcher.spec import load_job

    job_file, overrides = split_job_file(job_file, overrides)
    return load_job(job_file, overrides)
