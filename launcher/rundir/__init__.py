"""The run directory: the contract between every stage.

Layout of ``runs/<name>-<id>/`` (every name is defined once, in :mod:`launcher.rundir.names`)::

    job.yaml             the resolved job (every default filled in)
    plan.json            the Plan (launcher.plan.Plan), through read_plan / write_plan only
    ds_config.json       the DeepSpeed config (strategy zero only), no "auto" in it
    launch.sh            the torchrun command(s) for this node (local runs, --hosts runs)
    job.sbatch           the Slurm batch script (Slurm runs), slurm_job_id once submitted
    artifacts.sha256     hashes of the files above, written last
    logs/                torchrun and rank logs, preflight.json, slurm-<id>.out/.err
    metrics.jsonl        typed records (launcher.rundir.metrics), written by global rank 0
    emissions/<node>.csv CodeCarbon output, one file per node (local rank 0 only)
    emissions/<node>.json  that node's summary (energy_kwh, emissions_kg, measured/estimated)
    checkpoints/step-N/  resumable checkpoints, written to a temp folder then renamed
    final/               the Hugging Face model or LoRA adapter
    export/<kind>/       `launcher export`: adapter, merged or full model, tokenizer, model card
    cache/               tokenized data, built before any process group exists
    trackers.json        the experiment trackers' run ids (report.trackers), kept across resumes
    tensorboard/, mlflow/, wandb/  the trackers' own files (mlflow/: unless MLFLOW_TRACKING_URI is set)
    STOP, PREEMPTED      preemption markers (Slurm batch shell, rank 0)
    COMPLETED            written by rank 0 after the final save: the job succeeded
    report.json, report.md, report.html
"""
from launcher.rundir.files import (
    check_writable,
    hash_files,
    is_run_dir,
    new_run_dir,
    plan_files,
    read_plan,
    require_run_dir,
    write_atomic,
    write_json,
    write_plan,
    write_run_dir,
)
from launcher.rundir.metrics import (
    CheckpointRecord,
    EndRecord,
    EvalRecord,
    GeneralEvalRecord,
    MemoryRecord,
    Metrics,
    RankMemory,
    MetricsWriter,
    StartRecord,
    TrainRecord,
    read_metrics,
)
from launcher.rundir.names import *  # noqa: F403 - the names are the contract
from launcher.rundir.paths import (RunDir, adapter_files, engine_dir, manifest_file, model_card, rng_state,
                                   trainer_state_file)

__all__ = [
    "CheckpointRecord", "RunDir", "adapter_files", "engine_dir", "manifest_file", "model_card", "rng_state", "trainer_state_file", "EndRecord", "EvalRecord", "GeneralEvalRecord", "MemoryRecord", "Metrics", "RankMemory", "MetricsWriter", "StartRecord", "TrainRecord",
    "check_writable", "hash_files", "is_run_dir", "new_run_dir", "read_metrics", "read_plan", "require_run_dir",
    "write_atomic", "write_json", "write_plan", "write_run_dir", "plan_files",
]
