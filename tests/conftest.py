"""Shared pytest fixtures."""
from __future__ import annotations

# ============================================================================ Slurm test cluster
# `slurm_cluster`: a real 2-node Slurm (slurmctld, 2 x slurmd in UTS namespaces n1/n2, slurmdbd +
# MariaDB for sacct) on this machine, brought up once per session by tests/slurm/setup.sh (which
# apt-installs Debian's Slurm packages when missing) and stopped by tests/slurm/teardown.sh at the
# end of the session, unless it was already up before the session (then it is left as found) or
# LAUNCHER_KEEP_SLURM=1. Tests are skipped only when this machine cannot have Slurm (not root, or
# apt cannot install it); under CI (CI set) those cases fail instead, and a broken setup always fails.
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import missing_prerequisite

SLURM_SCRIPTS = Path(__file__).parent / "slurm"


@pytest.fixture(scope="session", autouse=True)
def launcher_cache(tmp_path_factory):
    """One LAUNCHER_CACHE for the session (every process the tests start inherits it): the demo's
    assets, the prepared data, the CPU probe and the calibration history are this session's, not
    the machine's, so a forecast in a test never scales from a run of another session."""
    cache = tmp_path_factory.mktemp("launcher-cache")
    old = os.environ.get("LAUNCHER_CACHE")
    os.environ["LAUNCHER_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("LAUNCHER_CACHE", None)
    else:
        os.environ["LAUNCHER_CACHE"] = old
SLURM_SETUP_NO_PACKAGES = 3  # setup.sh's exit status when apt-get could not install Slurm


def _slurm_unavailable(reason: str) -> None:
    missing_prerequisite(reason)


@pytest.fixture(scope="session")
def slurm_cluster():
    """Bring the test Slurm cluster up (or check it is up); yields its node names."""
    if os.geteuid() != 0:
        _slurm_unavailable("the test Slurm cluster needs root (tests/slurm/setup.sh starts Slurm's daemons)")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        _slurm_unavailable("Slurm is not installed and there is no apt-get to install it (Debian 12 expected)")
    nodes = int(os.environ.get("SLURM_CI_NODES", "2"))
    proc = subprocess.run(["bash", str(SLURM_SCRIPTS / "setup.sh")], capture_output=True, text=True, timeout=1200)
    out = (proc.stdout + proc.stderr)[-4000:]
    if proc.returncode == SLURM_SETUP_NO_PACKAGES:
        _slurm_unavailable(f"apt-get could not install Slurm:\n{out}")
    if proc.returncode != 0:
        pytest.fail(f"tests/slurm/setup.sh failed (exit {proc.returncode}):\n{out}", pytrace=False)
    was_up = "already up" in proc.stdout
    yield [f"n{i}" for i in range(1, nodes + 1)]
    if not was_up and not os.environ.get("LAUNCHER_KEEP_SLURM"):
        subprocess.run(["bash", str(SLURM_SCRIPTS / "teardown.sh")], capture_output=True, text=True, timeout=300)
# ============================================================================ end Slurm test cluster


# ============================================================================ two workers (xdist)
# The suite runs on 2 workers (pyproject's addopts: -n 2 --dist loadgroup), which fill the CPU
# that one run leaves idle (a single rank, a rank waiting on a timeout, Slurm's scheduler). A file
# is one unit of work, so its module fixtures (a run several tests read) train once; files that
# share machine-wide state share a unit: the two network namespaces and their fixed addresses.
# Units start longest first, so that no long file is left for the end on one worker.
#
# Two workers run up to 4 compute threads on the 2 cores. A run of one rank per node gets 2 threads
# (cluster.cpu_procs_per_node=1: torch's OpenMP), and libgomp's default wait policy spins at every
# parallel region's barrier while the peer thread waits for a core. Measured on 2 cores beside two
# busy single-thread processes, 60 steps of one 2-thread rank: 26.4 CPU-s and 18.3 s of steps as
# spun, 11.1 CPU-s and 5.9 s with OMP_WAIT_POLICY=PASSIVE (alone: 15.1 CPU-s and 4.7 s as spun,
# 7.0 s passive; so the product leaves it alone). Every process the tests start inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# This image sets PYTHONDONTWRITEBYTECODE=1: every process the suite starts (5 per `launcher run`)
# would compile launcher's modules from source again, and each worker pytest's rewritten tests.
# A user's Python caches them; so do the tests' processes.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
SHARED_UNITS = {"test_multinode.py": "netns", "test_k8s_pods.py": "netns"}
LONGEST_FIRST = ["test_train.py", "test_multinode.py", "test_k8s_pods.py", "test_scale.py", "test_faults.py",
                 "test_classification.py", "test_slurm.py", "test_ds_engine.py", "test_trackers.py"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: within a file, the order it was written in
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(SHARED_UNITS.get(item.path.name, item.path.name)))
# ============================================================================ end two workers
