"""torchrun whose ranks fork from an agent that imported their libraries once per node.

``python -m launcher.forkrun ARGS`` takes torchrun's own arguments (torch.distributed.run's parser,
its elastic agent, rendezvous and restarts) and ``-m launcher train RUN_DIR``. Before the agent
starts its ranks it imports what they will import (torch, transformers, the engine; the same
list as a rank started early, launcher.train.prestart), then starts each rank as torchrun's
``--start-method fork`` does for a function: a fork of the agent that runs `launcher train` in
process. So a node of N ranks imports its libraries once, not N times (what that saves:
bench/RESULTS.md, "Ranks forked from one importer per node").

CPU only (``cluster.start_method``; auto forks on CPU): a CUDA context does not survive a fork,
and importing the engines may touch the driver. A forked rank is named ``rank<R>`` (its
/proc/PID/comm: what ps and top show), since its command line is the agent's.
"""
from __future__ import annotations

import gc
import json
import os
import signal
import sys
import tempfile

RANK_NAME = "rank{}"  # /proc/PID/comm of a forked rank; its cmdline is the agent's


def _name_process(name: str) -> None:
    """Set this process's name (prctl PR_SET_NAME): what ps -o comm, top and pgrep show."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(15, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _rank(*argv: str) -> None:
    """One rank, in a fork of the agent: `launcher <argv>` with a fresh process's signal handlers
    (the agent's raise in it). torchrun's worker takes a return, not an exit: a failing rank
    leaves with its code, as a rank that torchrun started would."""
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(s, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _name_process(RANK_NAME.format(os.environ.get("RANK", "")))
    sys.argv = ["launcher", *argv]
    import logging

    from launcher.cli import run_cli
    from launcher.train.console import flush_streams

    code = run_cli()
    logging.shutdown()
    flush_streams()
    if code:
        os._exit(code)


def _run_dir(args) -> str | None:
    rest = list(args.training_script_args)
    return rest[1] if args.training_script == "launcher" and len(rest) >= 2 and rest[0] == "train" else None


def _hint(run_dir: str | None) -> dict | None:
    """What the ranks will import: from `launcher run`'s prestart hint, else from the plan."""
    from launcher.train.prestart import PRESTART_ENV

    raw = os.environ.get(PRESTART_ENV)
    if raw:
        try:
            return json.loads(raw)
        except ValueError:
            return None
    if run_dir is None:
        return None
    try:
        from launcher import rundir
        from launcher.prepare.launch import prestart_hint

        return prestart_hint(rundir.read_plan(run_dir))
    except Exception:  # noqa: BLE001 - a rank meets (and reports) whatever is wrong with the plan
        return None


def _warm(hint: dict | None) -> None:
    """Import what the ranks will, before they fork. Whatever this prints is dropped, and a
    failure left for each rank to meet and report where it would without the agent's imports."""
    if hint is None:
        return
    from launcher.train.prestart import output_into, warm

    with tempfile.TemporaryFile() as held, output_into(held):
        try:
            warm(hint)
        except Exception:  # noqa: BLE001
            pass


def main(argv: list[str]) -> None:
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import record
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    args = parse_args(argv)
    if not args.module or args.training_script != "launcher":
        raise SystemExit("launcher.forkrun: starts `-m launcher ...` only; use torchrun for anything else")
    # torch.distributed.run.run's defaults, which config_from_args leaves to it
    if args.standalone:
        args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
    if args.master_port is None:
        args.master_port = 29500
    config, _, _ = config_from_args(args)
    config.start_method = "fork"
    _warm(_hint(_run_dir(args)))
    gc.freeze()  # what was imported stays out of the ranks' collections: no copy-on-write of it in them
    # torchrun's own: a failed rank's summary (ChildFailedError, with the rank, its exit code or
    # signal and its error file), exit 1
    record(elastic_launch(config, _rank))(*args.training_script_args)


if __name__ == "__main__":
    main(sys.argv[1:])
