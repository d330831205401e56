"""The one place that starts torchrun on this node."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Sequence

from launcher import progress, rundir




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
        line = progress.parse_step_line(text)
        if line is None:
            self.progress.console.print(text, markup=False, highlight=False)
            return
        done, total, info = line
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("train", total=total, info=info)
        self.progress.update(self.task, completed=done, total=total, info=info)

    def close(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.stop()


PRESTART_ENV = "LAUNCHER_PRESTART"  # a rank started before its plan: what to import, where its go is


class Torchrun:
    """torchrun on this node, started with ``argv`` and ``env`` added to this environment.

    With ``prestart`` (launcher.prepare.prestart_hint), it starts before the run directory is
    complete: its ranks import their libraries, then wait (launcher.train.prestart) until
    :meth:`go`; :meth:`cancel` ends them unseen. Its output stays in the pipe until :meth:`go`,
    then :meth:`go` streams it to the terminal and RUN_DIR/logs.
    SIGINT/SIGTERM are passed on to torchrun, which forwards them to its workers."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], run_dir: Path, prestart: Optional[dict] = None):
        self.argv, self.env, self.run_dir = list(argv), dict(env), Path(run_dir)
        full_env = {**os.environ, **env}
        self.tty = sys.stdout.isatty()
        if self.tty:
            full_env[progress.ENV] = "tty"  # rank 0 prints every step; the terminal redraws one line
        self.gate: Optional[Path] = None
        if prestart is not None:
            self.gate = Path(tempfile.mkdtemp(prefix="launcher-start-"))
            full_env[PRESTART_ENV] = json.dumps({**prestart, "go": str(self.gate / "go"), "parent": os.getpid()})
        else:
            full_env.pop(PRESTART_ENV, None)
        self.proc = subprocess.Popen(self.argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def runs(self, argv: Sequence[str], env: Mapping[str, str]) -> bool:
        """It was started with this command line and environment (and is still waiting)."""
        return self.argv == list(argv) and self.env == dict(env) and self.proc.poll() is None

    def cancel(self) -> None:
        """End torchrun and its waiting ranks; what they printed is dropped."""
        if self.proc.poll() is None:
            self.proc.terminate()  # torchrun passes SIGTERM on to its workers
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._close_gate()

    def go(self) -> int:
        """Let the ranks start training; stream torchrun's output until it exits: its code."""
        log_dir = rundir.RunDir(self.run_dir).logs
        log_dir.mkdir(parents=True, exist_ok=True)
        if self.gate is not None:
            (self.gate / "go").touch()
        term = _Terminal(self.tty)
        proc = self.proc

        def forward(signum, frame):  # noqa: ARG001
            if proc.poll() is None:
                proc.send_signal(signum)

        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            with open(rundir.RunDir(self.run_dir).torchrun_log, "ab") as log:
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
            self._close_gate()

    def _close_gate(self) -> None:
        if self.gate is not None:
            shutil.rmtree(self.gate, ignore_errors=True)
            self.gate = None


def launch_local(argv: Sequence[str], env: Mapping[str, str], run_dir: Path) -> int:
    """Run ``argv`` with ``env`` added; stream its output to the terminal and RUN_DIR/logs."""
    return Torchrun(argv, env, run_dir).go()
