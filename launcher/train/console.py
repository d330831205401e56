"""What a rank shows its user, and where the rest goes.

:func:`capture_output` points the rank's file descriptors 1 and 2 at ``RUN_DIR/logs/rank<R>.log``
before the heavy libraries load, so everything third-party (DeepSpeed's banners, FutureWarnings,
C++ warnings from gloo) lands in that file, whole, and not in the user's terminal. launcher's
own lines go through :func:`say`: to the stream the rank was started with (torchrun's pipe to
`launcher run`, or Slurm's output file) and to the rank's log.

Progress: :func:`progress_every` is how often global rank 0 prints its step line. `launcher run`
on a terminal sets ``LAUNCHER_PROGRESS=tty`` and redraws every step's line in place (one line,
rich); elsewhere (piped, Slurm) a line every N steps keeps a run to about 30 of them.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Optional, TextIO

from launcher import progress, rundir


_user: dict[str, Optional[TextIO]] = {"out": None, "err": None}


def rank_log(run_dir: str | os.PathLike, rank: int) -> Path:
    return rundir.RunDir(run_dir).rank_log(rank)


def capture_output(run_dir: str | os.PathLike, rank: int) -> Path:
    """From here on, fds 1 and 2 of this process write to the rank's log (appended: restarts and
    resumes add to it); :func:`say` keeps the original streams. Idempotent."""
    if _user["out"] is not None:
        return rank_log(run_dir, rank)
    path = rank_log(run_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    _user["out"] = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    _user["err"] = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    import time

    print(f"==== rank {rank}, pid {os.getpid()}, attempt {os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')} ====", flush=True)
    return path


def flush_streams() -> None:
    """Flush the user's streams and this process's own (before an exit that skips teardown)."""
    for stream in (_user["out"], _user["err"], sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass


def say(msg: str, *, err: bool = False) -> None:
    """One of launcher's own lines: to the user's stream, and to the rank's log."""
    stream = _user["err" if err else "out"]
    if stream is not None:
        stream.write(msg + "\n")
        stream.flush()
    target = sys.stderr if err else sys.stdout
    target.write(msg + "\n")
    target.flush()


def progress_every(total_steps: int, log_every_steps: int, environ=os.environ) -> int:
    """Rank 0 prints a step line every this many steps: each step on a terminal (redrawn in
    place by `launcher run`), else often enough for about progress.PIPED_LINES lines a run."""
    if environ.get(progress.ENV) == "tty":
        return 1
    return max(log_every_steps, math.ceil(total_steps / progress.PIPED_LINES))
