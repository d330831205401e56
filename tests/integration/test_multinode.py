"""Multi-node training across two "nodes" made of network namespaces (DESIGN.md, "Facts verified").

Two namespaces joined by a veth pair, addresses 127.0.10.1/24 and 127.0.10.2/24 (127.x only,
``route_localnet=1`` inside each namespace so the kernel routes them over the veth), one node's
launch script per namespace, ``GLOO_SOCKET_IFNAME`` set to that namespace's veth. The scripts are
the ones `launcher run --hosts 127.0.10.1,127.0.10.2` renders (c10d rendezvous on the first
host at cluster.master_port). Each namespace has only its loopback and the veth: the two ranks
can talk to each other only over the veth, as two machines would over their network.

The two-node runs (1 rank per node) are compared with single-node runs of the same job on 2
ranks: the trainer normalises each step's loss by the global batch's label tokens, so the world
layout does not change the math, and the per-step losses must agree to LOSS_RTOL.

Needs root (namespaces) and iproute2's ``ip`` (apt-installed when missing); skipped if not root.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import rundir
from tests.helpers import fake_distribution, missing_prerequisite, rank_pids

pytestmark = pytest.mark.slow

HOSTS = ("127.0.10.1", "127.0.10.2")
PREFIX = 24
# Per-step losses of the 2-node run vs the single-node 2-rank run. Same math, same data order;
# only the reduction order of float sums may differ (and threads per rank: 2 per rank on the
# two-node layout, 1 per rank on one node), so agreement is expected far below this.
LOSS_RTOL = 1e-4
# 2 ranks either way: global 8 = micro 2 x grad_accum 2 x world 2.
COMMON = ("cluster.device=cpu", "train.max_steps=5", "data.num_samples=400", "train.eval_accuracy_samples=0",
          "train.save_every_steps=100", "train.global_batch_size=8", "train.micro_batch_size=2")
STRATEGIES = {
    "zero3": ("parallel.strategy=zero", "parallel.zero_stage=3"),
    "fsdp": ("parallel.strategy=fsdp",),
}
RUN_TIMEOUT_S = 300


# --------------------------------------------------------------------------- namespaces


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stdout}{res.stderr}")
    return res


def _kill_namespace_procs(ns: str, sig: int = signal.SIGKILL) -> None:
    """Signal every process inside ``ns`` (a namespace this module made: only our processes live
    there). torchrun starts its workers in sessions of their own, so a process group kill of the
    launch script does not reach them."""
    deadline = time.monotonic() + 15
    while True:
        pids = _sh("ip", "netns", "pids", ns, check=False).stdout.split()
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            try:
                os.kill(int(pid), sig)
            except (ProcessLookupError, ValueError):
                pass
        time.sleep(0.5)


def _ensure_ip() -> None:
    if shutil.which("ip"):
        return
    if not shutil.which("apt-get"):
        pytest.fail("iproute2's `ip` is missing and there is no apt-get to install it", pytrace=False)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "iproute2"]):
        res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
        if res.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed:\n{(res.stdout + res.stderr)[-3000:]}", pytrace=False)
    if not shutil.which("ip"):
        pytest.fail("iproute2 installed but `ip` is still not on PATH", pytrace=False)


@pytest.fixture(scope="module")
def netns_pair():
    """Two namespaces joined by a veth pair; yields [(namespace, veth, address), ...] per node.
    Always deleted afterwards (deleting a namespace deletes its end of the veth, and so the pair)."""
    if os.geteuid() != 0:
        missing_prerequisite("network namespaces need root")
    _ensure_ip()
    tag = f"{os.getpid()}"
    nodes = [(f"lnch{tag}-{i}", f"vl{tag}n{i}", addr) for i, addr in enumerate(HOSTS)]
    assert all(len(veth) <= 15 for _, veth, _ in nodes)  # IFNAMSIZ
    try:
        for ns, _, _ in nodes:
            _sh("ip", "netns", "add", ns)
        (_, veth0, _), (_, veth1, _) = nodes
        _sh("ip", "link", "add", veth0, "type", "veth", "peer", "name", veth1)
        for ns, veth, addr in nodes:
            _sh("ip", "link", "set", veth, "netns", ns)
            _sh("ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX}", "dev", veth)
            _sh("ip", "-n", ns, "link", "set", veth, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=1")
        # each side reaches the other over the veth (a TCP connect: accepted or refused, not timed out)
        probe = ("import socket,sys\n"
                 "s=socket.socket(); s.settimeout(5)\n"
                 "try: s.connect((sys.argv[1], 9)); ok=True\n"
                 "except ConnectionRefusedError: ok=True\n"  # a RST came back over the veth: reachable
                 "except OSError: ok=False\n"
                 "sys.exit(0 if ok else 1)\n")
        for (ns, _, _), (_, _, peer) in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
            res = _sh("ip", "netns", "exec", ns, sys.executable, "-c", probe, peer, check=False)
            assert res.returncode == 0, f"{ns} cannot reach {peer} over the veth: {res.stderr}"
        yield nodes
    finally:
        for ns, _, _ in nodes:
            _kill_namespace_procs(ns)
            _sh("ip", "netns", "del", ns, check=False)
        for _, veth, _ in nodes:  # only if the pair was created but never moved into a namespace
            if _sh("ip", "link", "show", veth, check=False).returncode == 0:
                _sh("ip", "link", "del", veth, check=False)


# --------------------------------------------------------------------------- runs


def _launcher(*args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def _logs(run_dir: Path) -> str:
    parts = []
    for p in sorted((run_dir / rundir.LOGS).glob("*")):
        if p.is_file():
            parts.append(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}")
    return "\n".join(parts)


def run_single_node(base: Path, name: str, overrides: tuple[str, ...]) -> Path:
    run_dir = base / name
    res = _launcher("run", "--run-dir", str(run_dir), "cluster.cpu_procs_per_node=2", *COMMON, *overrides,
                    cwd=base, timeout=RUN_TIMEOUT_S)
    assert res.returncode == 0, f"single-node run failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return run_dir


def run_two_nodes(base: Path, name: str, overrides: tuple[str, ...], nodes,
                  node_env: dict[int, dict[str, str]] | None = None) -> tuple[Path, list[int]]:
    """Render with `launcher run --hosts`, then run node i's script inside namespace i, both at once
    (``node_env``: variables set on node i only, after its GLOO_SOCKET_IFNAME)."""
    run_dir = base / name
    res = _launcher("run", "--hosts", ",".join(HOSTS), "--run-dir", str(run_dir), "cluster.cpu_procs_per_node=1",
                    *COMMON, *overrides, cwd=base, timeout=120)
    assert res.returncode == 0, f"launcher run --hosts failed:\n{res.stdout}\n{res.stderr}"
    scripts = sorted(run_dir.glob("launch-*-*.sh"))
    assert [p.name for p in scripts] == [f"launch-{i}-{h}.sh" for i, h in enumerate(HOSTS)], scripts
    for i, p in enumerate(scripts):
        text = p.read_text()
        assert f"--rdzv-endpoint {HOSTS[0]}:29500" in text and "--rdzv-backend c10d" in text
        assert f"--local-addr {HOSTS[i]}" in text and "--nnodes 2" in text and "--nproc-per-node 1" in text
    # the rendered script runs `python3`: make it this interpreter, as an activated venv would
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    procs, logs = [], []
    try:
        for i, ((ns, veth, _), script) in enumerate(zip(nodes, scripts)):
            log = open(run_dir / rundir.LOGS / f"node-{script.name.split('-')[1]}.log", "wb")
            logs.append(log)
            extra = [f"{k}={v}" for k, v in ((node_env or {}).get(i) or {}).items()]
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, "env", f"GLOO_SOCKET_IFNAME={veth}", *extra, "bash", str(script)],
                cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + RUN_TIMEOUT_S
        rcs = []
        for p in procs:
            try:
                rcs.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pytest.fail(f"two-node run did not finish in {RUN_TIMEOUT_S} s:\n{_logs(run_dir)}", pytrace=False)
    finally:
        if any(p.poll() is None for p in procs):
            # SIGTERM first: torchrun forwards it to its workers; then kill what is left in our namespaces
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            time.sleep(10)
            for ns, _, _ in nodes:
                _kill_namespace_procs(ns)
            for p in procs:
                p.wait(timeout=30)
        for log in logs:
            log.close()
    return run_dir, rcs


def _check_completed(run_dir: Path, rcs: list[int] | None = None) -> list[dict]:
    # success is the COMPLETED marker and the end record, not torchrun's exit code alone: gloo
    # teardown occasionally aborts after the job finished (DESIGN.md)
    records = [r.model_dump() for r in rundir.read_metrics(run_dir)]
    ends = [r for r in records if r["kind"] == "end"]
    assert (run_dir / rundir.COMPLETED).exists(), f"no COMPLETED marker (exit codes {rcs}):\n{_logs(run_dir)}"
    assert ends and ends[-1]["status"] == "completed", ends
    return records


def _losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def _pair(tmp_path_factory, nodes, key: str) -> dict:
    base = tmp_path_factory.mktemp(f"multinode-{key}")
    t0 = time.monotonic()
    single = run_single_node(base, f"{key}-1node", STRATEGIES[key])
    t1 = time.monotonic()
    multi, rcs = run_two_nodes(base, f"{key}-2nodes", STRATEGIES[key], nodes)
    t2 = time.monotonic()
    print(f"\n{key}: single node {t1 - t0:.1f} s, two nodes {t2 - t1:.1f} s (exit codes {rcs})")
    return {"single": single, "multi": multi, "rcs": rcs}


@pytest.fixture(scope="module")
def zero3_runs(netns_pair, tmp_path_factory):
    return _pair(tmp_path_factory, netns_pair, "zero3")


@pytest.fixture(scope="module")
def fsdp_runs(netns_pair, tmp_path_factory):
    return _pair(tmp_path_factory, netns_pair, "fsdp")


def _assert_same_losses(runs: dict, strategy: str, zero_stage) -> None:
    single = _check_completed(runs["single"])
    multi = _check_completed(runs["multi"], runs["rcs"])
    start = next(r for r in multi if r["kind"] == "start")
    assert (start["world_size"], start["nodes"], start["strategy"], start["zero_stage"]) == (2, 2, strategy, zero_stage)
    start1 = next(r for r in single if r["kind"] == "start")
    assert (start1["world_size"], start1["nodes"]) == (2, 1)
    plan = json.loads((runs["multi"] / rundir.PLAN_JSON).read_text())
    assert (plan["nodes"], plan["procs_per_node"], plan["world_size"]) == (2, 1, 2)
    assert (plan["micro_batch_size"], plan["grad_accum_steps"], plan["global_batch_size"]) == (2, 2, 8)
    # both ranks passed the preflight, one per node (node rank from torchrun's GROUP_RANK)
    pre = json.loads((runs["multi"] / rundir.LOGS / rundir.PREFLIGHT_JSON).read_text())
    assert pre["ok"] and pre["world_size"] == 2
    assert sorted(r["node_rank"] for r in pre["ranks"]) == [0, 1]
    l1, l2 = _losses(single), _losses(multi)
    assert sorted(l1) == sorted(l2) == [1, 2, 3, 4, 5]
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], rel=LOSS_RTOL), (step, l1, l2)
    assert (runs["multi"] / rundir.FINAL / "config.json").exists()


def test_zero3_across_two_namespaces_matches_single_node(zero3_runs):
    _assert_same_losses(zero3_runs, "zero", 3)


def test_fsdp2_across_two_namespaces_matches_single_node(fsdp_runs):
    _assert_same_losses(fsdp_runs, "fsdp", None)


def test_one_energy_file_per_node_and_job_total_is_their_sum(zero3_runs):
    from launcher.report.energy import read_node_energy

    multi, single = zero3_runs["multi"], zero3_runs["single"]
    files = sorted(p.name for p in (multi / rundir.EMISSIONS).glob("*.json"))
    assert len(files) == 2, files
    assert [f.split("-", 1)[0] for f in files] == ["node0", "node1"], files
    nodes = read_node_energy(multi)
    assert len(nodes) == 2 and all(n.final for n in nodes)
    node_total = sum(n.energy_kwh.total for n in nodes)
    assert node_total > 0
    report = json.loads((multi / rundir.REPORT_JSON).read_text())
    energy = report["energy"]
    assert energy["available"] and energy["nodes"] == 2 and not energy["partial"]
    assert energy["energy_kwh"]["total"] == pytest.approx(node_total, rel=1e-9)
    assert sorted(n["node"] for n in energy["per_node"]) == sorted(n.node for n in nodes)
    # one node, two ranks: one tracker (local rank 0 only), one file
    single_files = sorted(p.name for p in (single / rundir.EMISSIONS).glob("*.json"))
    assert len(single_files) == 1 and single_files[0].startswith("node0-"), single_files


# --------------------------------------------------------------------------- kill -9 across nodes

# Every node's agent restarts its workers when one dies: the node whose rank died restarts them
# (train.max_restarts), the other sees the new rendezvous round (or its rank's collective fail on
# the closed socket) and restarts its own. Both resume from the newest verified checkpoint.
FAULT = ("train.max_restarts=3", "train.save_every_steps=1", "train.keep_last_checkpoints=2")


def _rank_pids(run_dir: Path) -> dict[int, list[int]]:
    """The pids of the run's live ranks in either namespace, by node (torchrun numbers a node's
    ranks after the nodes before it: rank // procs per node)."""
    procs = json.loads((run_dir / rundir.PLAN_JSON).read_text())["procs_per_node"]
    out: dict[int, list[int]] = {}
    for rank, pid in rank_pids(run_dir).items():
        out.setdefault(rank // procs, []).append(pid)
    return out


@pytest.mark.parametrize("key", ["fsdp", "zero3"])
def test_ranks_killed_on_either_node_restart_both_and_lose_nothing(netns_pair, request, tmp_path_factory, key):
    """Two kill -9 in one run, each in a new attempt: a rank of node 0 (whose agent hosts the
    rendezvous) at a random step, then a rank of node 1 at a later one. Both agents restart their
    ranks each time; every step is done once and the losses are the single node's."""
    import random
    import threading

    reference = request.getfixturevalue(f"{key}_runs")["single"]
    base = tmp_path_factory.mktemp(f"multinode-kill-{key}")
    run_dir = base / f"{key}-kill"
    rng = random.Random(key)
    steps = sorted(rng.sample(range(1, 5), 2))  # random steps of the 5 (after the last, one still runs)
    killed: list[tuple[int, int]] = []  # (node, pid)

    def watch():
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline and len(killed) < len(steps):
            if (run_dir / rundir.METRICS).exists():
                recs = rundir.read_metrics(run_dir)
                attempt = sum(1 for r in recs if r.kind == "start")
                node = len(killed)  # the first kill on node 0, the second on node 1
                if attempt == len(killed) + 1 and any(r.kind == "train" and r.step >= steps[node] for r in recs):
                    pids = _rank_pids(run_dir).get(node)
                    if pids:
                        pid = rng.choice(pids)
                        os.kill(pid, signal.SIGKILL)
                        killed.append((node, pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    multi, rcs = run_two_nodes(base, run_dir.name, (*STRATEGIES[key], *FAULT), netns_pair)
    watcher.join(timeout=5)
    assert [n for n, _ in killed] == [0, 1], f"the run ended before both kills (steps {steps}): {killed}"
    records = _check_completed(multi, rcs)
    train = [r["step"] for r in records if r["kind"] == "train"]
    assert train == [1, 2, 3, 4, 5], "every step exactly once"
    starts = [r for r in records if r["kind"] == "start"]
    assert len(starts) == 3, starts
    for start, step in zip(starts[1:], steps):
        assert (start["resumed_from_step"] or 0) <= step, (starts, steps)
    report = json.loads((multi / "report.json").read_text())
    assert report["restarts"]["automatic_restarts"] == 2, report["restarts"]  # one per kill, whichever node's
    l1, l2 = _losses(_check_completed(reference)), _losses(records)
    for s in l1:
        assert l2[s] == pytest.approx(l1[s], rel=LOSS_RTOL), (s, l1, l2)


def _preflight_failed(run_dir: Path, rcs: list[int]) -> str:
    assert all(rc != 0 for rc in rcs), rcs
    report = json.loads((run_dir / rundir.LOGS / rundir.PREFLIGHT_JSON).read_text())
    assert report["ok"] is False, report
    made = [n for n in (rundir.METRICS, rundir.CHECKPOINTS, rundir.FINAL, rundir.EMISSIONS) if (run_dir / n).exists()]
    assert not made, f"a failed preflight wrote {made}"
    return report["error"]


def test_versions_that_differ_across_two_namespaces_are_named(netns_pair, tmp_path):
    """Node 1 finds another transformers distribution first on its path (as where another version
    was installed): the preflight names both values and both nodes, before any model loads."""
    from importlib.metadata import version

    site = fake_distribution(tmp_path / "node1-site", "transformers", "0.0.0")
    run_dir, rcs = run_two_nodes(tmp_path, "mismatch", STRATEGIES["zero3"], netns_pair,
                                 node_env={1: {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}})
    error = _preflight_failed(run_dir, rcs)
    assert error.startswith("preflight: versions differ across ranks: transformers"), error
    assert f"transformers {version('transformers')} on " in error and "(node 0, rank 0)" in error
    assert "vs 0.0.0 on " in error and "(node 1, rank 1)" in error


def test_a_peer_that_cannot_be_reached_is_one_line(netns_pair, tmp_path):
    """Node 1 offers gloo its loopback (GLOO_SOCKET_IFNAME=lo, the classic misconfiguration): the
    store answers over the veth, but no rank can open gloo's connections to the other. Within
    cluster.preflight_timeout_s the job stops, saying what failed and where to look."""
    run_dir, rcs = run_two_nodes(tmp_path, "unreachable", (*STRATEGIES["zero3"], "cluster.preflight_timeout_s=10"),
                                 netns_pair, node_env={1: {"GLOO_SOCKET_IFNAME": "lo"}})
    error = _preflight_failed(run_dir, rcs)
    assert error.startswith("preflight: joining the process group failed on rank "), error
    assert "(timeout 10 s)" in error and "GLOO_SOCKET_IFNAME" in error and "\n" not in error
