"""Preflight failures, each made for real on this machine (the two network namespaces' cases are
in test_multinode.py): a rank that does not arrive (stopped with SIGSTOP before it joins), and
library versions that differ between two torchrun agents (nodes) on this machine (one of them
sees another transformers distribution first on its path). Each is one line naming the node
and what differs, before any model loads, and nothing but logs is written past the launch files
and the tokenized-data cache."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launcher import rundir
from tests.helpers import fake_distribution, rank_pid

pytestmark = pytest.mark.slow

COMMON = ["train.max_steps=2", "data.num_samples=400", "train.eval_accuracy_samples=0", "cluster.device=cpu"]
TRAINED = (rundir.METRICS, rundir.CHECKPOINTS, rundir.FINAL, rundir.EMISSIONS, rundir.REPORT_JSON, rundir.COMPLETED)


def nothing_trained(run_dir: Path) -> None:
    made = [name for name in TRAINED if (run_dir / name).exists()]
    assert not made, f"a failed preflight wrote {made}"


def preflight_error(run_dir: Path) -> str:
    report = json.loads((run_dir / rundir.LOGS / rundir.PREFLIGHT_JSON).read_text())
    assert report["ok"] is False
    return report["error"]


def test_a_rank_that_does_not_arrive_is_named_and_the_run_exits_2(tmp_path):
    d = tmp_path / "late"
    timeout_s = 5

    def stop_rank_1():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pid = rank_pid(d, 1)
            if pid:
                os.kill(pid, signal.SIGSTOP)  # before it imports torch: it never reaches the store
                time.sleep(timeout_s + 4)
                os.kill(pid, signal.SIGCONT)
                return
            time.sleep(0.02)

    stopper = threading.Thread(target=stop_rank_1, daemon=True)
    stopper.start()
    out = subprocess.run([sys.executable, "-m", "launcher", "run", "--run-dir", str(d), *COMMON,
                          f"cluster.preflight_timeout_s={timeout_s}"], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    stopper.join(timeout=30)
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: preflight: rank(s) 1 (node rank 0) did not arrive within {timeout_s} s"), last
    assert "cluster.preflight_timeout_s" in last
    assert preflight_error(d) == last.removeprefix("error: ")
    nothing_trained(d)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_versions_that_differ_between_two_nodes_are_named(tmp_path):
    d = tmp_path / "mismatch"
    hosts = ["127.0.0.1", "127.0.0.2"]
    res = subprocess.run([sys.executable, "-m", "launcher", "run", "--hosts", ",".join(hosts), "--run-dir", str(d),
                          *COMMON, "cluster.cpu_procs_per_node=1", f"cluster.master_port={free_port()}"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    scripts = sorted(d.glob("launch-*.sh"))
    other = fake_distribution(tmp_path / "node1-site", "transformers", "0.0.0")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    node_env = [env, {**env, "PYTHONPATH": f"{other}{os.pathsep}{env.get('PYTHONPATH', '')}"}]
    procs = [subprocess.Popen(["bash", str(script)], env=e, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for script, e in zip(scripts, node_env)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode != 0 for p in procs), outs
    from importlib.metadata import version

    error = preflight_error(d)
    host = socket.gethostname()
    assert error.startswith("preflight: versions differ across ranks: transformers "), error
    assert (f"transformers {version('transformers')} on {host} (node 0, rank 0) vs 0.0.0 on {host} "
            f"(node 1, rank 1)") in error
    assert "install the same versions on every node" in error
    assert any(f"rank 0 failed: {error}" in o for o in outs), outs[0][-2000:]
    nothing_trained(d)
