"""``emissions/<node>.json``: one node's energy summary, typed. The node's tracker writes it
(launcher.train.energy); the report reads it (launcher.report.energy).

Each node writes ``emissions/<node>.csv`` (CodeCarbon's own output: one cumulative row per flush
and at stop) and ``emissions/<node>.json`` (:class:`NodeEnergy`: energy by component, emissions,
duration, PUE, country, and how each figure was obtained, summed over the node's sessions).
CodeCarbon applies PUE to every component before summing, so every ``energy_kwh`` here is
facility energy (PUE included) and ``it_energy_kwh`` the IT energy.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

COMPONENTS = ("cpu", "gpu", "ram")
ENERGY_SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnergyKwh(_Model):
    """kWh by component and in all, PUE included (CodeCarbon applies it)."""

    cpu: float = 0.0
    gpu: float = 0.0
    ram: float = 0.0
    total: float = 0.0

    def of(self, component: str) -> float:
        return float(getattr(self, component))


class Measured(_Model):
    """How each component's energy was obtained: starts with "measured", "estimated", "none" or
    "unknown" (launcher.train.codecarbon_labels.measurement_labels)."""

    cpu: str = "unknown"
    gpu: str = "unknown"
    ram: str = "unknown"

    def of(self, component: str) -> str:
        return str(getattr(self, component))


class Session(_Model):
    """One tracker session (a CodeCarbon ``run_id``): an attempt of the job on this node."""

    run_id: str = ""
    duration_s: float = 0.0
    energy_kwh: EnergyKwh = Field(default_factory=EnergyKwh)
    emissions_kg: float = 0.0
    pue: float = 1.0
    country_name: Optional[str] = None
    country_iso_code: Optional[str] = None
    region: Optional[str] = None
    cpu_model: Optional[str] = None
    gpu_model: Optional[str] = None
    gpu_count: int = 0
    timestamp: Optional[str] = None
    start_time: Optional[float] = None
    end_time: Optional[float] = None
    measured: Measured = Field(default_factory=Measured)
    final: bool = False
    gpu_ids: Optional[list[Union[int, str]]] = None
    measure_power_secs: Optional[float] = None


class NodeEnergy(_Model):
    """The content of ``emissions/<node>.json``: the node's sessions, summed."""

    schema_version: int = ENERGY_SCHEMA_VERSION
    node: str
    energy_kwh: EnergyKwh = Field(default_factory=EnergyKwh)
    it_energy_kwh: float = 0.0
    emissions_kg: float = 0.0
    duration_s: float = 0.0
    pue: Optional[float] = None
    pue_values: list[float] = Field(default_factory=lambda: [1.0])
    pue_included: bool = True
    country_iso_code: Optional[str] = None
    country_name: Optional[str] = None
    region: Optional[str] = None
    cpu_model: Optional[str] = None
    gpu_model: Optional[str] = None
    gpu_count: Optional[int] = None
    measured: Measured = Field(default_factory=Measured)
    final: bool = False
    sessions: list[Session] = Field(default_factory=list)
    rebuilt_from_csv: bool = False  # no JSON was written: summed from CodeCarbon's CSV
    hostname: Optional[str] = None
    codecarbon_version: Optional[str] = None
    written_at: Optional[float] = None


def num(x: Any) -> float:
    """A CSV or JSON field as a float: missing, unreadable or NaN -> 0.0."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return 0.0
    return v if v == v else 0.0  # NaN -> 0


_NUMBERS = ("duration", "energy_consumed", "cpu_energy", "gpu_energy", "ram_energy", "emissions", "pue", "gpu_count")
_TEXTS = ("run_id", "timestamp", "country_name", "country_iso_code", "region", "cpu_model", "gpu_model")


class EmissionsRow(BaseModel):
    """One row of CodeCarbon's ``emissions/<node>.csv`` (cumulative per ``run_id``): the columns
    launcher reads. Missing, unreadable or NaN numbers read as 0; empty texts as None."""

    model_config = ConfigDict(extra="ignore")  # CodeCarbon writes more columns than these

    run_id: Optional[str] = None
    timestamp: Optional[str] = None
    duration: float = 0.0
    energy_consumed: float = 0.0
    cpu_energy: float = 0.0
    gpu_energy: float = 0.0
    ram_energy: float = 0.0
    emissions: float = 0.0
    pue: float = 0.0
    gpu_count: float = 0.0
    country_name: Optional[str] = None
    country_iso_code: Optional[str] = None
    region: Optional[str] = None
    cpu_model: Optional[str] = None
    gpu_model: Optional[str] = None

    @field_validator(*_NUMBERS, mode="before")
    @classmethod
    def _number(cls, v: Any) -> float:
        return num(v)

    @field_validator(*_TEXTS, mode="before")
    @classmethod
    def _text(cls, v: Any) -> Optional[str]:
        return None if v in (None, "") else str(v)


def read_emissions_csv(path: Union[str, os.PathLike]) -> list[EmissionsRow]:
    """The rows of a CodeCarbon CSV, in file order (none when it is missing or unreadable)."""
    p = Path(path)
    if not p.is_file():
        return []
    try:
        with p.open(newline="") as f:
            return [EmissionsRow.model_validate(r) for r in csv.DictReader(f)]
    except (OSError, csv.Error):
        return []


def session_from_row(row: EmissionsRow) -> Session:
    """One tracker session (a CodeCarbon ``run_id``) from its last cumulative CSV row, or from
    CodeCarbon's ``final_emissions_data`` read into an :class:`EmissionsRow`."""
    e = {c: getattr(row, f"{c}_energy") for c in COMPONENTS}
    return Session(
        run_id=row.run_id or "",
        duration_s=row.duration,
        energy_kwh=EnergyKwh(**e, total=row.energy_consumed or sum(e.values())),
        emissions_kg=row.emissions,
        pue=row.pue or 1.0,
        country_name=row.country_name,
        country_iso_code=row.country_iso_code,
        region=row.region,
        cpu_model=row.cpu_model,
        gpu_model=row.gpu_model,
        gpu_count=int(row.gpu_count),
        timestamp=row.timestamp,
    )


