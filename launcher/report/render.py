"""Render report dicts: Markdown, self-contained HTML (plots inlined as PNG), a terminal table,
CSV, and side-by-side comparisons of several runs.

Functions of the reports (:func:`launcher.report.build_report`) and of the plot series
handed in (:func:`launcher.report.series.read_series`): nothing here reads a file. Templates are
``launcher/templates/*.j2`` through the package's one Jinja environment
(:mod:`launcher.render.jinja`). Heavy imports (matplotlib, rich, jinja2) happen inside the
functions that need them.
"""
from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any, Optional, Sequence

from launcher.report.format import FOOTER, compare_rows, headline, run_label, summary_sections
from launcher.report.units import md_cell
from launcher.rundir.report_file import Report

if TYPE_CHECKING:
    from launcher.report.series import RunSeries

MD_TEMPLATE = "report.md.j2"
COMPARE_MD_TEMPLATE = "compare.md.j2"
HTML_TEMPLATE = "report.html.j2"
COMPARE_HTML_TEMPLATE = "compare.html.j2"


def _render(name: str, autoescape: bool, **context: Any) -> str:
    from launcher.render.jinja import template

    return template(name, autoescape=autoescape).render(**context)


def _title(report: Report) -> str:
    return f"{report.job.name} ({run_label(report)})"


# --------------------------------------------------------------------------- Markdown


def render_markdown(report: Report) -> str:
    sections = [(t, [(md_cell(a.strip()), md_cell(b)) for a, b in rows]) for t, rows in summary_sections(report)]
    return _render(MD_TEMPLATE, False, title=_title(report), status=report.status,
                   complete=report.complete, headline=headline(report), sections=sections,
                   notes=report.notes, footer=FOOTER)


def render_compare_markdown(reports: Sequence[Report]) -> str:
    headers, rows = compare_rows(reports)
    runs = [{"label": run_label(r), "status": r.status, "headline": headline(r)} for r in reports]
    return _render(COMPARE_MD_TEMPLATE, False, n=len(reports), headers=[md_cell(h) for h in headers],
                   rows=[[md_cell(c) for c in row] for row in rows], runs=runs, footer=FOOTER)


# --------------------------------------------------------------------------- terminal table and CSV


def _console(width: int) -> Any:
    from rich.console import Console

    return Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None,
                   highlight=False, emoji=False)


def _print_or_capture(renderables: list, console: Any, width: int) -> str:
    con = console or _console(width)
    for r in renderables:
        con.print(r)
    return con.file.getvalue() if console is None else ""


def render_table(report: Report, console: Any = None, width: int = 110) -> str:
    """A rich table of the report. Printed to ``console`` if given (colours), else returned as text."""
    from rich.table import Table
    from rich.text import Text

    status_style = "bold green" if report.complete else "bold yellow"
    table = Table(title=_title(report),
                  show_header=True, header_style="bold", expand=False)
    table.add_column("Section", style="cyan", no_wrap=True)
    table.add_column("Metric", no_wrap=True)
    table.add_column("Value")
    for title, rows in summary_sections(report):
        for i, (label, value) in enumerate(rows):
            v = Text(value, style=status_style) if label == "Status" else Text(value)
            table.add_row(title if i == 0 else "", label.strip(), v)
        table.add_section()
    items: list = [table, Text(headline(report))]
    for n in report.notes:
        items.append(Text(f"note: {n}", style="yellow"))
    return _print_or_capture(items, console, width)


def render_compare_table(reports: Sequence[Report], console: Any = None, width: int = 160) -> str:
    from rich.table import Table

    headers, rows = compare_rows(reports)
    table = Table(title=f"Comparison of {len(reports)} runs", header_style="bold")
    for h in headers:
        table.add_column(h, no_wrap=h in ("Run", "Status"))
    for row in rows:
        table.add_row(*row)
    return _print_or_capture([table], console, width)


