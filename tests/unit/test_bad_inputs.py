"""A catalogue of bad inputs, each answered as a new user would see it through the real console
entry point (``launcher.cli.main``, in-process): exit code 2, exactly one line on stderr that
starts with ``error: `` and names the place (file, field, flag or line) and the fix, no
traceback, and nothing half-written (the test folder holds after the command exactly what the
case put there: no run directory, no cache, no output file).

Each case is ``(id, setup, argv, expected)``: ``setup(ctx)`` builds its inputs in the case's own
folder (the working directory), ``argv`` is what the user types after ``launcher``, and every
string of ``expected`` must be in the error line. ``launcher run`` is only given inputs that
fail before launch; starting torchrun fails the test.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from launcher.demo import demo_model_config, ensure_demo_assets
from tests.helpers import missing_prerequisite


@dataclass
class Ctx:
    tmp: Path
    mp: pytest.MonkeyPatch
    cleanups: list = field(default_factory=list)


CPU = "cluster.device=cpu"
GPU_PLAN = "cluster.accelerator=H100-SXM"  # a job planned for the cluster's GPUs, which forecasts time and energy
WITH_DATA = ["plan", "--with-data", CPU]


# ---------------------------------------------------------------------------- building inputs


def write(rel: str, text: str | bytes) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        p = ctx.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text)
    return setup


def jsonl(rel: str, rows: list) -> Callable[[Ctx], None]:
    return write(rel, "".join(json.dumps(r) + "\n" for r in rows))


def both(*setups: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        for s in setups:
            s(ctx)
    return setup


def mkdir(rel: str) -> Callable[[Ctx], None]:
    return lambda ctx: (ctx.tmp / rel).mkdir(parents=True)


def tokenizer_files(rel: str, chat: bool = True) -> Callable[[Ctx], None]:
    """The demo tokenizer's files (with or without its chat template) in ``rel``."""
    def setup(ctx: Ctx) -> None:
        src = ensure_demo_assets().tokenizer_dir
        (ctx.tmp / rel).mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json") + (("chat_template.jinja",) if chat else ()):
            shutil.copy(src / name, ctx.tmp / rel / name)
    return setup


def model_config(rel: str, config: Optional[dict] = None) -> Callable[[Ctx], None]:
    """A model folder with the demo model's config.json (no weights: the plan needs none)."""
    return write(f"{rel}/config.json", json.dumps(config or demo_model_config()))


def run_dir(rel: str, plan: str = "{}") -> Callable[[Ctx], None]:
    """A folder that looks like a run directory (a plan.json) to the commands that read one."""
    return write(f"{rel}/plan.json", plan)


def hub_offline(ctx: Ctx) -> None:
    """HF_HUB_OFFLINE=1, also for a huggingface_hub imported before (it reads the variable once)."""
    from huggingface_hub import constants

    ctx.mp.setenv("HF_HUB_OFFLINE", "1")
    ctx.mp.setattr(constants, "HF_HUB_OFFLINE", True)