def merge_labels(labels: Sequence[Optional[str]]) -> str:
    """One label for several sessions or nodes: the label if they agree, else "mixed: a / b"."""
    uniq = list(dict.fromkeys(lb for lb in labels if lb))
    if not uniq:
        return "unknown"
    return uniq[0] if len(uniq) == 1 else "mixed: " + " / ".join(uniq)


def node_summary(node: str, sessions: list[Session], **extra: Any) -> NodeEnergy:
    """A node's summary (the content of ``emissions/<node>.json``): its sessions summed."""
    energy = EnergyKwh(**{c: sum(s.energy_kwh.of(c) for s in sessions) for c in (*COMPONENTS, "total")})
    pues = sorted({round(float(s.pue or 1.0), 6) for s in sessions}) or [1.0]
    last = sessions[-1] if sessions else Session()
    return NodeEnergy(
        node=node,
        energy_kwh=energy,
        it_energy_kwh=sum(s.energy_kwh.total / (s.pue or 1.0) for s in sessions),
        emissions_kg=sum(s.emissions_kg for s in sessions),
        duration_s=sum(s.duration_s for s in sessions),
        pue=pues[0] if len(pues) == 1 else None,
        pue_values=pues,
        country_iso_code=last.country_iso_code,
        country_name=last.country_name,
        region=last.region,
        cpu_model=last.cpu_model,
        gpu_model=last.gpu_model,
        gpu_count=last.gpu_count if sessions else None,
        measured=Measured(**{c: merge_labels([s.measured.of(c) for s in sessions]) for c in COMPONENTS}),
        final=all(s.final for s in sessions) if sessions else False,
        sessions=sessions,
        **extra,
    )


def read_node_file(path: Union[str, os.PathLike]) -> Optional[NodeEnergy]:
    """``emissions/<node>.json``, or None when it is missing, damaged or of another version."""
    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.setdefault("schema_version", ENERGY_SCHEMA_VERSION) != ENERGY_SCHEMA_VERSION:
            return None
        data.setdefault("node", Path(path).stem)
        return NodeEnergy.model_validate(data)
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


def read_node_energy(emissions: Union[str, os.PathLike]) -> list[NodeEnergy]:
    """Every node's summary in the ``emissions/`` folder: the ``<node>.json`` files, plus a
    summary rebuilt from ``<node>.csv`` for a node whose tracker never wrote its JSON (labels
    "unknown")."""
    d = Path(emissions)
    if not d.is_dir():
        return []
    out: list[NodeEnergy] = []
    seen: set[str] = set()
    for p in sorted(d.glob("*.json")):
        node = read_node_file(p)
        if node is not None:
            seen.add(p.stem)
            out.append(node)
    for p in sorted(d.glob("*.csv")):
        if p.stem in seen:
            continue
        rows = read_emissions_csv(p)
        if not rows:
            continue
        last: dict[str, EmissionsRow] = {}
        for r in rows:
            last[r.run_id or ""] = r  # rows are cumulative per run_id: keep the last
        unknown = "unknown (no summary JSON: tracker never flushed or stopped)"
        sessions = [session_from_row(r).model_copy(update={"measured": Measured(cpu=unknown, gpu=unknown, ram=unknown)})
                    for r in last.values()]
        out.append(node_summary(p.stem, sessions, rebuilt_from_csv=True))
    return out
