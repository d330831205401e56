"""Experiment trackers (report.trackers): one tracker run across a stop, a resume and an automatic
restart, with every step once.

* (slow) a 2-rank LoRA run of a hub model id (offline, from a cache in the Hub's layout) with
  TensorBoard, MLflow and W&B is stopped after step 1 (RUN_DIR/STOP), resumed with `launcher run
  RUN_DIR`, and its global rank 0 killed after step 4 (torchrun restarts it from the step-3
  checkpoint, so steps are done again). TensorBoard's EventAccumulator reads one train loss per
  step, equal to metrics.jsonl's; MLflow holds one run with each step once and the report's
  figures; W&B's offline runs in the run directory all carry the one kept id;
* a tracker whose package is not installed is refused before launch in one line (exit 2), and
  so is a tracker name launcher does not know.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launcher import rundir
from tests.helpers import demo_hub_cache, rank_pid

MODEL_ID, DATA_ID = "tiny-org/tiny-llama", "tiny-org/arithmetic"
STEPS = 6
JOB = [f"model.path={MODEL_ID}", f"data.path=hf://datasets/{DATA_ID}", "model.dtype=fp32", "train.method=lora",
       "cluster.device=cpu", "cluster.cpu_procs_per_node=2", "parallel.zero_stage=0", f"train.max_steps={STEPS}",
       "train.global_batch_size=8", "train.micro_batch_size=4", "train.eval_accuracy_samples=0",
       "data.eval_fraction=0.05", "train.eval_every_steps=2", "train.save_every_steps=3", "train.max_restarts=1",
       "report.gpu_hour_price=2.5", "report.trackers=[tensorboard,mlflow,wandb]"]


def tracker_env(root: Path) -> dict[str, str]:
    """Offline hub cache; no tracker settings from this machine (MLflow's store is the run
    directory's, W&B has no API key: offline), W&B's own folders under ``root``."""
    env = {k: v for k, v in demo_hub_cache(root, MODEL_ID, DATA_ID).items()
           if not k.startswith(("MLFLOW_", "WANDB_"))}
    env.update(WANDB_CONFIG_DIR=str(root / "wandb-config"), WANDB_CACHE_DIR=str(root / "wandb-cache"),
               WANDB_DATA_DIR=str(root / "wandb-data"))
    return env


def launcher(env, *args, cwd, check=True, timeout=600) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, env=env,
                         cwd=cwd, timeout=timeout)
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def records(run_dir: Path, cls) -> list:
    return rundir.read_metrics(run_dir).of(cls)


def rank0_pid(run_dir: Path):
    """The pid of global rank 0, or None."""
    return rank_pid(run_dir, 0)


def kill_rank0_after(run_dir: Path, step: int, killed: dict, timeout: float = 300) -> threading.Thread:
    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(r.step >= step for r in records(run_dir, rundir.TrainRecord)):
                pid = rank0_pid(run_dir)
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    killed["pid"] = pid
                return
            time.sleep(0.05)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.mark.slow
def test_one_tracker_run_with_every_step_across_a_stop_a_resume_and_a_restart(tmp_path):
    env = tracker_env(tmp_path)
    run_dir = tmp_path / "tracked run"  # a space: the MLflow store's URI is quoted
    run_dir.mkdir()
    (run_dir / rundir.STOP).write_text("")  # every rank stops after step 1, at a checkpoint
    out = launcher(env, "run", *JOB, "--run-dir", str(run_dir), cwd=tmp_path)
    assert (run_dir / rundir.PREEMPTED).exists(), out.stdout[-3000:]
    first = json.loads((run_dir / rundir.TRACKERS_JSON).read_text())
    (run_dir / rundir.STOP).unlink()
    (run_dir / rundir.PREEMPTED).unlink()

    killed: dict = {}
    watcher = kill_rank0_after(run_dir, 4, killed)
    out = launcher(env, "run", str(run_dir), cwd=tmp_path)
    watcher.join(timeout=5)
    assert killed, "rank 0 was not killed"
    assert (run_dir / rundir.COMPLETED).exists(), out.stdout[-3000:]
    starts = records(run_dir, rundir.StartRecord)
    assert [s.resumed_from_step for s in starts] == [None, 1, 3], "stop at 1, resume, restart from step 3"
    kept = json.loads((run_dir / rundir.TRACKERS_JSON).read_text())
    assert kept == first, "the same tracker runs continue"

    train = records(run_dir, rundir.TrainRecord)
    assert [r.step for r in train] == list(range(1, STEPS + 1))
    loss = {r.step: r.loss for r in train}
    eval_steps = [r.step for r in records(run_dir, rundir.EvalRecord)]
    assert eval_steps == [0, 2, 4, 6]
    report = json.loads((run_dir / rundir.REPORT_JSON).read_text())
    figures = {"report/tokens_per_s": report["throughput"]["tokens_per_s"],
               "report/energy_kwh": report["energy"]["energy_kwh"]["total"],
               "report/emissions_kgco2e": report["energy"]["emissions_kg"], "report/cost": report["cost"]["total"]}
    if report["mfu"]["value"] is not None:
        figures["report/mfu"] = report["mfu"]["value"]

    # TensorBoard: one value per step (the restart's purge_step drops the killed attempt's step 4 on)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(run_dir / rundir.TENSORBOARD))
    tb.Reload()
    scalars = tb.Tags()["scalars"]
    tb_loss = tb.Scalars("train/loss")
    assert [e.step for e in tb_loss] == list(range(1, STEPS + 1))
    assert [e.value for e in tb_loss] == pytest.approx([loss[s] for s in range(1, STEPS + 1)], rel=1e-6)
    assert [e.step for e in tb.Scalars("eval/loss")] == eval_steps
    for key, value in figures.items():
        assert key in scalars, (key, scalars)
        assert tb.Scalars(key)[-1].value == pytest.approx(value, rel=1e-6)

    # MLflow: one run (not one per attempt, not one per rank), each step once
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=kept["mlflow"]["tracking_uri"])
    assert kept["mlflow"]["tracking_uri"].startswith("sqlite:///") and (run_dir / rundir.MLFLOW / rundir.MLFLOW_DB).is_file()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [kept["mlflow"]["run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    hist = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in hist) == list(range(1, STEPS + 1))
    # a step done again after the restart replays the same data and RNG state: MLflow keeps the first
    assert [m.value for m in sorted(hist, key=lambda m: m.step)] == pytest.approx(
        [loss[s] for s in range(1, STEPS + 1)], rel=1e-4)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval/loss")) == eval_steps
    for key, value in figures.items():
        assert run.data.metrics[key] == pytest.approx(value, rel=1e-9), key

    # W&B, offline: one folder per attempt and one for the report's figures (added after the job,
    # by the process that wrote the report, not by a rank), every one with the kept id
    wandb_id = kept["wandb"]["run_id"]
    attempts = sorted(p.name for p in (run_dir / rundir.WANDB).glob("offline-run-*"))
    assert len(attempts) == 4 and all(name.endswith(f"-{wandb_id}") for name in attempts), attempts
    assert all((run_dir / rundir.WANDB / name / f"run-{wandb_id}.wandb").is_file() for name in attempts)


def hidden(package: str) -> list[str]:
    """`python -m launcher` on a machine without ``package``: Python's own import blocker
    (sys.modules[name] = None) hides it from import and from importlib.util.find_spec."""
    return [sys.executable, "-c", f"import sys; sys.modules[{package!r}] = None; sys.argv[0] = 'launcher'; "
            "from launcher.cli import main; main()"]


def test_a_tracker_that_is_not_installed_or_not_known_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run([*hidden("tensorboard"), "run", "--dry-run", "cluster.device=cpu",
                          "report.trackers=[tensorboard,mlflow]"], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines() == [
        "error: report.trackers: tensorboard is not installed here; pip install tensorboard (all of them: "
        "pip install 'launcher[trackers]'), or leave it out of report.trackers"]
    out = subprocess.run([*hidden("alembic"), "run", "--dry-run", "cluster.device=cpu", "report.trackers=mlflow"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 2 and "pip install mlflow-skinny sqlalchemy alembic" in out.stderr, out.stderr[-3000:]
    out = subprocess.run([sys.executable, "-m", "launcher", "plan", "report.trackers=[tensorboard,neptune]"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: embedded default job: report.trackers.1: Input should be 'tensorboard', 'mlflow' or 'wandb', "
        "got 'neptune'"]
