"""The one place that starts torchrun on this node."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from launcher import rundir


def launch_local(argv: Sequence[str], env: Mapping[str, str], run_dir: Path) -> int:
    """Run ``argv`` with ``env`` added; stream its output to the terminal and RUN_DIR/logs.
    SIGINT/SIGTERM/SIGUSR2 are passed on to torchrun, which forwards them to its workers."""
    log_dir = run_dir / rundir.LOGS
    log_dir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env}
    with open(log_dir / rundir.TORCHRUN_LOG, "ab") as log:
        proc = subprocess.Popen(list(argv), env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=False)

        def forward(signum, frame):  # noqa: ARG001
            if proc.poll() is None:
                proc.send_signal(signum)

        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            assert proc.stdout is not None
            for line in iter(proc.stdout.readline, b""):
                log.write(line)
                log.flush()
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
            return proc.wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
