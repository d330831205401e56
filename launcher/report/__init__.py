"""Per-job report: throughput, MFU, energy (CodeCarbon), CO2 and cost, from the run directory.

Public API (imports here stay light: no torch, matplotlib, rich, jinja2 or codecarbon until used;
every name loads on first use):

    build_report(run_dir) -> Report               the report (report.json: launcher.rundir.Report)   build
    write_reports(run_dir, html=True) -> Report   report.json, .md, .html into the run dir
    read_or_build_report(run_dir) -> Report       report.json if there and readable, else built
    what_changed(report) -> str | None            "what changed: eval loss ... -> ..."  format

Rooms (each reads files, or formats, never both):

    build.py    reads the run directory (typed plan and records, energy files), assembles the Report
    compute.py  the run's sections (job, status, throughput, loss): pure functions of Plan and records
    accounting.py  MFU, energy and cost sections: pure functions of those and the node summaries
    faults.py   restarts, stragglers and Slurm's allocation
    energy.py   the nodes' energy files summed (the files: launcher.rundir.energy_file)
    series.py   reads what the plots draw: read_series, load_series, power_series
    format.py   numbers and labels for people, headline, one rows function per section, comparison columns
    plots.py    PNG plots of reports and series
    render.py   Markdown, HTML, table, CSV and comparisons (templates: launcher/templates/*.j2)
    carbon.py   CodeCarbon's offline carbon intensity of a country (its data file, read without codecarbon)
    forecast.py forecast against actual (time, kWh, CO2, cost, peak memory)
    history.py    the calibration history: each finished run's configuration and figures (--calibrate reads one run)
"""
from __future__ import annotations

from typing import Any

__all__ = ["build_report", "read_or_build_report", "what_changed", "write_reports"]


def __getattr__(name: str) -> Any:  # lazy re-exports
    mods = {
        "build_report": "report.build", "read_or_build_report": "report.build", "write_reports": "report.build",
        "what_changed": "report.format",
        "read_node_energy": "report.energy", "sum_energy": "report.energy",
        "read_series": "report.series", "load_series": "report.series", "power_series": "report.series",
        "render_markdown": "report.render", "render_html": "report.render", "render_table": "report.render",
        "render_csv": "report.render", "render_compare_markdown": "report.render",
        "render_compare_html": "report.render", "render_compare_table": "report.render",
    }
    if name in mods:
        import importlib

        return getattr(importlib.import_module(f"launcher.{mods[name]}"), name)
    raise AttributeError(name)
