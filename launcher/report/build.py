"""The report of one run, from its run directory alone (no torch, no plotting).

Inputs, each read through its typed reader: ``plan.json`` (:func:`launcher.rundir.read_plan`:
required, it is what makes a folder a run directory), ``metrics.jsonl``
(:func:`launcher.rundir.read_metrics`), ``emissions/<node>.json|csv``
(:func:`launcher.report.energy.read_node_energy`) and the ``COMPLETED`` marker. A running or
crashed job (no end record, a torn last line, no energy file) still gives a report, marked
incomplete. The arithmetic is in :mod:`launcher.report.compute`.

``report.json`` holds the :class:`launcher.rundir.Report` that :func:`build_report` returns;
:func:`write_reports` writes it with ``report.md`` and ``report.html``.
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Optional

from launcher.errors import JobError
from launcher.report import accounting as A
from launcher.report import compute as C
from launcher.report import faults as F
from launcher.report.energy import read_node_energy
from launcher.report.forecast import forecast_section
from launcher.rundir import (MemoryRecord, RunDir, StartRecord, read_metrics, read_plan, require_run_dir, write_atomic,
                             write_json)
from launcher.rundir.artifacts import DamagedFile, SlurmAccounting, read_model
from launcher.rundir.metrics import parse_metrics
from launcher.rundir.report_file import HourlyCo2, Report


def _torn_last_line(run_dir: Path) -> int:
    """1 when metrics.jsonl ends in a partial record (a job killed mid-write), else 0: that line
    is expected to be unreadable and is not worth a note."""
    try:
        text = RunDir(run_dir).metrics.read_text(errors="replace")
    except OSError:
        return 0
    if not text or text.endswith("\n"):
        return 0
    return parse_metrics(text.rsplit("\n", 1)[-1]).skipped


def _completed_forecast(plan, starts, notes: list[str]):
    """plan.json's forecast, completed where the plan could not know: the carbon intensity (from
    CodeCarbon's data, when the plan was made without it) and the GPU kind (the start record's,
    when the job names none)."""
    fc = plan.forecast
    if fc is None:
        return None
    detected = C.latest(starts, "accelerator") if starts and starts[-1].device == "cuda" else None
    redo: dict = {}
    if fc.carbon_intensity_g_per_kwh is None:
        from launcher.report.carbon import carbon_intensity

        ci, source = carbon_intensity(plan.job.report.country_iso_code)
        if ci is not None:
            redo.update(carbon_intensity=ci, carbon_source=source)
    if fc.hours is None and fc.calibration is None and detected and not plan.job.cluster.accelerator:
        redo["accelerator"] = detected
    if not redo:
        return fc
    from launcher.plan.forecast import with_forecast

    new = with_forecast(plan, **redo).forecast
    if "accelerator" in redo and new.hours is not None:
        notes.append(f"forecast: made at report time for the accelerator the run found ({detected})")
    return new


def _read_accounting(run_dir: Path, notes: list[str]) -> Optional[SlurmAccounting]:
    try:
        return read_model(SlurmAccounting, RunDir(run_dir).slurm_accounting, missing_ok=True)
    except DamagedFile as e:
        notes.append(f"{e}: Slurm's allocation left out")
        return None


def _read_pods(run_dir: Path, notes: list[str]) -> list[dict]:
    """The pods of a Kubernetes run (k8s_pods.jsonl); a torn line is left out, said in the notes."""
    import json

    f = RunDir(run_dir).k8s_pods
    if not f.is_file():
        return []
    pods = []
    for line in f.read_text().splitlines():
        try:
            p = json.loads(line)
            if isinstance(p, dict) and {"start", "end", "exit"} <= set(p):
                pods.append(p)
        except ValueError:
            notes.append(f"{f.name}: a line is not JSON: left out of the allocation")
    return pods


def build_report(run_dir: str | os.PathLike) -> Report:
    """The report of one run."""
    rd = Path(run_dir)
    plan = read_plan(rd)
    records = read_metrics(rd)
    starts = records.of(StartRecord)
    notes: list[str] = []
    if not records:
        notes.append("metrics.jsonl missing or empty: the job has not started training")
    elif not starts:
        notes.append("metrics.jsonl has no start record: world size and device from plan.json")
    unreadable = records.skipped - _torn_last_line(rd) if records.skipped else 0
    if unreadable > 0:
        notes.append(f"metrics.jsonl: {unreadable} line(s) unreadable (not JSON, or not a record this "
                     "launcher version knows) were left out of every figure")

    job = C.job_section(plan, starts)
    steps = C.train_steps(records)
    status, status_detail = C.status_section(RunDir(rd).completed.exists(), records, steps, job.planned_steps)
    thr = C.throughput_section(job, records, steps, notes)
    mfu = A.mfu_section(job, thr, A.flops_per_token(plan, starts, job, notes),
                        cpu=plan.forecast.cpu if plan.forecast else None)
    nodes = read_node_energy(rd)
    energy = A.energy_section(nodes, job, thr, notes)
    if plan.job.report.intensity_forecast and energy.available:
        energy = energy.model_copy(update={"hourly": _hourly(plan.job.report.intensity_forecast, nodes, energy)})
    pods = _read_pods(rd, notes)
    allocation = F.pods_allocation(pods, job, thr) if pods else F.allocation_section(_read_accounting(rd, notes), job,
                                                                                     thr)
    billed = thr.model_copy(update={"device_hours": allocation.device_hours}) if allocation.available else thr
    if allocation.available:
        notes.append("cost: compute priced on the allocated time (" + (
            "the pods' start to end, every attempt" if allocation.source == "pods" else "sacct, every attempt")
            + "), not the trainer's")
    cost = A.cost_section(plan.job.report, billed, energy, notes)
    forecast = forecast_section(_completed_forecast(plan, starts, notes), plan.memory, job.device, thr, energy,
                                cost, records.of(MemoryRecord))
    return Report(
        run_dir=str(rd.resolve()),
        generated_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        job=job,
        status=status,
        complete=status_detail.complete,
        status_detail=status_detail,
        throughput=thr,
        mfu=mfu,
        energy=energy,
        cost=cost,
        offset_cost=cost.offset.cost if cost.offset else None,
        forecast=forecast,
        loss=C.loss_section(records, steps),
        forgetting=C.forgetting_section(plan, records),
        checkpoints=C.checkpoints_section(records),
        restarts=F.restarts_section(records, thr),
        stragglers=F.stragglers_section(steps, records.of(MemoryRecord)),
        allocation=allocation,
        notes=notes,
    )


def _hourly(csv_path: str, nodes, energy) -> HourlyCo2:
    """The job's CO2 from the hours it ran, or why not (the CSV cannot be read)."""
    from launcher.report.carbon import read_intensity_forecast

    try:
        series = read_intensity_forecast(csv_path)
    except JobError as e:
        return HourlyCo2(source=csv_path, flat_kg_co2e=energy.emissions_kg, reason=e.lines[0])
    return A.hourly_co2(nodes, series, csv_path, energy.emissions_kg)


def read_or_build_report(run_dir: str | os.PathLike) -> Report:
    """The run's ``report.json`` when it is there and one this launcher reads, else the report
    built now (nothing written)."""
    rd = require_run_dir(run_dir)
    p = RunDir(rd).report_json
    if p.is_file():
        try:
            return Report.read(p)
        except JobError:
            pass  # damaged, or of another schema version: built again from the run's files
    return build_report(rd)


def write_reports(run_dir: str | os.PathLike, html: bool = True) -> Report:
    """Build the report and write ``report.json``, ``report.md`` and (unless ``html=False``)
    ``report.html`` into ``run_dir``, each atomically. Returns the report.

    The trainer calls this on global rank 0 after the final save (and after the node energy
    trackers stopped); ``launcher report RUN_DIR`` calls it again later to refresh."""
    from launcher.report.render import render_html, render_markdown

    rd = Path(run_dir)
    report = build_report(rd)
    paths = RunDir(rd)
    write_json(paths.report_json, report.to_json())
    write_atomic(paths.report_md, render_markdown(report))
    if html:
        from launcher.report.series import read_series

        write_atomic(paths.report_html, render_html(report, read_series(rd)))
    return report