def read_only(rel: str) -> Callable[[Ctx], None]:
    """A read-only tmpfs mounted at ``rel`` (root only)."""
    def setup(ctx: Ctx) -> None:
        if os.geteuid() != 0:
            missing_prerequisite("mounting a read-only tmpfs needs root")
        target = ctx.tmp / rel
        target.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            missing_prerequisite(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        ctx.cleanups.append(lambda: subprocess.run(["umount", str(target)], check=True))
    return setup


def no_gpu(ctx: Ctx) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: cluster.device=cuda is valid here")


def setenv(**values: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        for name, value in values.items():
            ctx.mp.setenv(name, value)
    return setup


JOB = write("job.yaml", "name: bad-inputs\n")
K8S_IMAGE = "cluster.k8s.image=registry.example.com/launcher:0.3"


def slow_claim(ctx: Ctx) -> None:
    """A claim written at 100 bytes/s: the stop checkpoint takes minutes."""
    ctx.mp.setattr("launcher.render.k8s.CHECKPOINT_WRITE_GB_S", 1e-7)


def no_kubectl(ctx: Ctx) -> None:
    ctx.mp.setenv("PATH", str(ctx.tmp / "empty-bin"))
MLFLOW = "report.trackers=[mlflow]"
FILE_STORE = setenv(MLFLOW_TRACKING_URI="file:./mlruns")
FILE_STORE_FIX = ("report.trackers: mlflow: MLFLOW_TRACKING_URI=file:./mlruns is MLflow's file store",
                  "sqlite:///", "MLFLOW_ALLOW_FILE_STORE=true")
ROW = {"prompt": "1+1=", "response": "2"}


# ---------------------------------------------------------------------------- the catalogue

CASES: list = [  # (id, setup, argv, expected), or a pytest.param of the same
    # --- the job file
    ("job-is-a-list", write("job.yaml", "- model\n- data\n"), ["plan", "job.yaml"],
     ("job.yaml: a job file must be a mapping of sections, got list", "launcher init")),
    ("job-empty", write("job.yaml", ""), ["plan", "job.yaml"],
     ("job.yaml: the file is empty", "leave the file out to run the embedded default")),
    ("job-not-found", None, ["plan", "nope.yaml"], ("nope.yaml: job file not found", "launcher init")),
    ("job-yaml-syntax", write("job.yaml", "name: x\nmodel: {path: a\n  b: [\n"), ["plan", "job.yaml"],
     ("job.yaml:3:4: YAML syntax error", "expected ',' or '}'")),
    ("job-not-utf8", write("job.yaml", b"name: caf\xe9\n"), ["plan", "job.yaml"],
     ("job.yaml: not UTF-8 text", "YAML text")),
    ("job-unknown-top-key", write("job.yaml", "modle: {path: x}\n"), ["plan", "job.yaml"],
     ("job.yaml: modle: unknown key", "did you mean 'model'?")),
    ("job-wrong-type", write("job.yaml", "train: {lr: fast}\n"), ["plan", "job.yaml"],
     ("job.yaml: train.lr:", "valid number", "'fast'")),
    ("job-negative-number", write("job.yaml", "train: {epochs: -1}\n"), ["plan", "job.yaml"],
     ("job.yaml: train.epochs: must be >= 1", "got -1")),
    ("job-section-not-a-mapping", write("job.yaml", "train: 3\n"), ["plan", "job.yaml"],
     ("job.yaml: train:", "valid dictionary")),
    # --- overrides
    ("override-without-equals", JOB, ["plan", "job.yaml", "train.lr"],
     ("override 'train.lr'", "expected key.sub=value")),
    ("override-empty-key-part", None, ["plan", "train..lr=1"],
     ("override 'train..lr=1': empty key part", "key.sub=value")),
    ("override-typo", None, ["plan", "paralel.zero_stage=3"], ("paralel: unknown key", "did you mean 'parallel'?")),
    ("override-bad-choice", None, ["plan", "data.format=markdown"], ("data.format:", "'instruction'", "'markdown'")),
    # --- spec fields
    ("unknown-demo-name", None, ["plan", "model.path=demo:nope"], ("demo:nope: unknown demo asset", "demo:tiny-llama")),
    ("global-batch-not-divisible", None, ["plan", CPU, "train.global_batch_size=15"],
     ("train.global_batch_size: 15 is not divisible", "nearest valid global_batch_size: 16")),
    ("attn-implementation-unknown", None, ["plan", "model.attn_implementation=flash"],
     ("model.attn_implementation:", "'sdpa'", "'flash'")),
    ("offload-params-needs-stage-3", None, ["plan", "parallel.zero_stage=2", "parallel.offload_params=cpu"],
     ("parallel:", "offload_params: 'cpu' needs zero_stage 3, got 2")),
    ("nvme-offload-without-path", None, ["plan", "parallel.offload_optimizer=nvme"],
     ("parallel:", "nvme_path: required when offloading to nvme")),
    ("nvme-without-async-io", setenv(CC="false"), ["plan", "parallel.offload_optimizer=nvme",
                                                     "parallel.nvme_path=."],
     ("parallel.offload_optimizer: nvme needs DeepSpeed's async I/O op", "apt-get install libaio-dev")),
    ("country-code-too-short", None, ["plan", "report.country_iso_code=US"],
     ("report.country_iso_code:", "at least 3 characters")),
    ("nvme-path-missing", None, ["run", "--run-dir", "run", CPU, "parallel.offload_optimizer=nvme",
                                 "parallel.nvme_path=nvme-nope"],
     ("parallel.nvme_path: nvme-nope is not a folder on this machine", "mkdir -p")),
    # --- precision: refused before launch, where the device cannot compute in the job's dtype
    ("fp16-on-cpu", None, ["plan", CPU, "model.dtype=fp16"],
     ("model.dtype: fp16 is not supported on CPU", "use bf16 or fp32")),
    ("fp16-on-cpu-run", None, ["run", "--run-dir", "run", CPU, "model.dtype=fp16"],
     ("model.dtype: fp16 is not supported on CPU", "use bf16 or fp32")),
    ("fork-on-cuda", None, ["plan", "cluster.device=cuda", "cluster.start_method=fork"],
     ("cluster.start_method: fork is for CPU ranks", "use spawn or auto on GPUs")),
    ("fp16-under-fsdp2", None, ["plan", "cluster.device=cuda", "parallel.strategy=fsdp", "model.dtype=fp16"],
     ("model.dtype: fp16 under FSDP2 needs a gradient scaler", "use bf16, or parallel.strategy=zero")),
    ("cuda-without-gpu", no_gpu, ["run", "--run-dir", "run", "cluster.device=cuda"],
     ("cluster.device: cuda was asked for but this machine has no visible GPU", "cluster.device=cpu")),
    # --- Slurm fields
    ("slurm-time-unparseable", None, ["plan", "cluster.slurm.time=soon"],
     ("cluster.slurm.time: 'soon' is not a time limit sbatch --time takes", "HH:MM:SS")),
    ("slurm-time-unquoted", None, ["plan", "cluster.slurm.time=10:00"],
     ("cluster.slurm.time: got the number 600", "quote the time limit")),
    ("slurm-env-name-with-space", None, ["plan", "cluster.slurm.env.MY VAR=x"],
     ("cluster.slurm.env: 'MY VAR' is not a valid environment variable name", "letters, digits and _")),
    ("slurm-newline-in-field", None, ["slurm", "--dry-run", 'cluster.slurm.partition="gpu\\n#SBATCH --x"'],
     ("cluster.slurm.partition: contains a newline", "must be one line")),
    ("slurm-extra-sbatch-not-an-option", None, ["slurm", "--dry-run", "cluster.slurm.extra_sbatch=[mail-type=END]"],
     ("cluster.slurm.extra_sbatch[0]: 'mail-type=END' is not an sbatch option", "--key=value")),
    ("slurm-dry-run-and-submit", None, ["slurm", "--dry-run", "--submit"], ("--dry-run and --submit", "choose one")),
    ("slurm-into-a-run-dir", run_dir("old"), ["slurm", "--run-dir", "old"],
     ("old: already a run directory", "choose a new --run-dir")),
    ("slurm-run-dir-under-a-file", write("afile", "x"), ["slurm", "--run-dir", "afile/run"],
     ("--run-dir:", "afile is a file", "under a folder")),
    # --- trackers: checked before launch, not by rank 0 after the queue wait
    ("mlflow-file-store-plan", FILE_STORE, ["plan", MLFLOW], FILE_STORE_FIX),
    ("mlflow-file-store-run", FILE_STORE, ["run", "--run-dir", "run", CPU, MLFLOW], FILE_STORE_FIX),
    ("mlflow-file-store-slurm", FILE_STORE, ["slurm", "--dry-run", MLFLOW], FILE_STORE_FIX),
    ("mlflow-sqlite-folder-missing", setenv(MLFLOW_TRACKING_URI="sqlite:///nope/mlflow.db"), ["plan", MLFLOW],
     ("MLFLOW_TRACKING_URI=sqlite:///nope/mlflow.db: folder", "nope does not exist", "mkdir -p")),
    ("wandb-dir-under-a-file", both(write("afile", "x"), setenv(WANDB_DIR="afile/wandb")),
     ["run", "--run-dir", "run", CPU, "report.trackers=[wandb]"],
     ("report.trackers: wandb: WANDB_DIR=afile/wandb:", "afile is not a folder")),
    # --- the model folder and the tokenizer
    ("model-path-missing", None, [*WITH_DATA, "model.path=./models/llama"],
     ("model.path: ./models/llama: no such folder", "config.json")),
    ("model-without-tokenizer", model_config("m"), [*WITH_DATA, "model.path=m"],
     ("model.path:", "no tokenizer files", "model.tokenizer")),
    ("model-tokenizer-config-only", both(model_config("m"), write("m/tokenizer_config.json",
                                                                  '{"tokenizer_class": "LlamaTokenizer"}')),
     [*WITH_DATA, "model.path=m"], ("model.path:", "the tokenizer encodes text to no tokens", "tokenizer.json")),
    ("model-tokenizer-corrupt", both(model_config("m"), tokenizer_files("m"), write("m/tokenizer.json", "{not json")),
     [*WITH_DATA, "model.path=m"], ("model.path:", "transformers cannot load the tokenizer", "tokenizer.json")),
    ("model-config-corrupt", write("m/config.json", "{not json"), ["plan", "model.path=m"],
     ("m/config.json:1: not valid JSON", "fix or replace the model's config.json")),
    ("model-config-unknown-type", model_config("m", {"model_type": "no-such-model"}), ["plan", "model.path=m"],
     ("m/config.json: cannot be read as a model config", "no-such-model")),
    ("model-folder-without-config", mkdir("m"), ["plan", "model.path=m"],
     ("model.path:", "no config.json in the folder", "save_pretrained")),
    ("model-path-is-a-file", JOB, ["plan", "model.path=job.yaml"],
     ("model.path:", "a file, not a model folder", "config.json")),
    ("tokenizer-path-missing", None, [*WITH_DATA, "model.tokenizer=./tok-nope"],
     ("model.tokenizer: ./tok-nope: no such folder", "tokenizer folder")),
    ("hub-id-not-cached", hub_offline, [*WITH_DATA, "model.path=launcher-tests/not-cached"],
     ("model.path: launcher-tests/not-cached is not in the local Hugging Face cache",
      "hf download launcher-tests/not-cached")),
    # --- the data
    ("data-missing", None, [*WITH_DATA, "data.path=nope.jsonl"],
     ("data.path: nope.jsonl: no such file or folder", ".jsonl")),
    ("data-empty-file", write("d.jsonl", ""), [*WITH_DATA, "data.path=d.jsonl"],
     ("data.path:", "d.jsonl: the file is empty", "point data.path at the data")),
    ("data-plain-text", write("d.jsonl", "what is 1+1? 2\n"), [*WITH_DATA, "data.path=d.jsonl"],
     ("d.jsonl:1: not valid JSON", "each line must be one JSON object")),
    ("data-json-array-in-jsonl", write("d.jsonl", json.dumps([ROW, ROW], indent=1)),
     [*WITH_DATA, "data.path=d.jsonl"], ("d.jsonl:1: a JSON array in a .jsonl file", "one JSON object per line")),
    ("data-invalid-utf8", write("d.jsonl", json.dumps(ROW).encode() + b'\n{"prompt": "caf\xe9", "response": "x"}\n'),
     [*WITH_DATA, "data.path=d.jsonl"],
     ("d.jsonl:2: not valid UTF-8 (byte 0xe9 at column 16)", "save the file as UTF-8")),
    ("data-invalid-utf8-csv", write("d.csv", b"prompt,response\ncaf\xe9,x\n"), [*WITH_DATA, "data.path=d.csv"],
     ("d.csv:2: not valid UTF-8", "save the file as UTF-8")),
    ("data-missing-prompt-field", jsonl("d.jsonl", [{"question": "1+1=", "response": "2"}]),
     [*WITH_DATA, "data.path=d.jsonl"], ("d.jsonl:1: missing field 'prompt'", "set data.prompt_field")),
    ("data-csv-missing-column", write("d.csv", "question,answer\n1+1=,2\n"), [*WITH_DATA, "data.path=d.csv"],
     ("d.csv: row 1: missing field 'prompt'", "set data.prompt_field")),
    ("data-every-row-too-long", jsonl("d.jsonl", [{"prompt": "x" * 200, "response": "y"}] * 40),
     [*WITH_DATA, "data.path=d.jsonl", "data.max_seq_len=16"],
     ("no training example has a token to train on after truncation to data.max_seq_len=16", "raise data.max_seq_len")),
    ("data-too-few-rows", jsonl("d.jsonl", [ROW] * 3), [*WITH_DATA, "data.path=d.jsonl"],
     ("data: the 1 training rows make no full global batch of 16", "use more data")),
    ("data-txt-file", write("d.txt", "1+1=2\n"), [*WITH_DATA, "data.path=d.txt"],
     ("data.path:", "unsupported file type '.txt'", ".jsonl, .json, .parquet, .csv")),
    ("data-folder-not-a-dataset", write("d/a.txt", "x"), [*WITH_DATA, "data.path=d"],
     ("data.path:", "not a folder written by Dataset.save_to_disk")),
    ("data-chat-without-template",
     both(model_config("m"), tokenizer_files("m", chat=False),
          jsonl("d.jsonl", [{"messages": [{"role": "user", "content": "1+1="},
                                          {"role": "assistant", "content": "2"}]}])),
     [*WITH_DATA, "model.path=m", "data.path=d.jsonl", "data.format=chat"],
     ("data.format: 'chat' needs a tokenizer with a chat template", "data.format: instruction")),
    # --- classification (train.task=classification: the embedded classification default, its data replaced)
    ("cls-label-not-in-labels",
     jsonl("d.jsonl", [{"text": "t one", "label": "a"}, {"text": "t two", "label": "b"},
                       {"text": "t three", "label": "c"}] * 4),
     [*WITH_DATA, "train.task=classification", "data.path=d.jsonl", "data.labels=[a, b]"],
     ("d.jsonl:3: field 'label': label 'c' is not in data.labels (a, b)", "add it there")),
    ("cls-label-field-missing", jsonl("d.jsonl", [{"text": "t one", "label": "a"}, {"text": "t two", "class": "b"}]),
     [*WITH_DATA, "train.task=classification", "data.path=d.jsonl"],
     ("d.jsonl:2: missing field 'label'", "set data.label_field")),
    ("cls-label-id-out-of-range", jsonl("d.jsonl", [{"text": "t one", "label": 0}, {"text": "t two", "label": 5}]),
     [*WITH_DATA, "train.task=classification", "data.path=d.jsonl", "data.labels=[a, b]"],
     ("d.jsonl:2: field 'label': label id 5 is out of range", "0-1")),
    ("cls-one-class", jsonl("d.jsonl", [{"text": f"t {i}", "label": "spam"} for i in range(10)]),
     [*WITH_DATA, "train.task=classification", "data.path=d.jsonl"],
     ("d.jsonl: every row has label 'spam'", "at least two classes", "'label'")),
    ("cls-text-too-long-without-truncate",
     jsonl("d.jsonl", [{"text": "short", "label": "a"}, {"text": "b" * 10, "label": "b"}] * 3
           + [{"text": "x" * 100, "label": "a"}] + [{"text": "short", "label": "b"}] * 3),
     [*WITH_DATA, "train.task=classification", "data.path=d.jsonl", "data.truncate=false", "data.max_seq_len=32"],
     ("d.jsonl:7: 100 tokens, more than data.max_seq_len=32", "data.truncate=true")),
    ("cls-task-with-instruction-data", None, ["plan", "train.task=classification", "data.format=instruction"],
     ("train.task classification needs data.format: classification",)),
    ("cls-packing", None, ["plan", "train.task=classification", "data.packing=true"],
     ("data.packing:", "set data.packing=false")),
    # --- forgetting: eval.general_data and data.replay
    ("general-data-missing", None, [*WITH_DATA, "eval.general_data=nope.jsonl"],
     ("eval.general_data: nope.jsonl: no such file or folder",)),
    ("general-data-without-text", jsonl("g.jsonl", [{"body": "some text"}]), [*WITH_DATA, "eval.general_data=g.jsonl"],
     ("eval.general_data:", "g.jsonl:1: missing field 'text'", "set eval.general_text_field")),
    ("replay-file-missing", None, [*WITH_DATA, "data.replay.path=nope.jsonl", "data.replay.fraction=0.2"],
     ("data.replay.path: nope.jsonl: no such file or folder",)),
    ("replay-fraction-out-of-range", None, ["plan", "data.replay.path=g.jsonl", "data.replay.fraction=1.5"],
     ("data.replay.fraction: must be < 1.0, got 1.5",)),
    ("replay-without-fraction", None, ["plan", "data.replay.path=g.jsonl"], ("data.replay.fraction: Field required",)),
    ("general-data-with-a-classifier", None, ["plan", "train.task=classification", "eval.general_data=g.jsonl"],
     ("eval.general_data", "a classifier has no LM head")),
    # --- Kubernetes
    ("k8s-without-image", None, ["k8s", "--dry-run"], ("cluster.k8s.image: required by launcher k8s",)),
    ("k8s-stop-does-not-fit-torchruns-kill", slow_claim, ["k8s", "--dry-run", K8S_IMAGE],
     ("does not fit under torchrun's 30 s worker kill", "lower train.save_every_steps",
      "cluster.k8s.grace_period_s")),
    ("k8s-grace-shorter-than-the-stop", slow_claim, ["k8s", "--dry-run", K8S_IMAGE, "cluster.k8s.grace_period_s=20"],
     ("cluster.k8s.grace_period_s: 20 s is shorter than the stop checkpoint's forecast",)),
    ("k8s-submit-without-kubectl", no_kubectl, ["k8s", "--submit", K8S_IMAGE], ("--submit: kubectl is not on PATH",)),
    ("k8s-unknown-flavor", None, ["k8s", "--dry-run", K8S_IMAGE, "--flavor", "pytorchjob"],
     ("--flavor", "'pytorchjob' is not one of 'trainjob', 'jobset'")),
    # --- CLI flags
    ("ds-config-flags-with-a-job", JOB, ["ds-config", "job.yaml", "--stage", "3"],
     ("--stage: not used with a job file", "parallel.zero_stage=3")),
    ("plan-bad-gpu-memory", None, ["plan", "--gpu-memory", "lots"],
     ("launcher plan: Invalid value for '--gpu-memory': 'lots'", "80GiB", "launcher plan --help")),
    ("report-unknown-format", mkdir("r"), ["report", "--format", "xml", "r"],
     ("launcher report: Invalid value for '--format' / '-f': 'xml'", "'table'", "launcher report --help")),
    ("unknown-command", None, ["trian"], ("launcher: No such command 'trian'", "launcher --help")),
    ("resume-without-a-run", None, ["run", "--resume", CPU], ("--resume: no run of job 'demo'", "without --resume")),
    # --- run directories
    ("run-dir-under-a-file", write("afile", "x"), ["run", "--run-dir", "afile/run", CPU],
     ("--run-dir:", "afile is a file", "under a folder")),
    ("run-dir-is-a-file", write("afile", "x"), ["run", "--run-dir", "afile", CPU],
     ("launcher run: Invalid value for '--run-dir'", "is a file")),
    ("output-dir-under-a-file", write("afile", "x"), ["run", "output_dir=afile/runs", CPU],
     ("output_dir:", "afile is a file", "under a folder")),
    ("run-dir-read-only", read_only("ro"), ["run", "--run-dir", "ro/run", CPU],
     ("--run-dir:", "ro is on a read-only file system", "writable disk")),
    ("run-bad-data-leaves-no-run-dir", write("d.jsonl", ""), ["run", "--run-dir", "run", CPU, "data.path=d.jsonl"],
     ("d.jsonl: the file is empty",)),
    ("run-bad-data-leaves-no-output-dir", write("d.jsonl", ""), ["run", CPU, "data.path=d.jsonl"],
     ("d.jsonl: the file is empty",)),
    ("report-empty-folder", mkdir("empty"), ["report", "empty"],
     ("empty: not a run directory (no plan.json)", "pass a folder made by launcher run or launcher slurm")),
    ("report-damaged-plan", run_dir("r", "{not json"), ["report", "r"],
     ("r/plan.json: not valid JSON", "the run directory is damaged")),
    ("status-missing-path", None, ["status", "nope"], ("nope: not a run directory", "launcher run")),
    ("logs-not-a-run", mkdir("empty"), ["logs", "empty"], ("empty: not a run directory", "launcher run")),
    ("cancel-not-a-run", mkdir("empty"), ["cancel", "empty"], ("empty: not a run directory", "launcher run")),
    ("cancel-never-submitted", run_dir("r"), ["cancel", "r"],
     ("r: no Slurm job recorded", "launcher slurm --submit")),
    # --- the forecast: calibration, hourly intensity, start window
    ("plan-calibrate-and-no-calibration", run_dir("r"), ["plan", "--calibrate", "r", "--no-calibration"],
     ("--calibrate and --no-calibration", "give one of them")),
    ("plan-start-window-without-intensity", None, ["plan", GPU_PLAN, "train.max_steps=10", "--start-window", "24h"],
     ("--start-window: the job names no hourly intensity forecast", "report.intensity_forecast")),
    ("plan-start-window-bad-duration", None, ["plan", "--start-window", "soon"],
     ("Invalid value for '--start-window': 'soon'", "24h")),
    ("intensity-csv-missing", None, ["plan", GPU_PLAN, "train.max_steps=10", "report.intensity_forecast=ci.csv",
                                     "--start-window", "24h"],
     ("report.intensity_forecast: ci.csv: cannot read it", "timestamp,g_co2e_per_kwh")),
    ("intensity-csv-bad-header", write("ci.csv", "time,co2\n2026-01-01T00:00:00Z,100\n"),
     ["plan", GPU_PLAN, "train.max_steps=10", "report.intensity_forecast=ci.csv", "--start-window", "24h"],
     ("ci.csv: line 1: the header must be timestamp,g_co2e_per_kwh",)),
    ("intensity-csv-bad-row", write("ci.csv", "timestamp,g_co2e_per_kwh\n2026-01-01T00:00:00Z,100\nnoon,low\n"),
     ["plan", GPU_PLAN, "train.max_steps=10", "report.intensity_forecast=ci.csv", "--start-window", "24h"],
     ("ci.csv: line 3: 'noon,low' is not a timestamp and a number",)),
    ("intensity-csv-in-the-past", write("ci.csv", "timestamp,g_co2e_per_kwh\n2020-01-01T00:00:00Z,100\n"),
     ["slurm", GPU_PLAN, "train.max_steps=10", "report.intensity_forecast=ci.csv", "--carbon-aware", "--dry-run"],
     ("ci.csv: covers 2020-01-01T00:00:00Z to 2020-01-01T00:00:00Z", "not a job of", "starts before now")),
    ("slurm-start-window-without-carbon-aware", None, ["slurm", "--start-window", "24h", "--dry-run"],
     ("--start-window: add --carbon-aware",)),
]


def _id(case) -> str:
    return case.id if hasattr(case, "id") else case[0]


def test_the_catalogue_is_large_and_named_once():
    ids = [_id(c) for c in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("case_id, setup, argv, expected", CASES, ids=[_id(c) for c in CASES])
def test_bad_input(case_id, setup, argv, expected, tmp_path, monkeypatch, capsys):
    from launcher.cli import main

    work = tmp_path / "work"
    work.mkdir()
    systmp = tmp_path / "systmp"  # temporary folders (plan --with-data) must be gone afterwards too
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    monkeypatch.chdir(work)

    def launched(*a, **k):
        raise AssertionError(f"{case_id}: torchrun was started; this input must fail before launch")

    started, cancelled = [], []

    class Prestarted:
        """torchrun started while the data is tokenized (its ranks wait for the go): cancelled on
        bad input, never let go. The real one: tests/integration/test_train.py."""

        def __init__(self, argv, env, run_dir, prestart=None):
            started.append(prestart)

        def runs(self, argv, env):
            return True

        def cancel(self):
            cancelled.append(True)

        def go(self):
            launched()

    monkeypatch.setattr("launcher.execute.local.launch_local", launched)
    monkeypatch.setattr("launcher.execute.local.Torchrun", Prestarted)
    ctx = Ctx(work, monkeypatch)
    try:
        if setup is not None:
            setup(ctx)
        before = _tree(work)
        monkeypatch.setattr(sys, "argv", ["launcher", *argv])
        with pytest.raises(SystemExit) as ex:
            main()
        err = capsys.readouterr().err
        after = _tree(work)
    finally:
        for undo in reversed(ctx.cleanups):
            undo()
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert ex.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert after == before, f"left behind: {sorted(after - before)}"
    assert len(cancelled) == len(started), f"{case_id}: a torchrun started early was not ended"
    # torch makes its own cache folder (torchinductor_<user>) in the temp folder the first time a
    # process imports torch._dynamo (which counting a model's parameters does on a cold modelinfo
    # cache): torch's cache, kept for every later process, not something launcher half-wrote
    left = sorted(p.name for p in systmp.iterdir() if not p.name.startswith("torchinductor_"))
    assert not left, f"left in the temp folder: {left}"


@pytest.mark.parametrize("capability,refused", [((7, 0), True), ((7, 5), True), ((8, 0), False), ((9, 0), False)])
def test_bf16_on_a_gpu_without_it_is_refused(capability, refused):
    """The GPU's compute capability decides: bf16 arithmetic came with Ampere (8.0); a V100 (7.0)
    or T4 (7.5) is refused in one line that proposes fp16 under ZeRO, or fp32."""
    from launcher.prepare import bf16_problem

    problem = bf16_problem("bf16", "cuda", capability)
    assert (problem is not None) == refused
    if refused:
        assert problem.startswith("model.dtype: bf16 needs a GPU of compute capability 8.0")
        assert f"{capability[0]}.{capability[1]}" in problem and "\n" not in problem
    assert bf16_problem("fp16", "cuda", capability) is None and bf16_problem("bf16", "cpu", None) is None


def test_mlflow_starts_where_the_check_lets_it(tmp_path, monkeypatch):
    """The check follows MLflow itself: the file store it refuses starts once
    MLFLOW_ALLOW_FILE_STORE=true, and a SQLite file in an existing folder starts."""
    from mlflow.tracking import MlflowClient

    from launcher.tracker_checks import mlflow_refuses_file_store, mlflow_uri_problem

    store = f"file:{tmp_path / 'mlruns'}"
    if mlflow_refuses_file_store():
        assert mlflow_uri_problem(store, {}) is not None
        with pytest.raises(Exception, match="maintenance mode"):
            MlflowClient(tracking_uri=store).search_experiments()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert mlflow_uri_problem(store, {"MLFLOW_ALLOW_FILE_STORE": "true"}) is None
    MlflowClient(tracking_uri=store).create_experiment("allowed")
    db = f"sqlite:///{tmp_path / 'm.db'}"
    assert mlflow_uri_problem(db, {}) is None
    MlflowClient(tracking_uri=db).create_experiment("sqlite")


@pytest.mark.parametrize("name", ["Llama 3.1 — 8B fine-tune!", "$(rm -rf /)", "a" * 200, "-x-", "..", "日本語",
                                  "job\nname", "UPPER_case.name"])
def test_hostile_job_names_become_valid_kubernetes_names(name):
    """launcher k8s: a job name is YAML data, never shell; it becomes a DNS-1123 name (a hash suffix when
    it had to change) and a valid label value, and the manifest stays one the CRD schema accepts."""
    import re

    from launcher.render.k8s import NAME_MAX, dns_name, label_value

    n = dns_name(name)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", n) and len(n) <= NAME_MAX, n
    assert dns_name(name) == n and dns_name(name + "x") != n  # stable, and distinct names stay apart
    v = label_value(name)
    assert len(v) <= 63 and re.fullmatch(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", v), v
    from tests.unit.test_k8s import render, validate

    cm, job = render(f"name={json.dumps(name)}", flavor="jobset")  # the whole manifest stays valid
    assert job["metadata"]["name"] == n and cm["metadata"]["name"] == f"{n}-run"
    validate(job, "jobset")
