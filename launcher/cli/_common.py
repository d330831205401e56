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


def parse_window(text: str, param_hint: str = "'--start-window'") -> float:
    """Seconds from "24h", "90m", "2d", "3600s" or a bare number of hours."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise click.BadParameter(f"{text!r}: give a duration such as 24h, 90m or 2d", param_hint=param_hint)
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 3600}[m.group(2)]
