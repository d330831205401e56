"""Every file and marker name of a run directory, defined once. No other module spells them."""
from __future__ import annotations

JOB_YAML = "job.yaml"  # the resolved job (every default filled in)
PLAN_JSON = "plan.json"  # the Plan (launcher.plan.Plan), written and read only through rundir
DS_CONFIG = "ds_config.json"  # the DeepSpeed config (strategy zero only), no "auto" in it
LAUNCH_SH = "launch.sh"  # the torchrun command(s) for this node (local runs)
HOST_LAUNCH = "launch-{node}-{host}.sh"  # `launcher run --hosts`: one script per host, run on that host
SBATCH = "job.sbatch"  # the Slurm batch script (Slurm runs)
SLURM_JOB_ID = "slurm_job_id"  # written once submitted
K8S_PODS = "k8s_pods.jsonl"  # one line per pod of a Kubernetes run as it ends: its start, end, exit, devices
K8S_YAML = "k8s.yaml"  # the Kubernetes manifest (launcher k8s): a ConfigMap and a TrainJob or JobSet
HASHES = "artifacts.sha256"  # hashes of the files above, written last
LOGS = "logs"  # torchrun and rank logs, preflight.json, slurm-<id>.out/.err
TORCHRUN_LOG = "torchrun.log"  # in logs/: what `launcher run` streamed to the terminal
PREFLIGHT_JSON = "preflight.json"  # in logs/: the ranks' connectivity and versions
METRICS = "metrics.jsonl"  # typed records, see launcher.rundir.metrics
EMISSIONS = "emissions"  # <node>.csv (CodeCarbon) and <node>.json (our summary), one per node
CHECKPOINTS = "checkpoints"  # step-N/: resumable checkpoints
CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"  # in a checkpoint: the step it holds
MANIFEST = "manifest.json"  # in a checkpoint, written last: every file's size and sha256
LOCK = "LOCK"  # held by the `launcher run` that uses the run directory: host, pid, time
FINAL = "final"  # the Hugging Face model or LoRA adapter
EXPORT = "export"  # `launcher export`'s default output: export/adapter, export/merged or export/full
CACHE = "cache"  # tokenized data, built before any process group exists
TRACKERS_JSON = "trackers.json"  # the experiment trackers' run ids (mlflow, wandb): one tracker run across resumes
TENSORBOARD = "tensorboard"  # TensorBoard event files (report.trackers)
MLFLOW = "mlflow"  # the MLflow store (mlflow.db, artifacts/) when MLFLOW_TRACKING_URI is unset
MLFLOW_DB = "mlflow.db"  # in mlflow/: the SQLite tracking store
MLFLOW_ARTIFACTS = "artifacts"  # in mlflow/: the experiment's artifact root
WANDB = "wandb"  # W&B's own folder (wandb.init(dir=RUN_DIR) makes it): offline-run-<time>-<id>/
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"

# markers: a file's existence is the message
STOP = "STOP"  # touched by the Slurm batch shell on USR2; every rank polls it each step
PREEMPTED = "PREEMPTED"  # written by rank 0 after the stop checkpoint; the batch script requeues
COMPLETED = "COMPLETED"  # written by rank 0 after the final save: the job succeeded
SLURM_ACCOUNTING = "slurm_accounting.json"  # sacct's attempts of the run's Slurm job (allocated time)

# below the top level (templates take the rank, step, node or Slurm job id)
RANK_LOG = "rank{rank}.log"  # in logs/: one rank's output, appended across attempts
STACKS = "stacks-rank{rank}.txt"  # in logs/: every thread's Python stack, dumped by the watchdog
HANG_RECORD = "hang-rank{rank}.json"  # in logs/: the watchdog's record of a hang (which ranks were behind)
SLURM_OUT = "slurm-{job_id}.out"  # in logs/: Slurm's output file ({job_id} is %j in the batch script)
SLURM_ERR = "slurm-{job_id}.err"
SLURM_LOG_RE = r"slurm-(\d+)\.(out|err)"  # what SLURM_OUT and SLURM_ERR name, read back
RNG_STATE = "rng-rank{rank}.pt"  # in a checkpoint: one rank's RNG states
NODE_ENERGY_JSON = "{node}.json"  # in emissions/: that node's summary
NODE_ENERGY_CSV = "{node}.csv"  # in emissions/: CodeCarbon's own output
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # in final/ and export/adapter/ (peft's names)
ADAPTER_CONFIG = "adapter_config.json"
MODEL_CARD = "README.md"  # in export/<kind>/
ENGINE = "engine"  # in a checkpoint: the engine's own files (DCP or DeepSpeed)
DATA_STATS = "stats.json"  # in cache/<key>/: what tokenizing made of the data (DataStats)
