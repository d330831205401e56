"""Reading and summing the energy files of a run: no CodeCarbon here (the tracker that writes
them runs in the ranks: :mod:`launcher.train.energy`).

Each node writes

    emissions/<node>.csv   CodeCarbon's own output (one cumulative row per flush and at stop)
    emissions/<node>.json  our summary: energy (cpu/gpu/ram/total, kWh), emissions (kg CO2e),
                           duration, PUE, country, and how each figure was obtained

and the job's figures are the sum over the node files (:func:`read_node_energy`,
:func:`sum_energy`). Each component's label says how it was obtained; it starts with
"measured", "estimated", "none" or "unknown" (:func:`launcher.train.energy.measurement_labels`).

PUE
---
The tracker passes ``pue`` to CodeCarbon, which multiplies every component's power and energy
by it *before* summing (``BaseEmissionsTracker._do_measurements``), so its energy and the
emissions computed from it already include PUE. We therefore never multiply again: every
``energy_kwh`` here is facility energy (PUE included), ``it_energy_kwh = total / pue`` is the IT
energy, and the files say ``"pue_included": true``.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from launcher.rundir import RunDir

SCHEMA_VERSION = 1
COMPONENTS = ("cpu", "gpu", "ram")


def is_measured(label: Optional[str]) -> bool:
    return bool(label) and str(label).startswith("measured")


def num(x: Any) -> float:
    """A CSV or JSON field as a float: missing, unreadable or NaN -> 0.0."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return 0.0
    return v if v == v else 0.0  # NaN -> 0


def read_emissions_csv(path: Union[str, os.PathLike]) -> list[dict]:
    """Rows of a CodeCarbon CSV as dicts (numbers stay strings; use :func:`num`)."""
    p = Path(path)
    if not p.is_file():
        return []
    try:
        with p.open(newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error):
        return []


def session_from_row(row: dict) -> dict:
    """One tracker session (a CodeCarbon ``run_id``) from its last cumulative CSV row."""
    e = {c: num(row.get(f"{c}_energy")) for c in COMPONENTS}
    e["total"] = num(row.get("energy_consumed")) or sum(e.values())
    return {
        "run_id": row.get("run_id") or "",
        "duration_s": num(row.get("duration")),
        "energy_kwh": e,
        "emissions_kg": num(row.get("emissions")),
        "pue": num(row.get("pue")) or 1.0,
        "country_name": row.get("country_name") or None,
        "country_iso_code": row.get("country_iso_code") or None,
        "region": row.get("region") or None,
        "cpu_model": row.get("cpu_model") or None,
        "gpu_model": row.get("gpu_model") or None,
        "gpu_count": int(num(row.get("gpu_count"))),
        "timestamp": row.get("timestamp") or None,
    }


def merge_labels(labels: Sequence[str]) -> str:
    """One label for several sessions or nodes: the label if they agree, else "mixed: a / b"."""
    uniq = list(dict.fromkeys(lb for lb in labels if lb))
    if not uniq:
        return "unknown"
    return uniq[0] if len(uniq) == 1 else "mixed: " + " / ".join(uniq)


def node_summary(node: str, sessions: list[dict], extra: dict) -> dict:
    """A node's summary (the content of ``emissions/<node>.json``): its sessions summed."""
    energy = {c: sum(s["energy_kwh"].get(c, 0.0) for s in sessions) for c in (*COMPONENTS, "total")}
    pues = sorted({round(float(s.get("pue") or 1.0), 6) for s in sessions}) or [1.0]
    pue = pues[0] if len(pues) == 1 else None
    it = sum(s["energy_kwh"]["total"] / (s.get("pue") or 1.0) for s in sessions)
    measured = {c: merge_labels([s.get("measured", {}).get(c, "") for s in sessions]) for c in COMPONENTS}
    last = sessions[-1] if sessions else {}
    out = {
        "schema_version": SCHEMA_VERSION,
        "node": node,
        "energy_kwh": energy,
        "it_energy_kwh": it,
        "emissions_kg": sum(s.get("emissions_kg", 0.0) for s in sessions),
        "duration_s": sum(s.get("duration_s", 0.0) for s in sessions),
        "pue": pue,
        "pue_values": pues,
        "pue_included": True,
        "country_iso_code": last.get("country_iso_code"),
        "country_name": last.get("country_name"),
        "region": last.get("region"),
        "cpu_model": last.get("cpu_model"),
        "gpu_model": last.get("gpu_model"),
        "gpu_count": last.get("gpu_count"),
        "measured": measured,
        "final": all(s.get("final", False) for s in sessions) if sessions else False,
        "sessions": sessions,
    }
    out.update(extra)
    return out


def read_node_energy(run_dir: Union[str, os.PathLike]) -> list[dict]:
    """Every node's summary in ``emissions/``: the ``<node>.json`` files, plus a summary rebuilt
    from ``<node>.csv`` for a node whose tracker never wrote its JSON (labels "unknown")."""
    d = RunDir(run_dir).emissions
    if not d.is_dir():
        return []
    out: list[dict] = []
    seen: set[str] = set()
    for p in sorted(d.glob("*.json")):
        try:
            obj = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(obj, dict) or "energy_kwh" not in obj:
            continue
        obj.setdefault("node", p.stem)
        seen.add(p.stem)
        out.append(obj)
    for p in sorted(d.glob("*.csv")):
        if p.stem in seen:
            continue
        rows = read_emissions_csv(p)
        if not rows:
            continue
        last: dict[str, dict] = {}
        for r in rows:
            last[r.get("run_id") or ""] = r  # rows are cumulative per run_id: keep the last
        sessions = []
        for r in last.values():
            s = session_from_row(r)
            s["measured"] = {c: "unknown (no summary JSON: tracker never flushed or stopped)" for c in COMPONENTS}
            s["final"] = False
            sessions.append(s)
        out.append(node_summary(p.stem, sessions, {"rebuilt_from_csv": True}))
    return out


def sum_energy(nodes: Sequence[dict]) -> dict:
    """Job totals: the sum over node summaries (never re-applies PUE, see module doc)."""
    energy = {c: sum(num(n.get("energy_kwh", {}).get(c)) for n in nodes) for c in (*COMPONENTS, "total")}
    pues = sorted({round(float(p), 6) for n in nodes for p in (n.get("pue_values") or [n.get("pue") or 1.0])})
    return {
        "nodes": len(nodes),
        "node_names": [n.get("node") for n in nodes],
        "energy_kwh": energy,
        "it_energy_kwh": sum(num(n.get("it_energy_kwh", num(n.get("energy_kwh", {}).get("total"))
                                     / (n.get("pue") or 1.0))) for n in nodes),
        "emissions_kg": sum(num(n.get("emissions_kg")) for n in nodes),
        "duration_s": max((num(n.get("duration_s")) for n in nodes), default=0.0),
        "node_seconds": sum(num(n.get("duration_s")) for n in nodes),
        "pue": pues[0] if len(pues) == 1 else None,
        "pue_values": pues,
        "pue_included": True,
        "measured": {c: merge_labels([n.get("measured", {}).get(c, "") for n in nodes]) for c in COMPONENTS},
        "final": bool(nodes) and all(n.get("final", False) for n in nodes),
        "country_iso_code": merge_labels([n.get("country_iso_code") or "" for n in nodes]) if nodes else None,
        "region": merge_labels([n.get("region") or "" for n in nodes]) if any(n.get("region") for n in nodes) else None,
    }
