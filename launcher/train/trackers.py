"""Experiment trackers (``report.trackers``): TensorBoard, MLflow and W&B, on global rank 0 only.

Every tracker has the members of :class:`Tracker`: ``start`` (returns what to keep of it),
``log(step, metrics)``, ``close(status)`` and ``add_summary``. :class:`Trackers` drives them
from the records the loop writes (it listens on rank 0's ``MetricsWriter``): each train record
as the step's metrics, each eval record. After the job, the process that writes its report adds
the report's figures (tokens/s, MFU, kWh, kgCO2e, cost) to the same tracker runs
(:func:`report_to_trackers`).

One tracker run per run directory: what each tracker keeps (MLflow's and W&B's run ids) is in
RUN_DIR/trackers.json, handed back to it at every later start (resume, torchrun restart, Slurm
requeue). The steps a restart does again (past the checkpoint it resumed from) are logged once:
TensorBoard purges its events from the first step done again (``purge_step``); MLflow skips the
steps its history already holds (the redone steps replay the same data and RNG state).

A tracker that fails prints one line and is dropped: the job matters more than its charts. The
packages are imported in ``start`` only; launcher.tracker_checks (before launch) only looks.
"""
from __future__ import annotations

import atexit
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol
from urllib.parse import quote

from launcher import rundir
from launcher.rundir.artifacts import DamagedFile, TrackerIds, TrackerRun, read_model
from launcher.train.console import say

if TYPE_CHECKING:
    from launcher.rundir.report_file import Report

MLFLOW_STATUS = {"completed": "FINISHED", "preempted": "KILLED", "failed": "FAILED"}


class Tracker(Protocol):
    name: str

    def start(self, run_dir: Path, plan, start_step: int, kept: Optional[TrackerRun]) -> TrackerRun: ...
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def add_summary(self, run_dir: Path, plan, kept: TrackerRun, figures: dict[str, float]) -> None: ...
    """Called in another process than the ranks', after the job: the report's figures added to
    the tracker run ``kept`` (started by the ranks, already closed)."""
    def close(self, status: str) -> None: ...


def train_metrics(r: rundir.TrainRecord) -> dict[str, float]:
    out = {"train/loss": r.loss, "train/lr": r.lr, "train/epoch": r.epoch, "train/tokens": r.tokens,
           "train/step_time_s": r.step_time_s, "train/cum_tokens": r.cum_tokens}
    if r.step_time_s > 0:
        out["train/tokens_per_s"] = r.tokens / r.step_time_s
    if r.grad_norm is not None:
        out["train/grad_norm"] = r.grad_norm
    return out


def eval_metrics(r: rundir.EvalRecord) -> dict[str, float]:
    out = {"eval/loss": r.eval_loss}
    if r.accuracy is not None:
        out["eval/accuracy"] = r.accuracy
    if r.f1_macro is not None:
        out["eval/f1_macro"] = r.f1_macro
    return out


