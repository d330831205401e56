"""`launcher report`: throughput, MFU, energy, CO2 and cost of one run, or a comparison of several.

Only click is imported at module level: `launcher report --help` loads none of matplotlib,
codecarbon, rich or torch.
"""
from __future__ import annotations

import sys

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
    from pathlib import Path

    from launcher.errors import JobError
    from launcher.rundir import require_run_dir, write_atomic

    bad: list[str] = []
    for d in run_dirs:  # every folder that is not a run at once, one line each
        try:
            require_run_dir(d)
        except JobError as e:
            bad.extend(e.lines)
    if bad:
        raise JobError(*bad)
    if finish and (len(run_dirs) != 1 or no_write):
        raise JobError("--finish: give one RUN_DIR, without --no-write")
    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        _refresh_accounting(d)
    reports, html_cached = _reports(dirs, finish, write=len(dirs) == 1 and not no_write, html=fmt == "html")
    text = _render(reports, dirs, fmt, html_cached, to_terminal=output is None and sys.stdout.isatty())
    if text is None:
        return  # printed to the terminal
    if output:
        write_atomic(output, text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=not text.endswith("\n"))


def _reports(dirs, finish: bool, *, write: bool, html: bool):
    """(the reports of ``dirs``, report.html's text when it was just written and asked for). With
    ``finish``, the job's last step; with ``write``, the files of the one run (re)written."""
    from launcher.report.build import build_report
    from launcher.rundir import RunDir

    if finish:
        from launcher.execute.finish import finish_run

        done = finish_run(dirs[0], warn=lambda line: click.echo(line, err=True))
        return [done or build_report(dirs[0])], None
    if not write:
        return [build_report(d) for d in dirs], None
    from launcher.report import write_reports

    try:
        report = write_reports(dirs[0], html=True)
        return [report], RunDir(dirs[0]).report_html.read_text() if html else None
    except OSError as e:
        click.echo(f"warning: could not write the report files in {dirs[0]}: {e}", err=True)
        return [build_report(dirs[0])], None


def _render(reports, dirs, fmt: str, html_cached, *, to_terminal: bool):
    """The reports in ``fmt`` (several: side by side), or None when a table went to the terminal."""
    import json

    from launcher.report import render as R

    single = len(reports) == 1
    if fmt == "table":
        if to_terminal:
            from rich.console import Console

            con = Console()
            R.render_table(reports[0], console=con) if single else R.render_compare_table(reports, console=con)
            return None
        return R.render_table(reports[0]) if single else R.render_compare_table(reports)
    if fmt == "md":
        return R.render_markdown(reports[0]) if single else R.render_compare_markdown(reports)
    if fmt == "html":
        from launcher.report.series import read_series

        return html_cached or (R.render_html(reports[0], read_series(dirs[0])) if single
                               else R.render_compare_html(reports, [read_series(d) for d in dirs]))
    if fmt == "json":
        return json.dumps(reports[0].to_json() if single else [r.to_json() for r in reports], indent=2,
                          sort_keys=True) + "\n"
    return R.render_csv(reports)


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
