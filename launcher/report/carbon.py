"""Carbon intensity of a country's electricity, from CodeCarbon's own offline data, read without
importing CodeCarbon (its import pulls pandas and more; `launcher plan` stays light).

CodeCarbon's offline tracker (``Emissions.get_country_emissions``, codecarbon/core/emissions.py)
takes ``data/private_infra/global_energy_mix.json`` and, for ``country_iso_code``, uses the entry's
``carbon_intensity`` (gCO2e/kWh) when it has one, else the mix of its sources weighted by
``carbon_intensity_per_source.json``; a country it does not know gets that file's
``world_average``. We do the same, so a forecast's kgCO2e per kWh matches what the run's tracker
will report for the same country (regional figures, ``report.region``, are not applied here).
"""
from __future__ import annotations

import importlib.util
import os
import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

MIX = Path("data") / "private_infra" / "global_energy_mix.json"
PER_SOURCE = Path("data") / "private_infra" / "carbon_intensity_per_source.json"


def codecarbon_dir() -> Optional[Path]:
    spec = importlib.util.find_spec("codecarbon")  # finds the package, runs none of it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=None)
def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _from_mix(mix: dict, per_source: dict) -> Optional[float]:
    total = mix.get("total_TWh")
    if not total:
        return None
    ci = counted = 0.0
    for key, twh in mix.items():
        if key.endswith("_TWh") and per_source.get(key[: -len("_TWh")]) is not None:
            ci += twh / total * per_source[key[: -len("_TWh")]]
            counted += twh
    return ci if counted == total else None  # CodeCarbon falls back to the world average then


def carbon_intensity(country_iso_code: str, root: Optional[Path] = None) -> tuple[Optional[float], str]:
    """(gCO2e per kWh, where it came from) for a country, as CodeCarbon's offline tracker computes
    it; (None, reason) when CodeCarbon's data is not installed."""
    root = root or codecarbon_dir()
    if root is None or not (root / MIX).is_file():
        return None, "CodeCarbon's data files not found (pip install codecarbon)"
    mix = _read(root / MIX)
    per_source = _read(root / PER_SOURCE) if (root / PER_SOURCE).is_file() else {}
    code = country_iso_code.upper()
    entry = mix.get(code)
    if entry is not None:
        if entry.get("carbon_intensity") is not None:
            year = f", {entry['year']}" if entry.get("year") else ""
            return float(entry["carbon_intensity"]), f"CodeCarbon global_energy_mix.json: {code}{year}"
        value = _from_mix(entry, per_source)
        if value is not None:
            return value, f"CodeCarbon global_energy_mix.json: {code}, from its energy sources"
    world = per_source.get("world_average")
    if world is None:
        return None, f"CodeCarbon has no figure for {code}"
    return float(world), f"CodeCarbon's world average ({code} not in its data)"


INTENSITY_COLUMNS = ("timestamp", "g_co2e_per_kwh")


def _utc_epoch(text: str) -> float:
    from datetime import datetime, timezone

    t = datetime.fromisoformat(text.strip())
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)  # the format's timestamps are UTC
    return t.timestamp()


def read_intensity_forecast(path: str | os.PathLike, field: str = "report.intensity_forecast") -> list[tuple[float, float]]:
    """The hourly intensity CSV (``timestamp,g_co2e_per_kwh``, ISO 8601 UTC) as ``(epoch s, g/kWh)``
    sorted by time. A missing file, another header or a bad row is one JobError naming the file and
    line."""
    import csv

    from launcher.errors import JobError

    p = Path(path).expanduser()
    fix = "columns timestamp,g_co2e_per_kwh, one row per hour, UTC (e.g. 2026-12-07T13:00:00Z,212.5)"
    try:
        with open(p, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise JobError(f"{field}: {p}: cannot read it ({e.strerror or e}); give a CSV with {fix}") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows or tuple(c.strip().lower() for c in rows[0][:2]) != INTENSITY_COLUMNS:
        raise JobError(f"{field}: {p}: line 1: the header must be timestamp,g_co2e_per_kwh; give a CSV with {fix}")
    out: dict[float, float] = {}
    for n, row in enumerate(rows[1:], start=2):
        try:
            t, g = _utc_epoch(row[0]), float(row[1])
        except (ValueError, IndexError):
            raise JobError(f"{field}: {p}: line {n}: {','.join(row)!r} is not a timestamp and a number; "
                           f"give a CSV with {fix}") from None
        if not g >= 0:
            raise JobError(f"{field}: {p}: line {n}: intensity {g} is negative; give gCO2e per kWh, 0 or more")
        out[t] = g
    if not out:
        raise JobError(f"{field}: {p}: no rows after the header; give a CSV with {fix}")
    return sorted(out.items())