def summary_figures(report: "Report") -> dict[str, float]:
    """The report's headline figures (those it has) as flat numbers, keyed ``report/...``."""
    t, e = report.throughput, report.energy
    figs = {"tokens_per_s": t.tokens_per_s, "tokens_per_s_per_device": t.tokens_per_s_per_device,
            "tokens": t.tokens, "steps": t.last_step, "wall_time_s": t.wall_time_s,
            "device_hours": t.device_hours, "mfu": report.mfu.value}
    if e.available:
        figs.update(energy_kwh=e.energy_kwh.total, emissions_kgco2e=e.emissions_kg)
    if report.cost.available:
        figs["cost"] = report.cost.total
    if report.forgetting is not None:
        figs.update(general_ppl_before=report.forgetting.before_ppl, general_ppl_after=report.forgetting.after_ppl)
    return {f"report/{k}": float(v) for k, v in figs.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_params(plan) -> dict[str, str]:
    """What the tracker run records of the job: the plan's resolved facts, as text."""
    job = plan.job
    facts = {"model": job.model.path, "method": job.train.method, "strategy": plan.strategy,
             "zero_stage": plan.zero_stage, "dtype": plan.dtype, "nodes": plan.nodes, "world_size": plan.world_size,
             "device": plan.device, "micro_batch_size": plan.micro_batch_size,
             "grad_accum_steps": plan.grad_accum_steps, "global_batch_size": plan.global_batch_size,
             "seq_len": plan.seq_len, "total_steps": plan.total_steps, "lr": job.train.lr,
             "lr_scheduler": job.train.lr_scheduler, "seed": job.train.seed}
    return {k: str(v) for k, v in facts.items() if v is not None}


class TensorBoardTracker:
    name = "tensorboard"

    def start(self, run_dir: Path, plan, start_step: int, kept: Optional[TrackerRun]) -> TrackerRun:
        from torch.utils.tensorboard import SummaryWriter

        # an earlier attempt's events from the first step done again on are dropped by readers;
        # at step 0 the eval baseline is logged again too
        purge = None if kept is None else (start_step + 1 if start_step else 0)
        self.dir = rundir.RunDir(run_dir).tensorboard
        self.writer = SummaryWriter(log_dir=str(self.dir), purge_step=purge)
        return TrackerRun(log_dir=rundir.TENSORBOARD)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()  # a killed rank loses no step before its checkpoint

    def add_summary(self, run_dir: Path, plan, kept: TrackerRun, figures: dict[str, float]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(rundir.RunDir(run_dir).tensorboard))
        step = int(figures.get("report/steps", 0))
        for k, v in figures.items():
            writer.add_scalar(k, v, global_step=step)
        writer.close()

    def close(self, status: str) -> None:
        self.writer.close()

    def where(self) -> str:
        return str(self.dir)


def mlflow_default_uri(run_dir: Path) -> str:
    """The SQLite store in the run directory (MLflow 3 refuses its plain file store by default).
    SQLAlchemy unquotes the path: a run directory named with %, ? or # stays itself."""
    return "sqlite:///" + quote(str((rundir.RunDir(run_dir).mlflow_db).absolute()), safe="/")


class MlflowTracker:
    name = "mlflow"

    def start(self, run_dir: Path, plan, start_step: int, kept: Optional[TrackerRun]) -> TrackerRun:
        import logging

        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        for noisy in ("mlflow", "alembic"):  # the store's table creation, at INFO on every first start
            logging.getLogger(noisy).setLevel(logging.WARNING)

        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or ""
        artifacts = None
        if not self.uri:
            rundir.RunDir(run_dir).mlflow.mkdir(exist_ok=True)
            self.uri = mlflow_default_uri(run_dir)
            artifacts = (rundir.RunDir(run_dir).mlflow_artifacts).absolute().as_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id, self.resumed, self._last = kept.run_id if kept else None, False, {}
        if self.run_id:
            try:
                self.client.get_run(self.run_id)
                self.resumed = True
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                say(f"[launcher] mlflow: run {self.run_id} is not in {self.uri}: starting a new run")
        if self.resumed:
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or plan.job.name
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(name, artifact_location=artifacts)
            run = self.client.create_run(exp_id, run_name=run_dir.name, tags={"launcher.run_dir": str(run_dir)})
            self.run_id = run.info.run_id
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in run_params(plan).items()])
        return TrackerRun(run_id=self.run_id, tracking_uri=self.uri)

    def _last_step(self, key: str) -> int:
        """The last step of ``key`` this run holds (earlier attempts), asked once per key."""
        if key not in self._last:
            hist = self.client.get_metric_history(self.run_id, key) if self.resumed else []
            self._last[key] = max((m.step for m in hist), default=-1)
        return self._last[key]

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if step > self._last_step(k)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def add_summary(self, run_dir: Path, plan, kept: TrackerRun, figures: dict[str, float]) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        now, step = int(time.time() * 1000), int(figures.get("report/steps", 0))
        MlflowClient(tracking_uri=kept.tracking_uri).log_batch(
            kept.run_id, metrics=[Metric(k, v, now, step) for k, v in figures.items()])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=MLFLOW_STATUS.get(status, "FAILED"))

    def where(self) -> str:
        return f"run {self.run_id} in {self.uri}"


