"""What a rank need not import.

* DeepSpeed imports MLflow at its own import time wherever MLflow is installed
  (``deepspeed.autotuning.autotuner``: ``try: import mlflow``), about 1 s per process on this
  machine, for an autotuner launcher never runs. A rank of a job whose ``report.trackers`` has no
  mlflow marks it absent for its own process (``sys.modules["mlflow"] = None``: an import raises
  ImportError, ``importlib.util.find_spec`` says None, as where it is not installed); a job that
  tracks to MLflow imports it as before.
* transformers imports SciPy's optimizers, and accelerate boto3, at their own import time wherever
  they are installed, for code a fine-tuning rank never runs (:data:`DEFERRED`).
  :func:`import_engines` imports the two with those modules absent, then gives them back: the
  engines skip them, and the job's own code (a remote model's module, a metric) imports them as
  usual afterwards.
* Imports make objects by the hundred thousand and free few of them: the cyclic collector walks
  them all again and again while they do (about an eighth of the CPU time of importing a rank's
  libraries here). :func:`no_collections` holds it off for the block.
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import sys
from typing import Iterable, Iterator

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


# module -> what imports it eagerly, for what a fine-tuning rank never runs
DEFERRED = {
    "scipy": "transformers.loss.loss_for_object_detection (linear_sum_assignment, DETR's matching)",
    "boto3": "accelerate.commands.config.sagemaker (the SageMaker config command)",
}


@contextlib.contextmanager
def absent(modules: Iterable[str]) -> Iterator[list[str]]:
    """Within the block, ``modules`` not yet imported are absent, as where they are not installed;
    after it they import as usual. Yields the names it marked."""
    marked = [m for m in modules if m not in sys.modules]
    for m in marked:
        sys.modules[m] = None
    try:
        yield marked
    finally:
        for m in marked:
            if m in sys.modules and sys.modules[m] is None:
                del sys.modules[m]


@contextlib.contextmanager
def no_collections() -> Iterator[None]:
    """No cyclic garbage collection within the block (as it was after it): for imports."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def import_engines() -> None:
    """Import transformers' modeling code and accelerate without :data:`DEFERRED`. Call before
    anything else imports them; a module missing here is left for its user to meet."""
    with absent(DEFERRED):
        for name in ("transformers.modeling_utils", "accelerate"):
            try:
                importlib.import_module(name)
            except ImportError:
                pass
