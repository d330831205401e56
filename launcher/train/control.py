"""Stop requests: USR2 (Slurm's warning before the time limit), SIGTERM (scancel, a node drain,
a scheduler that sends no USR2) or the STOP file the Slurm batch shell touches. Every rank votes
in the step's one collective, so all ranks stop after the same step, checkpoint and exit 0."""
from __future__ import annotations

import signal
from pathlib import Path

from launcher import rundir

_signalled = {"stop": False}


def _on_stop_signal(signum, frame):  # noqa: ARG001
    if not _signalled["stop"]:
        name = signal.Signals(signum).name
        from launcher.train.console import say

        say(f"[launcher] {name}: checkpointing after this step, then stopping", err=True)
    _signalled["stop"] = True


def install_stop_handler() -> None:
    for sig in (signal.SIGUSR2, signal.SIGTERM):
        signal.signal(sig, _on_stop_signal)


def stop_requested(run: Path) -> bool:
    return _signalled["stop"] or rundir.RunDir(run).stop.exists()
