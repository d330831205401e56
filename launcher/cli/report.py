"""`launcher report`: throughput, MFU, energy, CO2 and cost of one run, or a comparison of several.

Only click is imported at module level: `launcher report --help` loads none of matplotlib,
codecarbon, rich or torch.
"""
from __future__ import annotations

import click

FORMATS = ("table", "md", "html", "json", "csv")


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR [RUN_DIR ...]")
@click.option("--format", "-f", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="Output format. Several runs give a side-by-side comparison.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write to this file (atomically) instead of the terminal.")
@click.option("--no-write", is_flag=True, default=False,
              help="With one run, do not (re)write report.json/.md/.html in its run directory.")
@click.option("--finish", is_flag=True, default=False,
              help="The job's last step, once per job (a Slurm job's batch script and a --hosts job's first "
                   "host run it): the report files, and the report's figures added to the job's tracker runs.")
def report(run_dirs: tuple[str, ...], fmt: str, output: str | None, no_write: bool, finish: bool) -> None:
    """Report what runs did and cost: tokens/s, MFU, kWh (measured or estimated), kgCO2e, money.

    With one RUN_DIR the report files in that folder are (re)written too. With several, the
    runs are compared side by side (strategy, ZeRO stage, nodes, tokens/s per device, MFU,
    kWh, kgCO2e, cost, cost per million tokens) and the plots overlaid.
    """
    import json
    import sys
    from pathlib import Path

    from launcher.errors import JobError
    from launcher.report.build import build_report
    from launcher.rundir import RunDir, require_run_dir, write_atomic

    bad: list[str] = []
    for d in run_dirs:  # every folder that is not a run at once, one line each
        try:
            require_run_dir(d)
        except JobError as e:
            bad.extend(e.lines)
    if bad:
        raise JobError(*bad)
    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        _refresh_accounting(d)

    html_cached: str | None = None
    if finish:
        if len(dirs) != 1 or no_write:
            raise JobError("--finish: give one RUN_DIR, without --no-write")
        from launcher.execute.finish import finish_run

        done = finish_run(dirs[0], warn=lambda line: click.echo(line, err=True))
        reports = [done or build_report(dirs[0])]
    elif len(dirs) == 1 and not no_write:
        from launcher.report import write_reports

        try:
            reports = [write_reports(dirs[0], html=True)]
            if fmt == "html":
                html_cached = RunDir(dirs[0]).report_html.read_text()
        except OSError as e:
            click.echo(f"warning: could not write the report files in {dirs[0]}: {e}", err=True)
            reports = [build_report(dirs[0])]
    else:
        reports = [build_report(d) for d in dirs]

    from launcher.report import render as R

    single = len(reports) == 1
    to_terminal = output is None and sys.stdout.isatty()
    if fmt == "table":
        if to_terminal:
            from rich.console import Console

            con = Console()
            R.render_table(reports[0], console=con) if single else R.render_compare_table(reports, console=con)
            return
        text = R.render_table(reports[0]) if single else R.render_compare_table(reports)
    elif fmt == "md":
        text = R.render_markdown(reports[0]) if single else R.render_compare_markdown(reports)
    elif fmt == "html":
        from launcher.report.series import read_series

        text = html_cached or (R.render_html(reports[0], read_series(dirs[0])) if single
                               else R.render_compare_html(reports, [read_series(d) for d in dirs]))
    elif fmt == "json":
        text = json.dumps(reports[0].to_json() if single else [r.to_json() for r in reports], indent=2, sort_keys=True) + "\n"
    else:
        text = R.render_csv(reports)

    if output:
        write_atomic(output, text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=not text.endswith("\n"))


def _refresh_accounting(run_dir) -> None:
    """A Slurm run's allocated time, asked of sacct again (the run may have ended since the
    trainer wrote its report). Best effort: without Slurm the report says so itself."""
    from launcher.errors import JobError
    from launcher.execute.status import stored_job_id

    job_id = stored_job_id(run_dir)
    if not job_id:
        return
    try:
        from launcher.execute.slurm import write_accounting

        write_accounting(run_dir, job_id)
    except (JobError, OSError):
        pass
