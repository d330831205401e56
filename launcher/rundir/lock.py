"""One `launcher run` per run directory: RUN_DIR/LOCK holds the host and pid of the run that uses
it. A second run is refused with one line; a lock left by a process that is gone from this host
is taken over."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from launcher.errors import JobError
from launcher.rundir.artifacts import DamagedFile, Lock, read_model
from launcher.rundir.paths import RunDir


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = RunDir(run_dir).lock
        self.held = False

    def acquire(self) -> "RunLock":
        me = Lock(host=socket.gethostname(), pid=os.getpid(), time=time.time())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder and holder.host == me.host and not pid_alive(holder.pid):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone from this host
                    continue
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.time)) if holder else "?"
                raise JobError(f"{self.path.parent}: in use by another launcher run (pid {holder.pid if holder else '?'} "
                               f"on {holder.host if holder else '?'}, since {since}); wait for it to end, "
                               f"or delete {self.path} if that process is gone") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me.model_dump(), f)
            self.held = True
            return self
        raise JobError(f"{self.path}: could not take the run directory's lock; delete it if no run uses the folder")

    def _holder(self) -> Optional[Lock]:
        try:
            return read_model(Lock, self.path)
        except DamagedFile:  # half written by a run that died, or gone since
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
