"""The hang watchdog: a step (or a collective inside it) that takes longer than the timeout makes
every live rank dump its Python stacks into logs/, name the ranks that did not arrive, and end
the job with a non-zero exit, so that torchrun's restart policy or Slurm takes over instead of
GPUs spinning at 100% for hours.

Each rank posts a heartbeat (its step and host) into the process group's store (a TCP key-value
store, not a collective: it answers while a collective hangs). A rank whose step exceeds the
timeout reads every rank's heartbeat: the ranks still behind it are the ones that did not arrive.

On NCCL, launch scripts also turn on PyTorch's Flight Recorder with a dump on timeout
(launcher.render.torchrun.render_env).
"""
from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Optional

from launcher import rundir
from launcher.train.console import say

EXIT_HANG = 75  # what a rank exits with when the watchdog fires (torchrun and Slurm see a failure)
FLOOR_S = 300.0  # the automatic timeout's floor, and its multiple of the median step time:
STEP_MULTIPLE = 20.0
FIRST_STEP_S = 1800.0  # the first step compiles, gathers and warms up: given longer when automatic
KEY = "launcher/heartbeat/"
ALIVE = "launcher/alive/"  # refreshed by every rank's watchdog thread, whatever its main thread does
ALIVE_EVERY_S = 2.0
STALE_S = 10.0  # a rank silent this long is stopped, frozen or gone


def stacks_file(run: Path, rank: int) -> Path:
    return rundir.RunDir(run).stacks(rank)


class Watchdog:
    def __init__(self, run: Path, rank: int, world: int, timeout_s: Optional[float], store=None):
        self.run, self.rank, self.world = run, rank, world
        self.fixed = timeout_s
        self.store = store
        self.host = socket.gethostname()
        self.step = 0
        self.phase = "setup"
        self.beats = 0
        self.step_times: list[float] = []
        self.started = time.monotonic()
        self.armed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="launcher-watchdog", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------- the loop's side

    def timeout(self) -> float:
        if self.fixed is not None:
            return self.fixed
        if not self.step_times:
            return FIRST_STEP_S
        return max(FLOOR_S, STEP_MULTIPLE * statistics.median(self.step_times[-50:]))

    def beat(self, step: int, step_time: Optional[float] = None, phase: str = "step") -> None:
        """A step (or a phase of it: eval, checkpoint) began; arms the watchdog. The heartbeat
        counts phases, so a rank stuck in one phase is behind a rank that moved to the next."""
        self.step = step
        self.phase = phase
        self.beats += 1
        if step_time is not None:
            self.step_times.append(step_time)
        self.started = time.monotonic()
        self.armed = True
        if self.store is not None:
            try:
                self.store.set(KEY + str(self.rank), json.dumps({"step": step, "phase": phase, "beats": self.beats,
                                                                 "host": self.host, "pid": os.getpid(),
                                                                 "time": time.time()}))
            except Exception:  # noqa: BLE001 - a store hiccup must not stop training
                pass

    def pause(self) -> None:
        """Disarm (the final save and the report may take long, and have their own timeouts)."""
        self.armed = False

    def stop(self) -> None:
        self._stop.set()

    # -------------------------------------------------------------- the watcher's side

    def _watch(self) -> None:
        last_alive = 0.0
        while not self._stop.wait(1.0):
            now = time.monotonic()
            if self.store is not None and now - last_alive >= ALIVE_EVERY_S:
                try:
                    self.store.set(ALIVE + str(self.rank), str(time.time()))
                except Exception:  # noqa: BLE001
                    pass
                last_alive = now
            if self.armed and now - self.started > self.timeout():
                self.fire()

    def _silent(self) -> list[int]:
        """Ranks whose watchdog thread has not been heard from for STALE_S: the whole process is
        stopped (SIGSTOP), frozen in the kernel, or its host is gone."""
        out = []
        now = time.time()
        for r in range(self.world):
            if r == self.rank or self.store is None:
                continue
            try:
                seen = float(self.store.get(ALIVE + str(r))) if self.store.check([ALIVE + str(r)]) else 0.0
            except Exception:  # noqa: BLE001
                seen = 0.0
            if now - seen > STALE_S:
                out.append(r)
        return out

    def _heartbeats(self) -> dict[int, dict]:
        out: dict[int, dict] = {}
        if self.store is None:
            return out
        for r in range(self.world):
            try:
                if self.store.check([KEY + str(r)]):
                    out[r] = json.loads(self.store.get(KEY + str(r)))
            except Exception:  # noqa: BLE001
                continue
        return out

    def _end_frozen_peers(self, silent: list[int], beats: dict[int, dict]) -> None:
        """SIGKILL the ranks on this host that do not respond at all (stopped, frozen): they
        cannot take torchrun's SIGTERM, and torchrun would wait its 30 s for them before its own
        SIGKILL, with the node's devices held."""
        for r in silent:
            beat = beats.get(r) or {}
            pid = beat.get("pid")
            if beat.get("host") == self.host and isinstance(pid, int) and pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                    say(f"launcher: hang: rank {r} (pid {pid}) does not respond; killed", err=True)
                except OSError:
                    pass

    def fire(self) -> None:
        elapsed = time.monotonic() - self.started
        path = stacks_file(self.run, self.rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            f.write(f"rank {self.rank} on {self.host}, pid {os.getpid()}: step {self.step + 1} running for "
                    f"{elapsed:.0f} s (timeout {self.timeout():.0f} s)\n\n")
            f.flush()
            faulthandler.dump_traceback(file=f, all_threads=True)
        beats = self._heartbeats()
        silent = self._silent()
        behind = sorted(set(silent) | {r for r in range(self.world) if r != self.rank
                                       and (r not in beats or beats[r]["beats"] < self.beats)})
        where = ", ".join(f"{r} ({beats[r]['host']}, last seen in step {beats[r]['step'] + 1}, {beats[r]['phase']}"
                          + ("; not responding" if r in silent else "") + ")"
                          if r in beats else f"{r} (no heartbeat)" for r in behind)
        line = (f"launcher: hang: step {self.step + 1} ({self.phase}) exceeded {self.timeout():.0f} s on rank {self.rank} "
                f"({self.host}); " + (f"rank(s) {where} did not arrive" if behind else
                                      "every rank arrived: the hang is inside a collective or the step itself")
                + f"; Python stacks of every live rank in {path.parent}/{rundir.STACKS.format(rank='*')}")
        say(line, err=True)
        try:
            from launcher.rundir.artifacts import HangRecord

            HangRecord(rank=self.rank, host=self.host, step=self.step + 1, elapsed_s=elapsed, timeout_s=self.timeout(),
                       behind=behind, not_responding=silent, heartbeats={str(r): b for r, b in beats.items()},
                       ).write(rundir.RunDir(self.run).hang_record(self.rank))
            self._end_frozen_peers(silent, beats)
        finally:
            os._exit(EXIT_HANG)


def default_store():
    """The default process group's store (a TCPStore under torchrun), or None."""
    try:
        import torch.distributed.distributed_c10d as c10d

        return c10d._get_default_store()
    except Exception:  # noqa: BLE001
        return None