CSV_FIELDS: list[tuple[str, tuple[str, ...]]] = [
    ("run_dir", ("run_dir",)), ("name", ("job", "name")), ("status", ("status",)), ("complete", ("complete",)),
    ("strategy", ("job", "strategy")), ("zero_stage", ("job", "zero_stage")), ("method", ("job", "method")),
    ("dtype", ("job", "dtype")), ("nodes", ("job", "nodes")), ("world_size", ("job", "world_size")),
    ("device", ("job", "device")), ("accelerator", ("job", "accelerator")),
    ("steps", ("throughput", "last_step")), ("tokens", ("throughput", "tokens")),
    ("samples", ("throughput", "samples")), ("padding_share", ("throughput", "padding_share")),
    ("tokens_per_s", ("throughput", "tokens_per_s")),
    ("tokens_per_s_per_device", ("throughput", "tokens_per_s_per_device")),
    ("tokens_per_s_wall", ("throughput", "tokens_per_s_wall")),
    ("samples_per_s", ("throughput", "samples_per_s")),
    ("step_time_median_s", ("throughput", "step_time_median_s")),
    ("step_time_p90_s", ("throughput", "step_time_p90_s")),
    ("steady_step_time_s", ("throughput", "steady_step_time_s")), ("warmup_s", ("throughput", "warmup_s")),
    ("time_to_first_step_s", ("throughput", "time_to_first_step_s")),
    ("wall_time_s", ("throughput", "wall_time_s")), ("device_hours", ("throughput", "device_hours")),
    ("mfu", ("mfu", "value")), ("mfu_reason", ("mfu", "reason")), ("flops_per_token", ("mfu", "flops_per_token")),
    ("energy_kwh", ("energy", "energy_kwh", "total")), ("energy_label", ("energy", "total_label")),
    ("cpu_kwh", ("energy", "energy_kwh", "cpu")), ("gpu_kwh", ("energy", "energy_kwh", "gpu")),
    ("ram_kwh", ("energy", "energy_kwh", "ram")), ("pue", ("energy", "pue")),
    ("emissions_kg", ("energy", "emissions_kg")), ("energy_per_token_j", ("energy", "energy_per_token_j")),
    ("gco2e_per_million_tokens", ("energy", "gco2e_per_million_tokens")),
    ("cost_total", ("cost", "total")), ("cost_per_million_tokens", ("cost", "per_million_tokens")),
    ("currency", ("cost", "currency")),
    ("first_train_loss", ("loss", "first_train_loss")), ("last_train_loss", ("loss", "last_train_loss")),
    ("min_train_loss", ("loss", "min_train_loss")), ("last_eval_loss", ("loss", "last_eval_loss")),
    ("last_accuracy", ("loss", "last_accuracy")), ("last_f1_macro", ("loss", "last_f1_macro")),
    ("general_ppl_before", ("forgetting", "before_ppl")), ("general_ppl_after", ("forgetting", "after_ppl")),
    ("forecast_time_s", ("forecast", "rows", "time_s", "forecast")),
    ("forecast_time_ratio", ("forecast", "rows", "time_s", "ratio")),
    ("forecast_kwh", ("forecast", "rows", "kwh", "forecast")), ("forecast_kwh_ratio", ("forecast", "rows", "kwh", "ratio")),
    ("forecast_kg_co2e", ("forecast", "rows", "kg_co2e", "forecast")),
    ("forecast_cost", ("forecast", "rows", "cost", "forecast")), ("forecast_cost_ratio", ("forecast", "rows", "cost", "ratio")),
    ("planned_peak_memory_bytes", ("forecast", "rows", "peak_memory_bytes", "forecast")),
    ("peak_memory_bytes", ("forecast", "rows", "peak_memory_bytes", "actual")),
    ("peak_memory_ratio", ("forecast", "rows", "peak_memory_bytes", "ratio")),
]


def render_csv(reports: Report | Sequence[Report]) -> str:
    """One row per run, raw numbers (no units, no rounding)."""
    if isinstance(reports, Report):
        reports = [reports]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([name for name, _ in CSV_FIELDS])
    for r in reports:
        row = []
        for _, path in CSV_FIELDS:
            cur: Any = r
            for p in path:  # attributes of the sections, keys of forecast.rows
                cur = cur.get(p) if isinstance(cur, dict) else getattr(cur, p, None)
            row.append("" if cur is None else cur)
        w.writerow(row)
    return buf.getvalue()


# --------------------------------------------------------------------------- HTML


def render_html(report: Report, series: Optional["RunSeries"] = None) -> str:
    """Self-contained HTML: CSS and PNG plots inlined (base64), no external resource. Without
    ``series`` the page has only the plots the report itself gives (energy by component)."""
    from launcher.report.plots import report_plots

    return _render(HTML_TEMPLATE, True, title=_title(report), status=report.status,
                   complete=report.complete, headline=headline(report),
                   sections=summary_sections(report), notes=report.notes,
                   plots=report_plots([report], [series]), footer=FOOTER)


def render_compare_html(reports: Sequence[Report], series: Optional[Sequence[Optional["RunSeries"]]] = None) -> str:
    """Several runs side by side, their plots overlaid (``series``: one per report, or None)."""
    from launcher.report.plots import report_plots

    series = list(series) if series is not None else [None] * len(reports)
    headers, rows = compare_rows(reports)
    runs = [{"label": run_label(r), "status": r.status, "complete": r.complete,
             "headline": headline(r)} for r in reports]
    return _render(COMPARE_HTML_TEMPLATE, True, n=len(reports), headers=headers, rows=rows, runs=runs,
                   plots=report_plots(reports, series), footer=FOOTER)
