"""What each rank runs under torchrun: `launcher train RUN_DIR`."""
from __future__ import annotations

import os
import time
from datetime import timedelta

from launcher import rundir


def _attempt_store(timeout: timedelta):
    """The store this attempt's process group starts from. launcher's launch scripts set
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: every rendezvous round, rank 0 hosts a new store on a
    new port, empty of an earlier attempt's keys. Under a torchrun that shares its agent's store
    (the default elsewhere), the store outlives the round and still holds the dead workers'
    addresses under the default keys (the new workers' gloo mesh dialled them: "connectFullMesh
    failed ... Connection refused"), so the keys are scoped to torchrun's restart count, which
    agrees between ranks on one node only."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent hosts it
    # wait_for_workers=False: the ranks check in on the store themselves (preflight's
    # wait_for_every_rank), which names a rank that did not arrive where the store would not
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=not agent and rank == 0, timeout=timeout, wait_for_workers=False)
    if not agent:
        return store
    return dist.PrefixStore(f"launcher/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def join_store(timeout_s: float):
    """The attempt's rendezvous store, on which every rank checks in as it starts: a rank that
    does not arrive within ``timeout_s`` (cluster.preflight_timeout_s: its node is down, it is
    stopped, it never started) is named, in one line (JobError)."""
    from launcher.errors import JobError
    from launcher.train.preflight import STARTED, unreachable_line, wait_for_every_rank

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    try:
        store = _attempt_store(timedelta(seconds=timeout_s))
    except Exception as e:  # DistNetworkError: rank 0's store did not answer in time
        raise JobError(unreachable_line(e, rank, timeout_s, "reaching the rendezvous store")) from None
    wait_for_every_rank(store, STARTED, rank, world, timeout_s)
    return store


def init_distributed(plan, store, timeout_s: int = 600, join_timeout_s: float = 60) -> None:
    """The process group on ``store`` (:func:`join_store`). Every rank first says it is ready (its
    data prepared: the slowest node's tokenizing may take up to ``timeout_s``), then the group is
    built under ``join_timeout_s`` (gloo connects its full mesh here: a peer that cannot be reached
    fails in one line, JobError). The group then takes the trainer's long ``timeout_s``."""
    import torch
    import torch.distributed as dist
    from torch.distributed.distributed_c10d import _set_pg_timeout

    from launcher.errors import JobError
    from launcher.train.preflight import READY, unreachable_line, wait_for_every_rank

    if dist.is_initialized():
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    wait_for_every_rank(store, READY, rank, world, timeout_s)
    store.set_timeout(timedelta(seconds=join_timeout_s))
    kw = {"timeout": timedelta(seconds=join_timeout_s), "store": store, "rank": rank, "world_size": world}
    try:
        if plan.device == "cuda":
            torch.cuda.set_device(local_rank)
            dist.init_process_group(plan.backend, device_id=torch.device("cuda", local_rank), **kw)
        else:
            dist.init_process_group(plan.backend, **kw)
    except Exception as e:  # DistBackendError, DistStoreError, RuntimeError: gloo's mesh did not connect
        raise JobError(unreachable_line(e, rank, join_timeout_s, "joining the process group")) from None
    _set_pg_timeout(timedelta(seconds=timeout_s))
    store.set_timeout(timedelta(seconds=timeout_s))


def main(run_dir: str, preflight_only: bool = False) -> int:
    t_start = time.time()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        from launcher.errors import JobError

        raise JobError("launcher train: runs once per rank under torchrun (RANK/WORLD_SIZE unset); "
                       f"start it with `launcher run {run_dir}` or the run directory's launch.sh")
    from launcher.train.console import capture_output
    from launcher.train.prestart import wait_for_go

    held = wait_for_go()  # started by `launcher run` before its plan: import, then wait (counted in setup_s)
    capture_output(run_dir, int(os.environ["RANK"]))  # third-party output into logs/rank<R>.log
    if held:
        os.write(1, held)
    try:
        return _main(run_dir, preflight_only, t_start)
    except Exception as e:
        _tell_failure(run_dir, e)
        raise


def _tell_failure(run_dir: str, e: Exception) -> None:
    """A failing rank names itself and its log on the user's stream; the traceback stays in the log
    (and in torchrun's error summary). A JobError (bad input) is its one line."""
    from launcher.errors import JobError
    from launcher.train.console import rank_log, say

    rank = int(os.environ["RANK"])
    what = str(e) if isinstance(e, JobError) else f"{type(e).__name__}: {e}"
    say(f"[launcher] rank {rank} failed: {what.splitlines()[0] if what else type(e).__name__} "
        f"(traceback in {rank_log(run_dir, rank)})", err=True)


def _main(run_dir: str, preflight_only: bool, t_start: float) -> int:
    from launcher.errors import JobError

    from launcher.train.preflight import run_preflight, write_preflight_failure

    plan = rundir.read_plan(run_dir)
    from launcher.train.lean import import_engines, no_collections, skip_unused_trackers

    skip_unused_trackers(plan.job.report.trackers)  # before the engines are imported (a prestarted rank did it)
    with no_collections():
        import_engines()
    timeout_s = plan.job.cluster.preflight_timeout_s
    try:
        store = join_store(timeout_s)
    except JobError as e:  # the launching process turns it into its one line and exit 2
        write_preflight_failure(run_dir, e.lines[0])
        raise
    prepared = tok = None
    if not preflight_only:
        # tokenize (or read the cache) before any process group exists: slow preprocessing never
        # sits inside a collective with a timeout; a file lock serialises the ranks of a node

        from launcher.sources import job_paths
        from launcher.train.data import prepare_job_data, read_tokenizer

        paths = job_paths(plan.job)
        tok = read_tokenizer(plan.job, paths.tokenizer)
        prepared = prepare_job_data(plan.job, paths, paths.tokenizer, rundir.RunDir(run_dir).cache)
    try:
        init_distributed(plan, store, join_timeout_s=timeout_s)
        run_preflight(run_dir, timeout_s=timeout_s)
    except JobError as e:
        write_preflight_failure(run_dir, e.lines[0])
        raise
    if preflight_only:
        import torch.distributed as dist

        dist.destroy_process_group()
        return 0
    from launcher.train.loop import train_main

    return train_main(run_dir, plan, prepared, tok, t_start)
