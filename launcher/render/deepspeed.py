"""ds_config.json from a Plan (or from a config dict built by plan.build_ds_config)."""
from __future__ import annotations

import json

from launcher.errors import JobError


def find_auto(obj, path: str = "") -> list[str]:
    """Paths of every "auto" value: none may reach DeepSpeed."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += find_auto(v, f"{path}.{k}" if path else k)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += find_auto(v, f"{path}[{i}]")
    elif obj == "auto":
        found.append(path)
    return found


def render_ds_config(ds_config: dict) -> str:
    autos = find_auto(ds_config)
    if autos:
        raise JobError(f"ds_config: unresolved 'auto' at {', '.join(autos)}")
    return json.dumps(ds_config, indent=2, sort_keys=True) + "\n"
