"""RunDir: every path of one run directory, built here and nowhere else (in the spirit of
submitit's JobPaths). Callers ask ``RunDir(path).report_json`` or ``.rank_log(0)``; no other
module joins a run-directory name onto a path."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from launcher.rundir import names as N


class RunDir:
    """The paths of the run directory at ``path`` (nothing is read or created)."""

    __slots__ = ("path",)

    def __init__(self, path: Union[str, os.PathLike, "RunDir"]):
        self.path = Path(path.path if isinstance(path, RunDir) else path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # the top level
    job_yaml = property(lambda self: self.path / N.JOB_YAML)
    plan_json = property(lambda self: self.path / N.PLAN_JSON)
    ds_config = property(lambda self: self.path / N.DS_CONFIG)
    launch_sh = property(lambda self: self.path / N.LAUNCH_SH)
    sbatch = property(lambda self: self.path / N.SBATCH)
    slurm_job_id = property(lambda self: self.path / N.SLURM_JOB_ID)
    hashes = property(lambda self: self.path / N.HASHES)
    logs = property(lambda self: self.path / N.LOGS)
    metrics = property(lambda self: self.path / N.METRICS)
    emissions = property(lambda self: self.path / N.EMISSIONS)
    checkpoints = property(lambda self: self.path / N.CHECKPOINTS)
    lock = property(lambda self: self.path / N.LOCK)
    final = property(lambda self: self.path / N.FINAL)
    export = property(lambda self: self.path / N.EXPORT)
    cache = property(lambda self: self.path / N.CACHE)
    trackers_json = property(lambda self: self.path / N.TRACKERS_JSON)
    tensorboard = property(lambda self: self.path / N.TENSORBOARD)
    mlflow = property(lambda self: self.path / N.MLFLOW)
    wandb = property(lambda self: self.path / N.WANDB)
    report_json = property(lambda self: self.path / N.REPORT_JSON)
    report_md = property(lambda self: self.path / N.REPORT_MD)
    report_html = property(lambda self: self.path / N.REPORT_HTML)
    stop = property(lambda self: self.path / N.STOP)
    preempted = property(lambda self: self.path / N.PREEMPTED)
    completed = property(lambda self: self.path / N.COMPLETED)
    slurm_accounting = property(lambda self: self.path / N.SLURM_ACCOUNTING)
    k8s_pods = property(lambda self: self.path / N.K8S_PODS)
    k8s_yaml = property(lambda self: self.path / N.K8S_YAML)

    # below it
    torchrun_log = property(lambda self: self.logs / N.TORCHRUN_LOG)
    preflight_json = property(lambda self: self.logs / N.PREFLIGHT_JSON)
    mlflow_db = property(lambda self: self.mlflow / N.MLFLOW_DB)
    mlflow_artifacts = property(lambda self: self.mlflow / N.MLFLOW_ARTIFACTS)
    tmp_final = property(lambda self: self.path / f".tmp-{N.FINAL}")  # final/ while it is written

    def rank_log(self, rank: int) -> Path:
        return self.logs / N.RANK_LOG.format(rank=rank)

    def stacks(self, rank: int) -> Path:
        return self.logs / N.STACKS.format(rank=rank)

    def stacks_glob(self) -> list[Path]:
        return sorted(self.logs.glob(N.STACKS.format(rank="*")))

    def hang_record(self, rank: int) -> Path:
        return self.logs / N.HANG_RECORD.format(rank=rank)

    def hang_records(self) -> list[Path]:
        return sorted(self.logs.glob(N.HANG_RECORD.format(rank="*")))

    def slurm_out(self, job_id: Union[int, str]) -> Path:
        return self.logs / N.SLURM_OUT.format(job_id=job_id)

    def slurm_err(self, job_id: Union[int, str]) -> Path:
        return self.logs / N.SLURM_ERR.format(job_id=job_id)

    def slurm_logs(self) -> list[tuple[int, Path]]:
        """(job id, path) of every Slurm output file in logs/."""
        import re

        out = []
        for p in self.logs.glob("slurm-*.*"):
            m = re.fullmatch(N.SLURM_LOG_RE, p.name)
            if m:
                out.append((int(m.group(1)), p))
        return sorted(out)

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{N.CHECKPOINT_PREFIX}{step}"

    def tmp_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f".tmp-{N.CHECKPOINT_PREFIX}{step}"

    def checkpoint_dirs(self) -> list[tuple[int, Path]]:
        """(step, folder) of every step-N folder, oldest first (none verified here)."""
        out = []
        for p in self.checkpoints.glob(f"{N.CHECKPOINT_PREFIX}*"):
            tail = p.name[len(N.CHECKPOINT_PREFIX):]
            if p.is_dir() and tail.isdigit():
                out.append((int(tail), p))
        return sorted(out)

    def node_energy_json(self, node: str) -> Path:
        return self.emissions / N.NODE_ENERGY_JSON.format(node=node)

    def node_energy_csv(self, node: str) -> Path:
        return self.emissions / N.NODE_ENERGY_CSV.format(node=node)

    def host_launch(self, node: int, host: str) -> Path:
        """`launcher run --hosts`: node ``node``'s script (the host name made safe for a file name)."""
        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in host)
        return self.path / N.HOST_LAUNCH.format(node=node, host=safe)

    def outputs(self) -> tuple[list[Path], list[Path]]:
        """(folders, files) a run produces by training: what `launcher run --start-over` removes.
        The job, the plan, the tokenized data and the logs are not among them."""
        folders = [self.checkpoints, self.final, self.emissions, self.tensorboard, self.mlflow, self.wandb]
        files = [self.metrics, self.completed, self.preempted, self.stop, self.report_json, self.report_md,
                 self.report_html, self.trackers_json]
        return folders, files

    def export_dir(self, kind: str) -> Path:
        return self.export / kind


def rng_state(checkpoint: Path, rank: int) -> Path:
    """One rank's RNG states inside a checkpoint folder."""
    return Path(checkpoint) / N.RNG_STATE.format(rank=rank)


def adapter_files(folder: Union[str, os.PathLike]) -> tuple[Path, Path]:
    """(weights, config) of a peft adapter saved in ``folder``."""
    return Path(folder) / N.ADAPTER_WEIGHTS, Path(folder) / N.ADAPTER_CONFIG


def engine_dir(checkpoint: Path) -> Path:
    """The engine's own files inside a checkpoint folder (DCP or DeepSpeed)."""
    return Path(checkpoint) / N.ENGINE


def trainer_state_file(checkpoint: Path) -> Path:
    return Path(checkpoint) / N.TRAINER_STATE


def manifest_file(checkpoint: Path) -> Path:
    return Path(checkpoint) / N.MANIFEST


def model_card(folder: Union[str, os.PathLike]) -> Path:
    """The model card of an exported model folder."""
    return Path(folder) / N.MODEL_CARD
