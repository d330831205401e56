"""Preflight: prove every rank can talk to every other before the model loads.

Called on every rank right after ``init_process_group`` (gloo or nccl). Three steps, each bounded
by ``timeout_s`` so that a node that cannot be reached fails the job in about a minute with one
clear line, not after NCCL's or gloo's 10-30 minute default:

1. a separate gloo group with its own short timeout (gloo connects the full mesh while it is
   built, so an unreachable peer or a wrong ``GLOO_SOCKET_IFNAME`` shows here), then
   ``monitored_barrier`` on it: rank 0 names every rank that did not arrive;
2. a one-element all-reduce on the training backend (NCCL on GPUs: proves NCCL itself works),
   waited on with the same timeout;
3. ``all_gather_object`` of each rank's host and library versions (``importlib.metadata``: no
   heavy import); a version that differs across ranks is an error naming the nodes.

Rank 0 writes ``logs/preflight.json`` (also when a check fails) and prints one summary line.
"""
from __future__ import annotations

import os
import platform
import re
import socket
import time
from datetime import timedelta
from typing import Any, Optional

from launcher import rundir
from launcher.errors import JobError

# packages whose versions must agree on every rank (python is compared too)
CHECKED_PACKAGES = ("torch", "deepspeed", "transformers")


def _version(dist_name: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist_name)
    except PackageNotFoundError:
        return None


def rank_facts(rank: int) -> dict[str, Any]:
    """What one rank reports about itself (cheap: no torch/deepspeed/transformers import)."""
    facts: dict[str, Any] = {
        "rank": rank,
        "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
        "node_rank": int(os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", "0"))),
        "hostname": socket.gethostname(),
        "slurm_node": os.environ.get("SLURMD_NODENAME"),
        "pid": os.getpid(),
        "python": platform.python_version(),
    }
    for name in CHECKED_PACKAGES:
        facts[name] = _version(name)
    return facts


def _ranges(ranks: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'"""
    out, ranks = [], sorted(ranks)
    i = 0
    while i < len(ranks):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] == ranks[j] + 1:
            j += 1
        out.append(str(ranks[i]) if i == j else f"{ranks[i]}-{ranks[j]}")
        i = j + 1
    return ",".join(out)


def find_mismatches(infos: list[dict]) -> list[str]:
    """One phrase per package whose version differs across ranks, naming the nodes of each value."""
    phrases = []
    for key in ("python", *CHECKED_PACKAGES):
        by_value: dict[Optional[str], dict[tuple[str, int], list[int]]] = {}
        for info in infos:
            node = (info["hostname"], int(info.get("node_rank", 0)))
            by_value.setdefault(info.get(key), {}).setdefault(node, []).append(info["rank"])
        if len(by_value) < 2:
            continue
        parts = []
        for value, hosts in sorted(by_value.items(), key=lambda kv: min(min(r) for r in kv[1].values())):
            where = ", ".join(f"{h} (node {n}, rank{'s' if len(r) > 1 else ''} {_ranges(r)})"
                              for (h, n), r in sorted(hosts.items(), key=lambda kv: min(kv[1])))
            parts.append(f"{value or 'not installed'} on {where}")
        phrases.append(f"{key} {' vs '.join(parts)}")
    return phrases


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]


def _node_of(rank: int) -> str:
    """torchrun numbers ranks node by node: the node rank of a global rank (same procs per node)."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) or 1
    return str(rank // per_node)


# the ranks' check-ins on the rendezvous store (+ rank): as each starts, and once its data is ready
STARTED = "launcher/preflight/started/"
READY = "launcher/preflight/ready/"


def wait_for_every_rank(store: Any, prefix: str, rank: int, world: int, timeout_s: float) -> None:
    """Check in on the rendezvous store under ``prefix`` and wait, at most ``timeout_s``, for every
    other rank to check in too: a rank that is late (stopped, on a node that did not start, stuck
    tokenizing) is named with its node, rather than found by a collective's timeout much later."""
    from datetime import timedelta

    keys = [f"{prefix}{r}" for r in range(world)]
    store.set(keys[rank], socket.gethostname())
    try:
        store.wait(keys, timedelta(seconds=timeout_s))
    except Exception:  # DistStoreError: the wait timed out
        missing = [r for r in range(world) if not store.check([keys[r]])]
        if not missing:  # they arrived just as the wait gave up
            return
        nodes = sorted({_node_of(r) for r in missing}, key=int)
        if prefix == STARTED:
            raise JobError(f"preflight: rank(s) {_ranges(missing)} (node rank {', '.join(nodes)}) did not arrive "
                           f"within {timeout_s:g} s of the others (rank {rank} on {socket.gethostname()} waited); "
                           "is that node up and are its ranks running (logs/)? raise cluster.preflight_timeout_s "
                           "if they need longer to start") from None
        raise JobError(f"preflight: rank(s) {_ranges(missing)} (node rank {', '.join(nodes)}) did not get their "
                       f"data ready within {timeout_s:g} s of rank {rank} on {socket.gethostname()}; check that "
                       "node's logs/ (tokenizing a large data set, a slow disk)") from None


