"""Stop requests: USR2 to a rank, or the STOP file the Slurm batch shell touches on USR2. Every
rank votes in the step's one collective, so all ranks stop after the same step."""
from __future__ import annotations

import signal
from pathlib import Path

from launcher import rundir

_signalled = {"stop": False}


def _on_stop_signal(signum, frame):  # noqa: ARG001
    _signalled["stop"] = True


def install_stop_handler() -> None:
    signal.signal(signal.SIGUSR2, _on_stop_signal)


def stop_requested(run: Path) -> bool:
    return _signalled["stop"] or (run / rundir.STOP).exists()
