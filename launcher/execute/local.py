"""The one place that starts torchrun on this node."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from launcher import rundir


STEP_LINE = re.compile(r"\[launcher\] step (\d+)/(\d+) \| (.*)$")


class _Terminal:
    """What `launcher run` shows of its ranks' output. Piped, every line as it came (the ranks
    already print few step lines). On a terminal, the step lines become one progress line, redrawn
    in place (rich), with every other line printed above it."""

    def __init__(self, tty: bool):
        self.progress = self.task = None
        if tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.progress = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                                     TextColumn("{task.fields[info]}"), console=Console(highlight=False),
                                     transient=False)

    def line(self, raw: bytes) -> None:
        if self.progress is None:
            sys.stdout.buffer.write(raw)
            sys.stdout.flush()
            return
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        m = STEP_LINE.match(text)
        if m is None:
            self.progress.console.print(text, markup=False, highlight=False)
            return
        done, total, info = int(m.group(1)), int(m.group(2)), m.group(3)
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("train", total=total, info=info)
        self.progress.update(self.task, completed=done, total=total, info=info)

    def close(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.stop()


def launch_local(argv: Sequence[str], env: Mapping[str, str], run_dir: Path) -> int:
    """Run ``argv`` with ``env`` added; stream its output to the terminal and RUN_DIR/logs.
    SIGINT/SIGTERM/SIGUSR2 are passed on to torchrun, which forwards them to its workers."""
    from launcher.train.console import PROGRESS_ENV

    log_dir = run_dir / rundir.LOGS
    log_dir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env}
    tty = sys.stdout.isatty()
    if tty:
        full_env[PROGRESS_ENV] = "tty"  # rank 0 prints every step; the terminal redraws one line
    term = _Terminal(tty)
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
                term.line(line)
            return proc.wait()
        finally:
            term.close()
            for s, h in old.items():
                signal.signal(s, h)
