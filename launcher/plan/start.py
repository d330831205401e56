"""When to start: the CO2 of a job's energy under an hourly grid-intensity forecast, and the start
within a window that gives the least. Pure functions of the series (``report.intensity_forecast``,
read by :func:`launcher.report.carbon.read_intensity_forecast`).

A series is a list of ``(UTC epoch seconds, gCO2e per kWh)`` sorted by time; each value holds from
its timestamp until the next one (the last for the series' usual spacing). The job's energy is
spread evenly over its duration, so its CO2 is ``kWh x`` the time-weighted mean intensity over
``[start, start + duration]``. That mean is piecewise linear in the start, so its least value
over a window is at the window's ends, or where the job's start or end meets a timestamp: those
are the only starts tried.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional, Sequence

from launcher.plan.types import BestStart

Series = Sequence[tuple[float, float]]


def spacing(series: Series) -> float:
    """The series' usual step (the median gap), 3600 s for a single value."""
    gaps = sorted(b[0] - a[0] for a, b in zip(series, series[1:]))
    return gaps[len(gaps) // 2] if gaps else 3600.0


def covers(series: Series, t0: float, t1: float) -> bool:
    return bool(series) and series[0][0] <= t0 and t1 <= series[-1][0] + spacing(series)


def mean_intensity(series: Series, t0: float, t1: float) -> Optional[float]:
    """The time-weighted mean gCO2e/kWh over ``[t0, t1]``; None where the series does not cover it."""
    if t1 <= t0:
        return series_at(series, t0)
    if not covers(series, t0, t1):
        return None
    end_of_last = series[-1][0] + spacing(series)
    total = 0.0
    for i, (t, g) in enumerate(series):
        nxt = series[i + 1][0] if i + 1 < len(series) else end_of_last
        overlap = min(t1, nxt) - max(t0, t)
        if overlap > 0:
            total += g * overlap
    return total / (t1 - t0)


def series_at(series: Series, t: float) -> Optional[float]:
    if not covers(series, t, t):
        return None
    return [g for ts, g in series if ts <= t][-1]


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def best_start(series: Series, now: float, duration_s: float, kwh: float, window_s: float,
               source: str) -> Optional[BestStart]:
    """The start in ``[now, now + window_s]`` of least CO2 for ``kwh`` spread over ``duration_s``;
    None when the series does not cover the job started now. Among equal starts, the earliest."""
    def kg(start: float) -> Optional[float]:
        g = mean_intensity(series, start, start + duration_s)
        return None if g is None else kwh * g / 1000.0

    now_kg = kg(now)
    if now_kg is None:
        return None
    candidates = {now, now + window_s}
    for t, _ in series:
        candidates.update((t, t - duration_s))
    candidates.add(series[-1][0] + spacing(series) - duration_s)
    best = (now_kg, now)
    for start in sorted(c for c in candidates if now <= c <= now + window_s):
        k = kg(start)
        if k is not None and k < best[0] - 1e-15:
            best = (k, start)
    return BestStart(at=iso(best[1]), at_epoch=best[1], kg_co2e=best[0], kg_co2e_now=now_kg,
                     saving_kg=now_kg - best[0], window_h=window_s / 3600.0, duration_h=duration_s / 3600.0,
                     source=source)


__all__ = ["best_start", "covers", "iso", "mean_intensity", "series_at", "spacing"]
