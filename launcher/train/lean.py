"""What a rank need not import. DeepSpeed imports MLflow at its own import time wherever MLflow is
installed (``deepspeed.autotuning.autotuner``: ``try: import mlflow``), about 1 s per process on
this machine, for an autotuner launcher never runs. A rank of a job whose ``report.trackers`` has
no mlflow marks it absent for its own process (``sys.modules["mlflow"] = None``: an import raises
ImportError, ``importlib.util.find_spec`` says None, as where it is not installed); a job that
tracks to MLflow imports it as before."""
from __future__ import annotations

import sys
from typing import Iterable

# tracker name -> the module some engine imports eagerly whether or not the job uses it
EAGER_TRACKER_MODULES = {"mlflow": "mlflow"}


def skip_unused_trackers(trackers: Iterable[str]) -> list[str]:
    """Mark the eagerly imported tracker modules the job does not use absent in this process;
    returns their names. Call before torch, DeepSpeed or transformers is imported."""
    used = set(trackers)
    skipped = []
    for tracker, module in EAGER_TRACKER_MODULES.items():
        if tracker not in used and module not in sys.modules:
            sys.modules[module] = None
            skipped.append(module)
    return skipped
