"""A rank of a job that tracks nothing to MLflow does not import it (DeepSpeed does, at its own
import, wherever MLflow is installed: about 1 s per process); a job that tracks to it does. A rank
imports its libraries without SciPy and boto3 (which a job's own code still can import) and
without the cyclic collector's passes over what it imports."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

PROBE = """
import sys
from launcher.train.lean import skip_unused_trackers
print("skipped", skip_unused_trackers(sys.argv[1:]))
import deepspeed.autotuning.autotuner as a
print("has_mlflow", a.has_mlflow, "loaded", "mlflow.tracking" in sys.modules)
"""


@pytest.mark.slow  # imports DeepSpeed in a process of its own, twice
@pytest.mark.parametrize("trackers,skipped", [(["tensorboard"], True), (["mlflow"], False)])
def test_mlflow_is_left_out_of_a_rank_unless_the_job_tracks_to_it(trackers, skipped):
    pytest.importorskip("mlflow")
    out = subprocess.run([sys.executable, "-c", PROBE, *trackers], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    if skipped:
        assert "skipped ['mlflow']" in out.stdout and "has_mlflow False loaded False" in out.stdout, out.stdout
    else:
        assert "skipped []" in out.stdout and "has_mlflow True loaded True" in out.stdout, out.stdout


DEFERRED_PROBE = """
import gc, sys
collections = []
gc.callbacks.append(lambda phase, info: collections.append(info) if phase == "start" else None)
from launcher.train.lean import DEFERRED
from launcher.train.prestart import warm
collections.clear()
warm({"strategy": "zero", "zero_stage": 2, "method": "full", "model_type": "llama", "trackers": []})
print("collections while importing", len(collections), "enabled after", gc.isenabled())
import transformers.conversion_mapping as cm
print("renamings built", cm._checkpoint_conversion_mapping_cache is not None)
import transformers.loss.loss_utils, accelerate.utils
print("after engines", sorted(m for m in DEFERRED if m in sys.modules))
import scipy.optimize, boto3
print("job imports them", scipy.optimize.linear_sum_assignment is not None, boto3.__name__)
"""


@pytest.mark.slow  # imports a rank's libraries in a process of its own
def test_a_rank_imports_without_scipy_boto3_or_collections_and_a_job_still_can():
    """What a forked or prestarted rank imports (launcher.train.prestart.warm), with the cyclic
    collector held off and without SciPy and boto3, which the job's own code can import after;
    and transformers' table of checkpoint renamings, built before the ranks fork."""
    pytest.importorskip("scipy")
    pytest.importorskip("boto3")
    out = subprocess.run([sys.executable, "-c", DEFERRED_PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # hundreds with the collector on; a library's own gc.collect() still runs
    got = re.search(r"collections while importing (\d+) enabled after (\w+)", out.stdout)
    assert got and int(got.group(1)) <= 2 and got.group(2) == "True", out.stdout
    assert "renamings built True" in out.stdout, out.stdout  # before the fork: once per node, not per rank
    assert "after engines []" in out.stdout, out.stdout
    assert "job imports them True boto3" in out.stdout, out.stdout
