"""Pure derivations from a JobSpec: world size, batch arithmetic, steps, engine settings, memory.

No I/O and no torch: every function here is a function of its arguments, so `launcher plan`,
the renderers and the trainer see the same numbers and tests pin them exactly.

    batch.py     global = micro x accum x world, exactly
    schedule.py  steps per epoch, total steps, the LR multiplier
    engines.py   the DeepSpeed config and the FSDP2 settings
    memory.py    memory per device and per node (activations.py: activations and logits)
    forecast.py  steps, time, energy, CO2, cost and communication per step
    fit.py       the configurations that fit a GPU's memory, ranked by forecast throughput
    types.py     Plan, ModelInfo, MemoryPlan, Forecast (frozen pydantic models)
    core.py      plan_job
"""
from __future__ import annotations

from typing import Any

from launcher.plan.batch import Batch, resolve_batch
from launcher.plan.core import plan_job, procs_per_node, with_train_rows
from launcher.plan.engines import ZERO_DEFAULT_BUCKETS, FsdpSettings, build_ds_config, build_fsdp_settings, model_buckets
from launcher.plan.schedule import LrLambda, lr_factor, steps_per_epoch, total_steps
from launcher.plan.forecast import build_forecast, with_forecast
from launcher.plan.types import Calibration, Forecast, MemoryPlan, ModelInfo, Plan

__all__ = [
    "Batch", "Calibration", "Forecast", "FsdpSettings", "LrLambda", "MemoryPlan", "ModelInfo", "Plan",
    "ZERO_DEFAULT_BUCKETS", "build_ds_config", "build_forecast", "build_fsdp_settings", "lr_factor", "model_buckets",
    "plan_job", "procs_per_node", "read_model_info", "resolve_batch", "steps_per_epoch", "total_steps",
    "with_forecast", "with_train_rows",
]


def __getattr__(name: str) -> Any:
    if name == "read_model_info":  # builds the model on the meta device: imports torch when called
        from launcher.modelinfo import read_model_info

        return read_model_info
    raise AttributeError(name)
