"""Per-job report: throughput, MFU, energy (CodeCarbon), CO2 and cost, from the run directory.

Public API (imports here stay light: no torch, matplotlib or codecarbon until used):

    write_reports(run_dir) -> dict        report.json, report.md, report.html into the run dir
    build_report(run_dir) -> dict         launcher.report.build
    NodeEnergyTracker, read_node_energy, sum_energy      launcher.report.energy
    model_flops_per_token, flops_per_token_from_config  launcher.report.flops
    match_accelerator, ACCELERATORS                      launcher.report.hardware
    render_markdown, render_html, render_table, render_csv, render_compare_*  launcher.report.render
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from launcher.report.build import build_report

__all__ = ["write_reports", "build_report"]


def write_reports(run_dir: str | os.PathLike, html: bool = True) -> dict:
    """Build the report and write ``report.json``, ``report.md`` and (unless ``html=False``)
    ``report.html`` into ``run_dir``, each atomically. Returns the report dict.

    The trainer calls this on global rank 0 after the final save (and after the node energy
    trackers stopped); ``launcher report RUN_DIR`` calls it again later to refresh."""
    from launcher.report.render import render_html, render_markdown
    from launcher.rundir import REPORT_HTML, REPORT_JSON, REPORT_MD, write_atomic, write_json

    rd = Path(run_dir)
    report = build_report(rd)
    write_json(rd / REPORT_JSON, report)
    write_atomic(rd / REPORT_MD, render_markdown(report))
    if html:
        write_atomic(rd / REPORT_HTML, render_html(report, rd))
    return report


def __getattr__(name: str) -> Any:  # lazy re-exports
    mods = {
        "NodeEnergyTracker": "energy", "read_node_energy": "energy", "sum_energy": "energy",
        "job_gpu_ids": "energy", "default_node_name": "energy",
        "model_flops_per_token": "flops", "flops_per_token_from_config": "flops",
        "match_accelerator": "hardware", "ACCELERATORS": "hardware", "Accelerator": "hardware",
        "render_markdown": "render", "render_html": "render", "render_table": "render", "render_csv": "render",
        "render_compare_markdown": "render", "render_compare_html": "render", "render_compare_table": "render",
    }
    if name in mods:
        import importlib

        return getattr(importlib.import_module(f"launcher.report.{mods[name]}"), name)
    raise AttributeError(name)
