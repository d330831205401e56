"""Energy of a node, measured with CodeCarbon: one tracker per **node**, started by local rank 0
only (a tracker measures the whole machine: one per rank would count the node once per rank). It
writes ``emissions/<node>.csv`` and ``emissions/<node>.json`` into the run directory; the report
reads and sums them (:mod:`launcher.report.energy`, which also says why PUE is never applied
twice).

The tracker runs in a child process of local rank 0 (:class:`NodeEnergySidecar`), not in the
rank: CodeCarbon's start imports pandas and pyarrow and its sampling thread wakes every few
seconds, which made local rank 0 the node's largest rank by tens of MiB of host memory and
put its sampling on the GIL of a rank that every other rank waits for. The child lives as
long as the rank: told to stop, it writes the final figures; when the rank dies (its stdin
closes) it flushes what it measured and exits.

How each figure was obtained (measured or estimated) is read from CodeCarbon's private objects:
:mod:`launcher.train.codecarbon_labels`.

Nothing here imports torch or CodeCarbon at module level; CodeCarbon is imported by
:meth:`NodeEnergyTracker.start`.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any, Optional, Union

from launcher.rundir.energy_file import (EmissionsRow, Measured, Session, node_summary, read_emissions_csv,
                                         read_node_file, session_from_row)
from launcher.rundir import RunDir, write_json
from launcher.train.codecarbon_labels import measurement_labels

log = logging.getLogger(__name__)

GpuId = Union[int, str]


# --------------------------------------------------------------------------- helpers


def safe_node_name(name: str) -> str:
    """A file-name-safe node name."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()) or "node"
    return s.lstrip(".") or "node"


def default_node_name(node_rank: Optional[int] = None) -> str:
    """``node<rank>-<hostname>``: unique per node even when two "nodes" share a hostname
    (network namespaces on one machine). The rank comes from torchrun (``GROUP_RANK``), Slurm
    (``SLURM_NODEID``) or ``NODE_RANK``, else 0."""
    if node_rank is None:
        for var in ("GROUP_RANK", "SLURM_NODEID", "NODE_RANK"):
            v = os.environ.get(var, "")
            if v.isdigit():
                node_rank = int(v)
                break
        else:
            node_rank = 0
    host = socket.gethostname().split(".")[0] or "host"
    return safe_node_name(f"node{node_rank}-{host}")


def job_gpu_ids(local_world_size: int) -> list[GpuId]:
    """The NVML ids of this node's job GPUs: the first ``local_world_size`` entries of
    ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs, as Slurm and users set it), else ``0..n-1``.

    NVML ignores ``CUDA_VISIBLE_DEVICES`` and numbers GPUs in PCI bus order; CUDA's order matches
    it when ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (Slurm's gres binding uses bus order)."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and cvd.strip():
        out: list[GpuId] = []
        for part in cvd.split(","):
            part = part.strip()
            if not part:
                continue
            out.append(int(part) if part.isdigit() else part)
        return out[:local_world_size]
    return list(range(local_world_size))


# --------------------------------------------------------------------------- the tracker


class _NodeSettings:
    """What a node's tracker is told: where it writes, what it watches, how often it samples."""

    def __init__(
        self,
        run_dir: Union[str, os.PathLike],
        node_name: Optional[str] = None,
        country_iso_code: str = "USA",
        region: Optional[str] = None,
        gpu_ids: Optional[list[GpuId]] = None,
        pue: float = 1.0,
        measure_power_secs: float = 5.0,
        flush_every_s: Optional[float] = 60.0,
    ):
        self.run_dir = Path(run_dir)
        self.node = safe_node_name(node_name) if node_name else default_node_name()
        self.country_iso_code = country_iso_code
        self.region = region
        self.gpu_ids = list(gpu_ids) if gpu_ids is not None else None
        self.pue = float(pue)
        self.measure_power_secs = float(measure_power_secs)
        self.flush_every_s = flush_every_s
        self.summary: Optional[dict] = None

    def settings(self) -> dict:
        """The constructor's arguments, as JSON can carry them."""
        return dict(run_dir=str(self.run_dir), node_name=self.node, country_iso_code=self.country_iso_code,
                    region=self.region, gpu_ids=self.gpu_ids, pue=self.pue,
                    measure_power_secs=self.measure_power_secs, flush_every_s=self.flush_every_s)