def write_preflight_failure(run_dir: str | os.PathLike, line: str) -> None:
    """logs/preflight.json with the failure's line, written by a rank that failed the preflight:
    `launcher run` prints that line and exits 2 once torchrun returns. Rank 0's own report (every
    rank's facts, when it got that far) wins; another rank writes only where this attempt has
    written none, and never over one (created with a hard link, which fails if the file exists)."""
    import json
    import tempfile

    from launcher.rundir.artifacts import DamagedFile, Preflight, read_model

    path = rundir.RunDir(run_dir).preflight_json
    rank = int(os.environ.get("RANK", "0"))
    try:
        old = read_model(Preflight, path, missing_ok=True)
    except DamagedFile:
        old = None
    if old is not None and not old.ok and old.time >= _STARTED:
        return  # this attempt's failure is written (rank 0's report, or the first rank's line)
    report = Preflight(ok=False, error=line, rank=rank, hostname=socket.gethostname(), time=time.time())
    if rank == 0:
        report.write(path)
        return
    path.unlink(missing_ok=True)  # an earlier attempt's (a damaged one too)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".preflight-")
    with os.fdopen(fd, "w") as f:
        json.dump(report.model_dump(mode="json"), f, indent=2, sort_keys=True)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


_STARTED = time.time()  # this rank's start (the module is imported as the rank starts)


def unreachable_line(err: BaseException, rank: int, timeout_s: float, stage: str) -> str:
    return _unreachable_line(err, rank, socket.gethostname(), timeout_s, stage)


def _unreachable_line(err: BaseException, rank: int, host: str, timeout_s: float, stage: str) -> str:
    msg = _first_line(err)
    missing = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", str(err))
    if missing:
        ranks = [int(r) for r in re.findall(r"\d+", missing.group(1))]
        nodes = sorted({_node_of(r) for r in ranks}, key=int)
        return (f"preflight: rank(s) {_ranges(ranks)} (node rank {', '.join(nodes)}) did not reach the "
                f"barrier within {timeout_s:g} s; is that node up, and can it reach this one "
                f"({host}) (firewall, GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME)?")
    head = os.environ.get("MASTER_ADDR", "?")
    return (f"preflight: {stage} failed on rank {rank} ({host}) (timeout {timeout_s:g} s): {msg}; "
            f"check that every node can reach the others and the head node {head} "
            f"(firewall, GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME)")




def run_preflight(run_dir: str | os.PathLike, timeout_s: float = 60) -> list[dict]:
    """Check connectivity and versions on every rank; return every rank's facts (rank order).

    Raises ``JobError`` (one line) on every rank that sees a failure."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("run_preflight needs an initialized process group (init_process_group first)")
    rank, world = dist.get_rank(), dist.get_world_size()
    host = socket.gethostname()
    timeout = timedelta(seconds=timeout_s)
    backend = dist.get_backend()
    t0 = time.monotonic()

    # 1. our own gloo group: its timeout is ours (the default group keeps the trainer's long one)
    stage = "building the gloo check group"
    try:
        group = dist.new_group(backend="gloo", timeout=timeout)
        stage = "the monitored barrier"
        dist.monitored_barrier(group=group, timeout=timeout, wait_all_ranks=True)
    except Exception as e:  # DistBackendError, DistStoreError, RuntimeError, TimeoutError
        raise JobError(_unreachable_line(e, rank, host, timeout_s, stage)) from None

    # 2. all-reduce on the backend training will use
    t1 = time.monotonic()
    if backend == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    ones = torch.ones(1, device=device)
    try:
        work = dist.all_reduce(ones, async_op=True)
        work.wait(timeout=timeout)
        total = int(ones.item())
    except Exception as e:
        raise JobError(_unreachable_line(e, rank, host, timeout_s, f"the {backend} all-reduce")) from None
    allreduce_s = time.monotonic() - t1
    if total != world:
        raise JobError(f"preflight: {backend} all-reduce of ones over {world} ranks gave {total} on rank {rank} "
                       f"({host}); the process group is inconsistent")

    # 3. who is where, with which versions
    facts = rank_facts(rank)
    infos: list[Any] = [None] * world
    try:
        dist.all_gather_object(infos, facts, group=group)
    except Exception as e:
        raise JobError(_unreachable_line(e, rank, host, timeout_s, "gathering rank facts")) from None
    infos = sorted(infos, key=lambda i: i["rank"])
    dist.destroy_process_group(group)

    mismatches = find_mismatches(infos)
    error = None
    if mismatches:
        error = ("preflight: versions differ across ranks: " + "; ".join(mismatches)
                 + "; install the same versions on every node")
    hosts = sorted({i["hostname"] for i in infos}, key=lambda h: min(i["rank"] for i in infos if i["hostname"] == h))
    if rank == 0:
        from launcher.rundir.artifacts import Preflight

        Preflight(ok=error is None, error=error, backend=backend, world_size=world, nodes=len(hosts), hosts=hosts,
                  allreduce_s=round(allreduce_s, 6), elapsed_s=round(time.monotonic() - t0, 6), time=time.time(),
                  ranks=infos).write(rundir.RunDir(run_dir).preflight_json)
        if error is None:
            v = infos[0]
            from launcher.train.console import say

            say(f"preflight ok: {world} rank(s) on {len(hosts)} node(s) ({', '.join(hosts)}), "
                f"{backend} all-reduce {allreduce_s * 1000:.0f} ms, python {v['python']}, "
                + ", ".join(f"{k} {v[k] or '-'}" for k in CHECKED_PACKAGES))
    if error:
        raise JobError(error)
    return infos
