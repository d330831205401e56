"""The job's energy from its nodes' files (:mod:`launcher.rundir.energy_file`): the sum over the
node summaries, never re-applying PUE (CodeCarbon applies it to every component before summing,
so every figure is facility energy). Each component's label says how it was obtained; it starts
with "measured", "estimated", "none" or "unknown" (:func:`launcher.train.codecarbon_labels.measurement_labels`).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from launcher.rundir import RunDir
from launcher.rundir.energy_file import COMPONENTS, EnergyKwh, Measured, NodeEnergy, merge_labels
from launcher.rundir.energy_file import read_node_energy as _read_folder


def is_measured(label: Optional[str]) -> bool:
    return bool(label) and str(label).startswith("measured")


def read_node_energy(run_dir: Union[str, os.PathLike]) -> list[NodeEnergy]:
    """Every node's summary of the run (``emissions/<node>.json``, or rebuilt from its CSV)."""
    return _read_folder(RunDir(run_dir).emissions)


def sum_energy(nodes: Sequence[NodeEnergy]) -> dict:
    """Job totals: the sum over node summaries (the fields of the report's energy section)."""
    energy = EnergyKwh(**{c: sum(n.energy_kwh.of(c) for n in nodes) for c in (*COMPONENTS, "total")})
    pues = sorted({round(float(p), 6) for n in nodes for p in (n.pue_values or [n.pue or 1.0])})
    return {
        "nodes": len(nodes),
        "node_names": [n.node for n in nodes],
        "energy_kwh": energy,
        "it_energy_kwh": sum(n.it_energy_kwh or n.energy_kwh.total / (n.pue or 1.0) for n in nodes),
        "emissions_kg": sum(n.emissions_kg for n in nodes),
        "duration_s": max((n.duration_s for n in nodes), default=0.0),
        "node_seconds": sum(n.duration_s for n in nodes),
        "pue": pues[0] if len(pues) == 1 else None,
        "pue_values": pues,
        "pue_included": True,
        "measured": Measured(**{c: merge_labels([n.measured.of(c) for n in nodes]) for c in COMPONENTS}),
        "final": bool(nodes) and all(n.final for n in nodes),
        "country_iso_code": merge_labels([n.country_iso_code for n in nodes]) if nodes else None,
        "region": merge_labels([n.region for n in nodes]) if any(n.region for n in nodes) else None,
    }