class NodeEnergyTracker(_NodeSettings):
    """CodeCarbon's ``OfflineEmissionsTracker`` for one node, writing into the run directory.

    Start it on **local rank 0 of each node only**::

        tracker = NodeEnergyTracker(run_dir, node_name, country_iso_code="USA", region=None,
                                    gpu_ids=job_gpu_ids(local_world_size), pue=1.2)
        tracker.start()
        try:
            ... training ...
        finally:
            tracker.stop()   # writes emissions/<node>.csv and emissions/<node>.json

    It never raises into the training loop: a CodeCarbon failure logs a warning and the node
    simply has no energy figures. Every ``flush_every_s`` seconds a background thread flushes a
    cumulative CSV row and refreshes the JSON (``"final": false``), so a killed job still leaves
    figures up to its last flush; ``stop()`` writes the final ones. A resumed attempt (requeue)
    adds a session to the same node file instead of overwriting it.

    No network: offline tracker, CSV output only, grid intensity from CodeCarbon's bundled
    data for ``country_iso_code`` (and ``region``, for US states / Canadian provinces).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        rd = RunDir(self.run_dir)
        self.dir = rd.emissions
        self.csv_path, self.json_path = rd.node_energy_csv(self.node), rd.node_energy_json(self.node)
        self._tracker: Any = None
        self._labels: dict[str, str] = {}
        self._start_time: Optional[float] = None
        self._stop_evt = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self._tracker is not None

    def start(self) -> bool:
        """Start measuring. Returns False (and logs a warning) if CodeCarbon cannot run."""
        if self._tracker is not None:
            return True
        try:
            from codecarbon import OfflineEmissionsTracker
            from codecarbon.output_methods.base_output import OutputMethod

            # quiet before the constructor logs (its log_level applies only once it has run)
            logging.getLogger("codecarbon").setLevel(logging.ERROR)

            self.dir.mkdir(parents=True, exist_ok=True)
            kwargs: dict[str, Any] = dict(
                country_iso_code=self.country_iso_code,
                output_dir=str(self.dir),
                output_file=self.csv_path.name,
                output_methods=[OutputMethod.CSV],
                on_csv_write="append",
                measure_power_secs=self.measure_power_secs,
                log_level="error",
                tracking_mode="machine",
                pue=self.pue,
                allow_multiple_runs=True,  # two "nodes" on one machine must not block each other
                project_name="launcher",
                experiment_name=self.node,
            )
            if self.region:
                kwargs["region"] = self.region
            if self.gpu_ids is not None:
                kwargs["gpu_ids"] = self.gpu_ids
            tracker = OfflineEmissionsTracker(**kwargs)
            tracker.start()  # CodeCarbon swallows its own exceptions: check it really started
            if getattr(tracker, "_start_time", None) is None:
                raise RuntimeError("CodeCarbon did not start (see its log)")
            self._labels = measurement_labels(tracker)
            self._tracker = tracker
            self._start_time = time.time()
        except Exception as e:  # noqa: BLE001 - energy must never stop training
            log.warning("energy: CodeCarbon tracker not started on %s: %s", self.node, e)
            self._tracker = None
            return False
        if self.flush_every_s and self.flush_every_s > 0:
            self._stop_evt.clear()
            self._thread = threading.Thread(target=self._flush_loop, name=f"energy-{self.node}", daemon=True)
            self._thread.start()
        return True

    def start_in_background(self) -> None:
        """:meth:`start` on a thread: CodeCarbon's hardware probe waits about 1.3 s (on a subprocess
        and its own threads) that the rank spends building the model instead. Energy is counted
        from when the probe ends; :meth:`stop` waits for it."""
        self._starter = threading.Thread(target=self.start, name=f"energy-start-{self.node}", daemon=True)
        self._starter.start()

    def _flush_loop(self) -> None:
        assert self.flush_every_s
        while not self._stop_evt.wait(self.flush_every_s):
            self.flush()

    def flush(self) -> Optional[dict]:
        """Append a cumulative CSV row and refresh the node JSON (not final)."""
        with self._lock:
            if self._tracker is None:
                return None
            try:
                self._tracker.flush()
                return self._write(final=False)
            except Exception as e:  # noqa: BLE001
                log.warning("energy: flush failed on %s: %s", self.node, e)
                return None

    def stop(self) -> Optional[dict]:
        """Stop measuring, write ``emissions/<node>.json`` and return its content (None if never started)."""
        starter = getattr(self, "_starter", None)
        if starter is not None:
            starter.join(timeout=120)
        self._stop_evt.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._lock:
            if self._tracker is None:
                return self.summary
            tracker, self._tracker = self._tracker, None
            try:
                tracker.stop()
                return self._write(final=True, tracker=tracker)
            except Exception as e:  # noqa: BLE001
                log.warning("energy: stop failed on %s: %s", self.node, e)
                return None

    def __enter__(self) -> "NodeEnergyTracker":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----------------------------------------------------------------- internals

    def _this_session(self, final: bool, tracker: Any = None) -> Optional[Session]:
        tracker = tracker or self._tracker
        run_id = str(getattr(tracker, "run_id", ""))
        rows = [r for r in read_emissions_csv(self.csv_path) if r.run_id == run_id]
        if rows:
            s = session_from_row(rows[-1])
        else:
            data = getattr(tracker, "final_emissions_data", None)
            if data is None:
                return None
            s = session_from_row(EmissionsRow.model_validate({k: getattr(data, k, None) for k in (
                "run_id", "duration", "cpu_energy", "gpu_energy", "ram_energy", "energy_consumed",
                "emissions", "pue", "country_name", "country_iso_code", "region", "cpu_model",
                "gpu_model", "gpu_count", "timestamp")}))
        return s.model_copy(update={
            "run_id": run_id,
            "start_time": self._start_time,
            "end_time": time.time(),
            "measured": Measured(**self._labels),
            "final": final,
            "gpu_ids": self.gpu_ids,
            "measure_power_secs": self.measure_power_secs,
        })

    def _refresh_labels(self, tracker: Any) -> None:
        # A GPU whose energy counter failed at any point was (partly) integrated from power
        # readings: keep the weaker label once seen.
        new = measurement_labels(tracker)
        for c, lb in new.items():
            old = self._labels.get(c)
            if old and "power readings" in old and "energy counter" in lb:
                continue
            self._labels[c] = lb

    def _write(self, final: bool, tracker: Any = None) -> Optional[dict]:
        self._refresh_labels(tracker or self._tracker)
        session = self._this_session(final, tracker)
        if session is None:
            return None
        old = read_node_file(self.json_path)  # an earlier attempt's sessions on this node
        sessions = [s for s in old.sessions if s.run_id != session.run_id] if old else []
        sessions.append(session)
        try:
            import codecarbon

            version = getattr(codecarbon, "__version__", None)
        except Exception:  # noqa: BLE001
            version = None
        summary = node_summary(self.node, sessions, hostname=socket.gethostname(), codecarbon_version=version,
                               written_at=time.time())
        self.summary = summary.model_dump(mode="json")  # what the sidecar passes back, as JSON
        write_json(self.json_path, self.summary)
        return self.summary


__all__ = ["GpuId", "NodeEnergyTracker", "default_node_name", "job_gpu_ids", "measurement_labels",
           "safe_node_name"]
