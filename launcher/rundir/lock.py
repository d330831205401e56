"""One `launcher run` per run directory: RUN_DIR/LOCK holds the host and pid of the run that uses
it. A second run is refused with one line; a lock left by a process that is gone from this host
is taken over."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from launcher.errors import JobError
from launcher.rundir.names import LOCK


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.held = False

    def acquire(self) -> "RunLock":
        me = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder and holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                        and not _alive(holder["pid"]):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone from this host
                    continue
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0))) if holder else "?"
                raise JobError(f"{self.path.parent}: in use by another launcher run (pid {holder.get('pid', '?') if holder else '?'} "
                               f"on {holder.get('host', '?') if holder else '?'}, since {since}); wait for it to end, "
                               f"or delete {self.path} if that process is gone") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise JobError(f"{self.path}: could not take the run directory's lock; delete it if no run uses the folder")

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
