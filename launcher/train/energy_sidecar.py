"""The node energy tracker in a process of its own: :class:`NodeEnergySidecar` runs
:class:`launcher.train.energy.NodeEnergyTracker` in a child (``python -m
launcher.train.energy_sidecar``), so that none of CodeCarbon's memory or threads live in a rank;
:func:`start_node_tracker` is the trainer's entry (local rank 0)."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from typing import Any, Optional, Union

from launcher.train.energy import GpuId, NodeEnergyTracker, _NodeSettings, default_node_name, job_gpu_ids

log = logging.getLogger(__name__)


STOP_TIMEOUT_S = 120.0  # CodeCarbon's start (hardware probe) plus its final measurement


class NodeEnergySidecar(_NodeSettings):
    """A :class:`NodeEnergyTracker` run in a child process (``python -m launcher.train.energy_sidecar``):
    the same arguments, files and summary, none of CodeCarbon's memory or threads in the rank.

    :meth:`start_in_background` spawns the child and returns at once (energy is counted from
    when CodeCarbon's probe ends, as with the tracker's own background start); :meth:`stop`
    asks it for the final figures and returns the node summary (None when CodeCarbon could not
    run there). The child ignores the signals a job gets (SIGINT, SIGTERM, SIGUSR1/2, SIGHUP):
    the rank decides when the job ends, and the child follows it through its stdin.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._started: Optional[bool] = None
        self._proc: Optional[subprocess.Popen] = None

    @property
    def started(self) -> bool:
        """Whether CodeCarbon started in the child (known after :meth:`wait_started` or :meth:`stop`)."""
        return bool(self._started)

    def start_in_background(self) -> None:
        if self._proc is not None:
            return
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "launcher.train.energy_sidecar", json.dumps(self.settings())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def wait_started(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Block until the child reports whether CodeCarbon started (False on timeout)."""
        if self._started is None and self._proc is not None and self._proc.stdout is not None:
            import select

            ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
            if ready:
                self._read(self._proc.stdout.readline())
        return self.started

    def _read(self, text: str) -> None:
        for line in text.splitlines():
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(msg, dict):
                self._started = msg.get("started", self._started)
                self.summary = msg.get("summary", self.summary)

    def stop(self) -> Optional[dict]:
        proc, self._proc = self._proc, None
        if proc is None:
            return self.summary
        try:
            out, _ = proc.communicate("stop\n", timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            log.warning("energy: the tracker of %s did not stop within %.0f s; its last flush stands",
                        self.node, STOP_TIMEOUT_S)
        self._read(out or "")
        return self.summary


def _cpu_brand_from_proc() -> None:
    """CodeCarbon names the CPU (for its power table) from py-cpuinfo's ``brand_raw``, and
    py-cpuinfo starts another Python interpreter to run CPUID: about 1.3 s of CPU on the node,
    while its ranks start or train. On Linux the kernel's ``model name`` in /proc/cpuinfo is the
    same CPUID brand string: py-cpuinfo answers from it here (elsewhere, or without the line, it
    runs as it would)."""
    try:
        import cpuinfo
    except ImportError:
        return
    from launcher.facts.hardware import cpu_model_name

    brand = cpu_model_name()
    if brand != "cpu":
        cpuinfo.get_cpu_info = lambda: {"brand_raw": brand}


def _sidecar_main(argv: list[str]) -> None:
    """The child of :class:`NodeEnergySidecar`: start the tracker, report on the saved stdout
    (anything else printed goes to stderr), then wait for "stop" on stdin; at EOF (the rank
    died) flush what was measured, not final, and leave."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # CodeCarbon's prints (and C libraries') must not mix with the replies
    logging.basicConfig(level=logging.WARNING, format="[launcher] %(message)s")
    _cpu_brand_from_proc()
    tracker = NodeEnergyTracker(**json.loads(argv[0]))
    proto.write(json.dumps({"started": tracker.start()}) + "\n")
    proto.flush()
    if sys.stdin.readline().strip() == "stop":
        proto.write(json.dumps({"summary": tracker.stop()}) + "\n")
    else:
        tracker.flush()
    proto.flush()
    os._exit(0)  # CodeCarbon's scheduler thread must not hold the exit


# --------------------------------------------------------------------------- the trainer's entry


def start_node_tracker(run_dir: Union[str, os.PathLike], plan: Any) -> Optional[NodeEnergySidecar]:
    """This node's tracker, starting in its own process (:class:`NodeEnergySidecar`), or None
    when energy cannot be measured (never fatal to training: the report then says the energy is
    missing). Call it on local rank 0 only.

    Country, region and PUE come from ``plan.job.report``; on cuda the tracker watches the
    job's GPUs of this node (:func:`job_gpu_ids` of ``plan.procs_per_node``), on cpu none. It
    samples power every 2 s on cpu (short runs) and every 5 s on cuda."""
    node = default_node_name()
    gpus: list[GpuId] = job_gpu_ids(plan.procs_per_node) if plan.device == "cuda" else []
    r = plan.job.report
    try:
        tracker = NodeEnergySidecar(run_dir, node, r.country_iso_code, r.region, gpus, r.pue,
                                    measure_power_secs=2.0 if plan.device == "cpu" else 5.0)
        tracker.start_in_background()
        return tracker
    except Exception as e:  # noqa: BLE001 - energy is reported as missing, never fatal to training
        from launcher.train.console import say

        say(f"[launcher] energy tracking unavailable on {node}: {e}", err=True)
        return None


__all__ = ["NodeEnergySidecar", "start_node_tracker"]


if __name__ == "__main__":
    _sidecar_main(sys.argv[1:])
