"""How CodeCarbon obtains each component's energy: measured or estimated, read from a started
tracker.

Measured or estimated (CodeCarbon 3.x)
--------------------------------------
CodeCarbon picks one backend per component when the tracker starts and keeps the objects in
``tracker._hardware`` (``RAM``, ``CPU``, ``GPU``, ``AppleSiliconChip``, ``Raspberry``); we
read them after ``start()``:

* CPU: ``CPU._mode`` is ``"intel_rapl"`` (Linux RAPL energy counters under
  ``/sys/class/powercap/intel-rapl``), ``"windows_emi"`` or ``"intel_power_gadget"`` ->
  *measured*; ``"cpu_load"`` (TDP of the detected model x psutil CPU load, floor 10% of TDP) or
  ``"constant"`` (a fixed share of TDP) -> *estimated*. Apple ``powermetrics`` and the
  Raspberry Pi PMIC are measured.
* GPU: ``GPU.devices.devices`` are NVML (NVIDIA) or AMD SMI devices; a device whose total-energy
  counter could be read (``_has_counter`` and not ``_use_power_fallback``) is *measured
  (energy counter)*; otherwise CodeCarbon integrates NVML power readings (still measured, less
  exact). No GPU object -> no GPU figure.
* RAM: always a model (``RAM()``: a power per GB/DIMM estimate, or ``force_ram_power``) ->
  *estimated*, except on a Raspberry Pi.

These are private attributes; if a future CodeCarbon renames them the label becomes
"unknown (...)" rather than a wrong claim. Each label starts with "measured", "estimated",
"none" or "unknown".
"""
from __future__ import annotations

import logging
from typing import Any

from launcher.rundir.energy_file import COMPONENTS

log = logging.getLogger(__name__)


def _hw_kind(hw: Any) -> str:
    return type(hw).__name__


def measurement_labels(tracker: Any) -> dict[str, str]:
    """How CodeCarbon obtains each component's energy, from a *started* tracker (see module doc)."""
    labels = {"cpu": "none (no CPU tracked)", "gpu": "none (no GPU tracked)", "ram": "none (no RAM tracked)"}
    try:
        hardware = list(getattr(tracker, "_hardware"))
    except Exception:  # noqa: BLE001 - private API changed
        return {c: "unknown (CodeCarbon internals not recognised)" for c in COMPONENTS}
    for hw in hardware:
        kind = _hw_kind(hw)
        try:
            if kind == "CPU":
                mode = getattr(hw, "_mode", None)
                forced = getattr(tracker, "_force_cpu_power", None) is not None
                labels["cpu"] = {
                    "intel_rapl": "measured (RAPL)",
                    "windows_emi": "measured (Windows EMI / RAPL)",
                    "intel_power_gadget": "measured (Intel Power Gadget)",
                    "cpu_load": "estimated (user-given CPU power x CPU load)" if forced
                    else "estimated (TDP x CPU load)",
                    "constant": "estimated (user-given CPU power)" if forced else "estimated (TDP constant)",
                }.get(mode, f"unknown (CodeCarbon CPU mode {mode!r})")
            elif kind == "GPU":
                devices = list(getattr(hw.devices, "devices", []))
                ids = getattr(hw, "gpu_ids", None)
                if ids is not None:
                    devices = [d for d in devices if getattr(d, "gpu_index", None) in ids]
                if not devices:
                    labels["gpu"] = "none (no GPU tracked)"
                    continue
                backend = "AMD SMI" if any("AMD" in type(d).__name__ for d in devices) else "NVML"
                counters = all(getattr(d, "_has_counter", False) and not getattr(d, "_use_power_fallback", True)
                               for d in devices)
                labels["gpu"] = (f"measured ({backend} energy counter)" if counters
                                 else f"measured ({backend} power readings, integrated)")
            elif kind == "RAM":
                forced = getattr(hw, "_force_ram_power", None) is not None
                labels["ram"] = "estimated (user-given RAM power)" if forced else "estimated (RAM power model)"
            elif kind == "AppleSiliconChip":
                part = getattr(hw, "chip_part", "").lower()
                if part in ("cpu", "gpu"):
                    labels[part] = "measured (powermetrics)"
            elif kind == "Raspberry":
                part = getattr(hw, "chip_part", "").lower()
                if part in ("cpu", "ram"):
                    labels[part] = "measured (Raspberry Pi PMIC)"
        except Exception as e:  # noqa: BLE001
            log.debug("energy: cannot classify %s: %s", kind, e)
    return labels