class WandbTracker:
    name = "wandb"

    def start(self, run_dir: Path, plan, start_step: int, kept: Optional[TrackerRun]) -> TrackerRun:
        import wandb

        # offline without an API key (a compute node often has no network either): wandb sync later
        self.mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        run_id = kept.run_id if kept else None
        config = None if run_id else {**run_params(plan), "job": plan.job.to_dict()}  # given once, at the first start
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or plan.job.name, id=run_id,
                              resume="allow", dir=str(run_dir), name=run_dir.name, mode=self.mode, config=config,
                              settings=wandb.Settings(console="off", disable_git=True, silent=True))
        run_id = self.run.id  # W&B's own on the first start
        self.dir = rundir.RunDir(run_dir).wandb
        return TrackerRun(run_id=run_id)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def add_summary(self, run_dir: Path, plan, kept: TrackerRun, figures: dict[str, float]) -> None:
        """The run resumed once more (offline: one more offline-run folder, which ``wandb sync``
        merges into the same run), its summary updated."""
        self.start(run_dir, plan, 0, kept)
        self.run.summary.update(figures)
        self.run.finish(exit_code=0)

    def close(self, status: str) -> None:
        if status == "preempted":
            self.run.mark_preempting()
        self.run.finish(exit_code=0 if status in ("completed", "preempted") else 1)

    def where(self) -> str:
        how = f"; upload with: wandb sync {self.dir}/offline-run-*" if self.mode == "offline" else ""
        return f"run {self.run.id}, {self.mode}{how}"


TRACKERS = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "wandb": WandbTracker}


class Trackers:
    """Rank 0's trackers, fed the records the loop writes; empty (every call a no-op) on the
    other ranks and when the job asks for none."""

    def __init__(self, active: list):
        self.active = active

    def record(self, rec) -> None:
        """A MetricsWriter listener: train and eval records become the step's metrics."""
        if isinstance(rec, rundir.TrainRecord):
            self._each("log", rec.step, train_metrics(rec))
        elif isinstance(rec, rundir.EvalRecord):
            self._each("log", rec.step, eval_metrics(rec))

    def close(self, status: str) -> None:
        self._each("close", status)
        self.active = []

    def _each(self, method: str, *args) -> None:
        for t in list(self.active):
            try:
                getattr(t, method)(*args)
            except Exception as e:  # noqa: BLE001 - a tracker's failure never stops the job
                self.active.remove(t)
                say(f"[launcher] tracker {t.name}: {method} failed ({type(e).__name__}: {e}); "
                    "training goes on without it")


def read_tracker_ids(run_dir: Path) -> TrackerIds:
    """trackers.json of the earlier attempts; none when missing (or damaged: new tracker runs)."""
    try:
        return read_model(TrackerIds, rundir.RunDir(run_dir).trackers_json, missing_ok=True) or TrackerIds()
    except DamagedFile:
        return TrackerIds()


def start_trackers(run_dir: Path, plan, start_step: int, metrics: rundir.MetricsWriter) -> Trackers:
    """On the rank that writes the metrics (global rank 0): start the job's trackers, continuing
    the tracker runs of earlier attempts, and listen on ``metrics``. Elsewhere: no trackers."""
    names = plan.job.report.trackers
    if not metrics.enabled or not names:
        return Trackers([])
    kept, active = read_tracker_ids(run_dir), []
    for name in names:
        tracker = TRACKERS[name]()
        try:
            kept = kept.model_copy(update={name: tracker.start(run_dir, plan, start_step, kept.of(name))})
        except Exception as e:  # noqa: BLE001 - the job runs without it, and says so
            say(f"[launcher] tracker {name}: could not start ({type(e).__name__}: {e}); training goes on "
                "without it")
            continue
        active.append(tracker)
        say(f"[launcher] tracker {name}: {tracker.where()}")
    kept.write(rundir.RunDir(run_dir).trackers_json)
    trackers = Trackers(active)
    metrics.listeners.append(trackers.record)
    atexit.register(trackers.close, "failed")  # an exception ends the attempt: the runs are not left running
    return trackers


def report_to_trackers(run_dir: Path, plan, report: "Report") -> list[str]:
    """After the job, in the process that writes its report: the report's headline figures added
    to each of the job's tracker runs (trackers.json). One line per tracker that failed."""
    names = plan.job.report.trackers
    if not names:
        return []
    kept, figures, problems = read_tracker_ids(run_dir), summary_figures(report), []
    for name in names:
        run = kept.of(name)
        if run is None:
            continue  # it never started (the ranks said why)
        try:
            TRACKERS[name]().add_summary(Path(run_dir), plan, run, figures)
        except Exception as e:  # noqa: BLE001 - the report stands without it
            problems.append(f"launcher: tracker {name}: the report's figures were not added ({type(e).__name__}: {e})")
    return problems
