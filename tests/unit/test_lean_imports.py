"""A rank of a job that tracks nothing to MLflow does not import it (DeepSpeed does, at its own
import, wherever MLflow is installed: about 1 s per process); a job that tracks to it does."""
from __future__ import annotations

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
