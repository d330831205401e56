"""Forecast against actual: what the plan said before the run (plan.json's ``forecast`` and
``memory``) next to what the run measured, with the ratio actual / forecast. Pure: a function of
the Plan, the report's throughput, energy and cost sections and the run's memory records
(:class:`launcher.rundir.MemoryRecord`); :mod:`launcher.report.build` reads them.

* Time compares the training steps only: the forecast's step time x the steps done against the
  sum of the measured step times (setup, evaluation and checkpoints are outside both).
* kWh, kgCO2e and cost compare the forecast for the steps done (the job's forecast x steps done /
  planned steps) with the run's totals, which also hold setup, evaluation and checkpoints.
* Peak memory per device: on GPUs the plan's total less its CUDA context against the largest
  ``cuda_max_reserved_bytes`` of any rank (what the caching allocator held); on CPU the plan's
  total against the largest ``rss_anon_peak_bytes - rss_anon_baseline_bytes`` (the rank's growth
  over its libraries). No memory record: n/a.
"""
from __future__ import annotations

from typing import Optional, Sequence

from launcher.plan.memory import CUDA_CONTEXT_BYTES
from launcher.plan.types import Forecast, MemoryPlan
from launcher.rundir import MemoryRecord
from launcher.rundir.report_file import Cost, Energy, ForecastCheck, ForecastRow, Throughput


def _ratio(actual: Optional[float], forecast: Optional[float]) -> Optional[float]:
    if actual is None or forecast is None or forecast == 0:
        return None
    return actual / forecast


def peak_memory(records: Sequence[MemoryRecord], device: str) -> tuple[Optional[int], Optional[int], str]:
    """(largest peak over ranks, its rank, what was measured) from the last memory record (the
    "end" record when there is one: peaks over the whole run)."""
    if not records:
        return None, None, "no memory record in metrics.jsonl"
    ends = [r for r in records if r.phase == "end"]
    rec = (ends or list(records))[-1]
    best = None
    for rm in rec.ranks:
        if device == "cuda":
            v = rm.cuda_max_reserved_bytes
        else:
            v = rm.rss_anon_peak_bytes - rm.rss_anon_baseline_bytes
        if v is not None and (best is None or v > best[0]):
            best = (v, rm.rank)
    what = ("cuda_max_reserved_bytes" if device == "cuda" else "rss_anon_peak - baseline") + f" ({rec.phase})"
    return (best[0], best[1], what) if best else (None, None, what)


def forecast_section(forecast: Optional[Forecast], memory: Optional[MemoryPlan], device: str, thr: Throughput,
                     energy: Energy, cost: Cost, memory_records: Sequence[MemoryRecord]) -> ForecastCheck:
    rows: dict[str, ForecastRow] = {}
    done = thr.steps
    f = forecast
    share = (done / f.steps) if (f and f.steps) else None

    def row(name: str, fc: Optional[float], actual: Optional[float], unit: str, note: str = "") -> None:
        rows[name] = ForecastRow(forecast=fc, actual=actual, ratio=_ratio(actual, fc), unit=unit, note=note)

    warm = f.warmup_s if f else None
    row("time_s", f.step_time_s * done + (warm or 0.0) if (f and f.step_time_s is not None and done) else None,
        thr.step_time_sum_s, "s", f"{done} training steps" + (" and the first one's warm-up" if warm else ""))
    kwh = energy.energy_kwh.total if energy.available else None
    row("kwh", f.kwh * share if (f and f.kwh is not None and share is not None) else None, kwh, "kWh")
    row("kg_co2e", f.kg_co2e * share if (f and f.kg_co2e is not None and share is not None) else None,
        energy.emissions_kg if energy.available else None, "kg")
    row("cost", f.cost * share if (f and f.cost is not None and share is not None) else None,
        cost.total if cost.available else None, f.currency if f else cost.currency)
    peak, rank, what = peak_memory(memory_records, device)
    planned = None
    if memory is not None:
        planned = memory.per_device_bytes.total - (CUDA_CONTEXT_BYTES if device == "cuda" else 0)
    row("peak_memory_bytes", planned, peak, "bytes", what + (f", rank {rank}" if rank is not None else ""))
    return ForecastCheck(available=f is not None or memory is not None, steps_done=done,
                         steps_forecast=f.steps if f else None,
                         calibrated_from=f.calibration.run_dir if (f and f.calibration) else None,
                         calibration_source=f.calibration.source if (f and f.calibration) else None,
                         calibration_distance=f.calibration.distance if (f and f.calibration) else None,
                         rows=rows, missing=list(f.missing) if f else ["plan.json has no forecast"])
