"""The pods of a Kubernetes run, executed as a cluster would run them, without a cluster.

`launcher k8s --flavor jobset` renders the manifest. Each "pod" is one network namespace (joined to
the other by a veth pair, as in test_multinode), running exactly the container's command, working
directory and environment from the rendered pod spec, plus what the cluster adds: the Indexed Job's
``JOB_COMPLETION_INDEX``, the pod's hostname (a UTS namespace of its own, as a pod has), the
headless service's hostnames (``/etc/netns/<ns>/hosts``, which ``ip netns exec`` binds over
/etc/hosts), the ConfigMap's files at the mount (a folder here), and the claim (a folder both pods
share). Two pods, one CPU rank each.

Checked: the job completes with the losses of a single-node run of the same job; SIGTERM to one
pod (what the kubelet sends on preemption or a drain) gives a checkpoint within the pod's grace
period and, on both pods, the exit code the failure policy restarts on without spending a restart;
starting both pods again (the JobSet's restart) resumes and finishes with every step once.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from launcher import rundir
from tests.integration.test_multinode import netns_pair  # noqa: F401 - the fixture
from tests.helpers import launcher_ok

pytestmark = pytest.mark.slow

RTOL = 1e-4
COMMON = ("cluster.device=cpu", "train.max_steps=24", "data.num_samples=400", "train.eval_accuracy_samples=0",
          "train.save_every_steps=100", "train.global_batch_size=8", "train.micro_batch_size=2",
          "parallel.strategy=zero", "parallel.zero_stage=2", "train.eval_every_steps=1000")
TIMEOUT_S = 300


def train_records(run_dir: Path) -> list[dict]:
    if not (run_dir / rundir.METRICS).exists():
        return []
    recs = [json.loads(x) for x in (run_dir / rundir.METRICS).read_text().splitlines() if x.strip()]
    return [r for r in recs if r["kind"] == "train"]


class Cluster:
    """The manifest's pods, each in its namespace, on a shared claim."""

    def __init__(self, root: Path, nodes, name: str):
        self.root, self.nodes = root, nodes
        self.claim = root / "claim"
        self.claim.mkdir(parents=True, exist_ok=True)
        local = root / f"rendered-{name}"
        launcher_ok(root, "k8s", "--flavor", "jobset", "--run-dir", str(local), *COMMON, "cluster.nodes=2",
                 "cluster.cpu_procs_per_node=1", "cluster.k8s.image=launcher:test", "cluster.k8s.pvc=claim",
                 f"cluster.k8s.mount_path={self.claim}", "output_dir=runs", f"name={name}")
        self.cm, self.jobset = yaml.safe_load_all((local / rundir.K8S_YAML).read_text())
        self.files = root / f"configmap-{name}"  # what the kubelet mounts from the ConfigMap
        self.files.mkdir()
        for key, text in self.cm["data"].items():
            (self.files / key).write_text(text)
        self.pod = self.jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
        self.grace = self.pod["terminationGracePeriodSeconds"]
        container = self.pod["containers"][0]
        self.command, self.workdir = container["command"], container["workingDir"]
        self.env = {e["name"]: e["value"] for e in container["env"]}
        self.run_dir = Path(self.command[-1])
        js = self.jobset["metadata"]["name"]
        self.hostnames = [f"{js}-node-0-{i}" for i in range(2)]
        for (ns, _, addr), host in zip(nodes, self.hostnames):
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text("127.0.0.1 localhost\n" + "".join(
                f"{a} {h}.{js} {h}\n" for (_, _, a), h in zip(nodes, self.hostnames)))

    def start(self) -> list[subprocess.Popen]:
        procs = []
        for i, (ns, veth, _) in enumerate(self.nodes):
            env = {**os.environ, **self.env, "JOB_COMPLETION_INDEX": str(i), "LAUNCHER_RUN_FILES": str(self.files),
                   "GLOO_SOCKET_IFNAME": veth,
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
            log = open(self.root / f"pod-{i}.log", "ab")
            # the pod's own hostname, then exec the container's command: its PID is the one signalled
            pod = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', self.hostnames[i],
                   *self.command]
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns, *pod], cwd=self.workdir, env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
            log.close()
        return procs

    def logs(self) -> str:
        return "\n".join(f"--- pod {i}\n{(self.root / f'pod-{i}.log').read_text(errors='replace')[-3000:]}"
                         for i in range(2) if (self.root / f"pod-{i}.log").exists())

    def wait(self, procs, timeout: float = TIMEOUT_S) -> list[int]:
        deadline = time.monotonic() + timeout
        try:
            return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
        except subprocess.TimeoutExpired:
            pytest.fail(f"the pods did not finish in {timeout} s:\n{self.logs()}", pytrace=False)
        finally:
            from tests.integration.test_multinode import _kill_namespace_procs

            if any(p.poll() is None for p in procs):
                for ns, _, _ in self.nodes:
                    _kill_namespace_procs(ns)

    def close(self) -> None:
        for ns, _, _ in self.nodes:
            (Path("/etc/netns") / ns / "hosts").unlink(missing_ok=True)
            try:
                (Path("/etc/netns") / ns).rmdir()
            except OSError:
                pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same job on one node, two ranks."""
    root = tmp_path_factory.mktemp("k8s-reference")
    d = root / "single"
    launcher_ok(root, "run", "--run-dir", str(d), *COMMON, "cluster.cpu_procs_per_node=2")
    return [r["loss"] for r in train_records(d)]


def test_pods_train_as_one_node_would(netns_pair, reference, tmp_path):  # noqa: F811
    c = Cluster(tmp_path, netns_pair, "pods")
    try:
        rcs = c.wait(c.start())
        assert rcs == [0, 0], c.logs()
        assert (c.run_dir / rundir.COMPLETED).exists() and (c.run_dir / "report.json").exists(), c.logs()
        losses = [r["loss"] for r in train_records(c.run_dir)]
        assert len(losses) == 24 and losses == pytest.approx(reference, rel=RTOL)
        start = [json.loads(x) for x in (c.run_dir / rundir.METRICS).read_text().splitlines()
                 if json.loads(x)["kind"] == "start"][0]
        assert start["nodes"] == 2 and start["world_size"] == 2
        # the allocation: each pod from its start to its end, as the cluster would bill it
        pods = [json.loads(x) for x in (c.run_dir / rundir.K8S_PODS).read_text().splitlines()]
        assert sorted(p["node_rank"] for p in pods) == [0, 1] and all(p["exit"] == 0 for p in pods)
        launcher_ok(tmp_path, "report", str(c.run_dir))
        al = json.loads((c.run_dir / "report.json").read_text())["allocation"]
        assert al["source"] == "pods" and al["attempts"] == 1
        want = sum(p["end"] - p["start"] for p in pods) / 3600
        assert al["device_hours"] == pytest.approx(want) and al["device_hours"] > al["trainer_device_hours"]
    finally:
        c.close()


def test_sigterm_checkpoints_in_the_grace_period_and_a_restart_resumes(netns_pair, reference, tmp_path):  # noqa: F811
    from launcher.render.k8s import STOPPED_EXIT

    c = Cluster(tmp_path, netns_pair, "preempted")
    try:
        procs = c.start()
        deadline = time.monotonic() + TIMEOUT_S
        while not any(r["step"] >= 3 for r in train_records(c.run_dir)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), c.logs()
            time.sleep(0.05)
        t0 = time.monotonic()
        procs[1].send_signal(signal.SIGTERM)  # the kubelet's SIGTERM, to the container's PID 1 on node 1
        rcs = c.wait(procs, timeout=c.grace + 30)
        took = time.monotonic() - t0
        assert rcs == [STOPPED_EXIT, STOPPED_EXIT], c.logs()
        assert took <= c.grace, f"the stop took {took:.1f} s, the grace period is {c.grace} s"
        stopped = train_records(c.run_dir)[-1]["step"]
        assert 3 <= stopped < 24 and (c.run_dir / rundir.PREEMPTED).exists()
        assert (c.run_dir / rundir.CHECKPOINTS / f"{rundir.CHECKPOINT_PREFIX}{stopped}").is_dir()
        # the JobSet restarts both pods (a new attempt: the markers are cleared, the checkpoint resumed)
        rcs = c.wait(c.start())
        assert rcs == [0, 0], c.logs()
        steps = [r["step"] for r in train_records(c.run_dir)]
        assert steps == list(range(1, 25)), steps  # every step once
        assert [r["loss"] for r in train_records(c.run_dir)] == pytest.approx(reference, rel=RTOL)
        assert (c.run_dir / rundir.COMPLETED).exists() and not (c.run_dir / rundir.PREEMPTED).exists()
    finally:
        c.close()
