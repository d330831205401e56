"""Per-job report: throughput, MFU, energy (CodeCarbon), CO2 and cost, from the run directory.

Public API (imports here stay light: no torch, matplotlib, rich, jinja2 or codecarbon until used;
every name loads on first use, so the plan can read ``hardware`` and ``flops`` without the rest):

    build_report(run_dir) -> dict                 the report dict (report.json)      build
    write_reports(run_dir, html=True) -> dict     report.json, .md, .html into the run dir
    read_or_build_report(run_dir) -> dict         report.json if there, else built
    what_changed(report) -> str | None            "what changed: eval loss ... -> ..."  format

Rooms (each reads files, or formats, never both):

    build.py    reads the run directory (typed plan and records, energy files), assembles the dict
    compute.py  the run's sections (job, status, throughput, loss): pure functions of Plan and records
    accounting.py  MFU, energy and cost sections: pure functions of those and the node summaries
    energy.py   reads and sums emissions/<node>.json|csv (the tracker: launcher.train.energy)
    series.py   reads what the plots draw: read_series, load_series, power_series
    format.py   numbers and labels for people, headline, summary sections, comparison columns
    plots.py    PNG plots of report dicts and series
    render.py   Markdown, HTML, table, CSV and comparisons (templates: launcher/templates/*.j2)
    flops.py, hardware.py   model FLOPs per token; accelerator peaks and the forecast's assumptions
    carbon.py   CodeCarbon's offline carbon intensity of a country (its data file, read without codecarbon)
    forecast.py forecast against actual (time, kWh, CO2, cost, peak memory) and --calibrate's figures
"""
from __future__ import annotations

from typing import Any

__all__ = ["build_report", "read_or_build_report", "what_changed", "write_reports"]


def __getattr__(name: str) -> Any:  # lazy re-exports
    mods = {
        "build_report": "report.build", "read_or_build_report": "report.build", "write_reports": "report.build",
        "what_changed": "report.format",
        "read_node_energy": "report.energy", "sum_energy": "report.energy",
        "NodeEnergyTracker": "train.energy", "job_gpu_ids": "train.energy", "default_node_name": "train.energy",
        "read_series": "report.series", "load_series": "report.series", "power_series": "report.series",
        "model_flops_per_token": "report.flops", "flops_per_token_from_config": "report.flops",
        "match_accelerator": "report.hardware", "ACCELERATORS": "report.hardware", "Accelerator": "report.hardware",
        "render_markdown": "report.render", "render_html": "report.render", "render_table": "report.render",
        "render_csv": "report.render", "render_compare_markdown": "report.render",
        "render_compare_html": "report.render", "render_compare_table": "report.render",
    }
    if name in mods:
        import importlib

        return getattr(importlib.import_module(f"launcher.{mods[name]}"), name)
    raise AttributeError(name)
