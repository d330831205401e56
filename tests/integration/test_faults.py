"""Faults lose nothing: a killed rank restarts by itself from the newest verified checkpoint, a hung
rank is caught and explained, a corrupt checkpoint is passed over, a full disk is one clear line,
SIGTERM checkpoints, one run per run directory, and a completed run is left alone.

Every fault here is real: kill -9 / SIGSTOP / SIGTERM of processes that torchrun started, a file
truncated on disk, a tmpfs that is really full. The reference for "lost nothing" is the same job
run without a fault: same data order (it depends only on the step), same optimizer and RNG state
from the checkpoint, so the per-step losses agree to 1e-4 (fp32; reductions may reorder).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launcher import rundir
from tests.helpers import missing_prerequisite, rank_pid
from tests.helpers import rank_pids as helper_rank_pids

pytestmark = pytest.mark.slow

RTOL = 1e-4
COMMON = [
    "train.max_steps=6", "data.num_samples=400", "train.eval_accuracy_samples=0", "train.global_batch_size=8",
    "train.micro_batch_size=2", "train.save_every_steps=1", "train.keep_last_checkpoints=2", "cluster.device=cpu",
    "cluster.cpu_procs_per_node=2", "train.method=full", "model.dtype=fp32",
]
STRATEGY = {"zero3": ["parallel.strategy=zero", "parallel.zero_stage=3"], "fsdp": ["parallel.strategy=fsdp"]}


def launcher_run(run_dir: Path, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "launcher", "run", "--run-dir", str(run_dir), *args],
                         capture_output=True, text=True, timeout=timeout, cwd=run_dir.parent)
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r.model_dump() for r in rundir.read_metrics(run_dir) if r.kind == kind]


def losses(run_dir: Path) -> list[float]:
    train = records(run_dir, "train")
    assert [r["step"] for r in train] == list(range(1, len(train) + 1)), "every step exactly once"
    return [r["loss"] for r in train]


def rank_pids(run_dir: Path) -> list[int]:
    """The pids of the run's live ranks, by rank."""
    return [pid for _, pid in sorted(helper_rank_pids(run_dir).items())]


def when_step(run_dir: Path, step: int, action, timeout: float = 300) -> threading.Thread:
    """Run ``action()`` once the run has logged train step ``step`` (first attempt)."""
    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (run_dir / rundir.METRICS).exists() and any(r["step"] >= step for r in records(run_dir, "train")):
                action()
                return
            time.sleep(0.05)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    out = {}
    for name, layout in STRATEGY.items():
        launcher_run(root / name, *COMMON, *layout)
        out[name] = root / name
    return out


def kill_at_steps(run_dir: Path, steps: list[int], pick, timeout: float = 300) -> tuple[threading.Thread, list[int]]:
    """SIGKILL one rank (``pick(pids)``) once the run has logged each step of ``steps``, one kill
    per attempt: kill k waits for attempt k's start record, so that every kill hits a new attempt."""
    killed: list[int] = []

    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(killed) < len(steps):
            if (run_dir / rundir.METRICS).exists():
                recs = rundir.read_metrics(run_dir)
                attempts = sum(1 for r in recs if r.kind == "start")
                if attempts == len(killed) + 1 and any(r.kind == "train" and r.step >= steps[len(killed)] for r in recs):
                    pids = rank_pids(run_dir)
                    if pids:
                        pid = pick(pids)
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
            time.sleep(0.05)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t, killed


@pytest.mark.parametrize("strategy", ["fsdp", "zero3"])
def test_killed_ranks_restart_by_themselves_and_lose_nothing(reference, tmp_path, strategy):
    """Three kill -9 in one run, each at a random step (of the 6) of a random rank, each in a new
    attempt: torchrun restarts the ranks three times, each from the newest checkpoint whole when
    the rank died, and the losses are the uninterrupted run's."""
    d = tmp_path / f"kill-{strategy}"
    rng = random.Random(strategy)
    steps = sorted(rng.sample(range(1, 6), 3))
    d.parent.mkdir(parents=True, exist_ok=True)
    watcher, killed = kill_at_steps(d, steps, rng.choice)
    out = launcher_run(d, *COMMON, *STRATEGY[strategy], "train.max_restarts=3")
    watcher.join(timeout=5)
    assert len(killed) == 3, f"the run ended before every kill at steps {steps}: {killed}"
    assert (d / rundir.COMPLETED).exists(), out.stdout[-2000:]
    starts = records(d, "start")
    assert [s["restart"] for s in starts] == [0, 1, 2, 3], "three automatic restarts (torchrun's)"
    # each from the newest checkpoint that was whole when its rank died
    for start, step in zip(starts[1:], steps):
        assert (start["resumed_from_step"] or 0) <= step, (starts, steps)
    got, ref = losses(d), losses(reference[strategy])
    assert len(got) == 6 and got == pytest.approx(ref, rel=RTOL)
    report = json.loads((d / rundir.REPORT_JSON).read_text())
    assert report["restarts"]["automatic_restarts"] == 3 and report["restarts"]["attempts"] == 4


def test_a_stopped_rank_makes_the_watchdog_dump_stacks_and_end_the_job(tmp_path):
    d = tmp_path / "hang"
    d.mkdir()
    timeout_s = 15
    stopped = {}

    def stop():
        pid = rank_pids(d)[-1]
        os.kill(pid, signal.SIGSTOP)
        stopped.update(pid=pid, at=time.monotonic())

    watcher = when_step(d, 2, stop)
    out = launcher_run(d, *COMMON, *STRATEGY["fsdp"], "train.max_steps=100", f"train.hang_timeout_s={timeout_s}",
                       check=False)
    watcher.join(timeout=5)
    assert stopped, "no rank was stopped"
    assert out.returncode != 0
    stacks = sorted((d / rundir.LOGS).glob("stacks-rank*.txt"))
    assert len(stacks) == 1, "the one live rank dumped its stacks"  # the stopped one cannot
    fired = stacks[0].stat().st_mtime
    assert fired - time.time() + (time.monotonic() - stopped["at"]) <= timeout_s + 30
    text = stacks[0].read_text()
    assert "Thread" in text and "in train_main" in text, text[:2000]  # every thread, the loop's frame among them
    hang = json.loads(next((d / rundir.LOGS).glob("hang-rank*.json")).read_text())
    assert hang["behind"] and hang["behind"] != [hang["rank"]], "the rank that did not arrive is named"
    assert "did not arrive" in out.stderr + out.stdout
    # the stopped rank cannot take torchrun's SIGTERM: the watchdog kills it, torchrun does not wait 30 s
    assert f"(pid {stopped['pid']}) does not respond; killed" in out.stderr + out.stdout


def test_sigterm_checkpoints_and_stops(tmp_path):
    d = tmp_path / "term"
    d.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "run", "--run-dir", str(d), *COMMON,
                             *STRATEGY["zero3"], "train.max_steps=100", "train.save_every_steps=100"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    when_step(d, 2, lambda: proc.send_signal(signal.SIGTERM)).join(timeout=300)
    out, _ = proc.communicate(timeout=300)
    assert (d / rundir.PREEMPTED).exists(), out[-3000:]
    assert "SIGTERM: checkpointing after this step" in out
    ckpt = ckpts(d)
    assert len(ckpt) == 1 and (ckpt[0] / rundir.MANIFEST).exists()
    assert records(d, "end")[-1]["status"] == "preempted"


def ckpts(run_dir: Path) -> list[Path]:
    return sorted((run_dir / rundir.CHECKPOINTS).glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
    d = tmp_path / "trunc"
    d.mkdir()
    watcher = when_step(d, 4, lambda: (d / rundir.STOP).write_text(""))
    launcher_run(d, *COMMON, *STRATEGY["fsdp"])
    watcher.join(timeout=5)
    saved = ckpts(d)
    assert (d / rundir.PREEMPTED).exists() and len(saved) == 2, saved  # keep_last_checkpoints=2
    newest = saved[-1]
    victim = max((p for p in newest.rglob("*") if p.is_file() and p.name != rundir.MANIFEST),
                 key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    (d / rundir.STOP).unlink()
    (d / rundir.PREEMPTED).unlink()
    out = launcher_run(d)
    assert f"checkpoint {newest.name} is incomplete or corrupt" in out.stdout + out.stderr
    starts = records(d, "start")
    assert starts[-1]["resumed_from_step"] == int(saved[0].name.split("-")[1])
    assert losses(d) == pytest.approx(losses(reference["fsdp"]), rel=RTOL)


def test_a_full_disk_during_a_save_is_one_line_and_the_previous_checkpoint_stays(tmp_path):
    if os.geteuid() != 0:
        missing_prerequisite("mounting a tmpfs needs root")
    d = tmp_path / "full"
    (d / rundir.CHECKPOINTS).mkdir(parents=True)
    mnt = d / rundir.CHECKPOINTS
    # the tiny model's checkpoint is ~4 MiB (fp32 weights and Adam's states): room for one, not two
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], check=True)
    try:
        out = launcher_run(d, *COMMON, *STRATEGY["fsdp"], "train.save_every_steps=2", check=False)
        assert out.returncode != 0
        lines = [ln for ln in (out.stdout + out.stderr).splitlines() if "checkpoint at step 4" in ln]
        assert lines, (out.stdout + out.stderr)[-3000:]
        assert "the previous checkpoint step-2 is intact" in lines[0] and "Traceback" not in lines[0]
        saved = ckpts(d)
        assert [p.name for p in saved] == ["step-2"] and not list(mnt.glob(".tmp-*"))
        from launcher.train.manifest import check_manifest

        assert check_manifest(saved[0]) is None, "the previous checkpoint verifies"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_disk_that_fills_during_the_write_is_one_line_and_the_previous_checkpoint_stays(tmp_path):
    """The space check passes (64 MiB free for a 4 MiB checkpoint) and the write itself fails
    half-way: the tmpfs runs out of inodes, a real ENOSPC from the kernel in the middle of DCP's
    save. The first checkpoint takes 10 inodes (step-2/, engine/, two .distcp shards, .metadata,
    lr_scheduler.pt, two RNG files, trainer_state.json, manifest.json), the mount's root one: 14
    leave the second save room for its folders and rank 0's shard, not rank 1's."""
    if os.geteuid() != 0:
        missing_prerequisite("mounting a tmpfs needs root")
    d = tmp_path / "full-inodes"
    mnt = d / rundir.CHECKPOINTS
    mnt.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=14", "tmpfs", str(mnt)], check=True)
    try:
        out = launcher_run(d, *COMMON, *STRATEGY["fsdp"], "train.save_every_steps=2", check=False)
        text = out.stdout + out.stderr
        assert out.returncode != 0
        lines = [ln for ln in text.splitlines() if "checkpoint at step 4" in ln]
        assert lines, text[-3000:]
        assert "no space left on the device" in lines[0] and "needs about" not in lines[0], "the write failed"
        assert "the previous checkpoint step-2 is intact" in lines[0]
        # no rank's traceback (torchrun's own summary of a failed worker still follows the line)
        assert "CheckpointException" not in text and "OSError" not in text, text[-3000:]
        saved = ckpts(d)
        assert [p.name for p in saved] == ["step-2"] and not list(mnt.glob(".tmp-*")), "partial folder removed"
        from launcher.train.manifest import check_manifest

        assert check_manifest(saved[0]) is None, "the previous checkpoint verifies"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_one_run_per_run_directory_and_a_completed_run_is_left_alone(reference, tmp_path):
    d = reference["zero3"]
    final = {p.name: p.stat().st_mtime_ns for p in (d / rundir.FINAL).iterdir()}
    again = launcher_run(d)  # `launcher run RUN_DIR`-style: the stored job
    assert again.returncode == 0 and "complete (COMPLETED); nothing to run" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (d / rundir.FINAL).iterdir()} == final, "final/ untouched"
    folder = subprocess.run([sys.executable, "-m", "launcher", "run", str(d)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert folder.returncode == 0 and "nothing to run" in folder.stdout, folder.stderr

    busy = tmp_path / "busy"
    busy.mkdir()
    first = subprocess.Popen([sys.executable, "-m", "launcher", "run", "--run-dir", str(busy), *COMMON,
                              *STRATEGY["fsdp"], "train.max_steps=100"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (busy / rundir.LOCK).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        second = launcher_run(busy, *COMMON, *STRATEGY["fsdp"], check=False)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"in use by another launcher run (pid {first.pid} on" in lines[0], lines
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    # a stale lock (its process gone) is taken over
    (busy / rundir.LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": 2**22 + 7, "time": 0}))
    launcher_run(busy, "train.max_steps=2")


# Randomness the loss depends on: LoRA dropout on every rank's own RNG stream, and rows shuffled
# anew in each of several epochs. A resume that did not restore each rank's RNG state would draw
# other dropout masks from the resumed step on.
RANDOM = ["train.method=lora", "train.lora.dropout=0.1", "train.lora.r=4", "parallel.strategy=zero",
          "parallel.zero_stage=2", "data.num_samples=40", "data.packing=false", "train.epochs=3",
          "train.max_steps=12", "train.save_every_steps=100"]
RNG_RTOL = 1e-5


def test_a_run_stopped_through_stop_resumes_with_its_rng_and_ends_as_if_never_stopped(tmp_path):
    """The Slurm batch shell's STOP marker stops a run at a checkpoint; `launcher run RUN_DIR`
    then clears that attempt's STOP and PREEMPTED (as the batch script does) and trains to the
    end. Losses equal the uninterrupted run's to 1e-5, across epochs, with dropout; another
    seed gives other losses, so the equality is no accident."""
    whole = tmp_path / "whole"
    launcher_run(whole, *COMMON, *RANDOM)
    reference = losses(whole)
    assert len(reference) == 12 and records(whole, "start")[0]["train_rows"] // 8 <= 4, "three epochs"

    d = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "run", "--run-dir", str(d), *COMMON, *RANDOM],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    when_step(d, 5, lambda: (d / rundir.STOP).touch()).join(timeout=300)
    out, _ = proc.communicate(timeout=300)
    assert (d / rundir.PREEMPTED).exists() and (d / rundir.STOP).exists(), out[-3000:]
    stopped_at = len(records(d, "train"))
    assert 5 <= stopped_at < 12 and ckpts(d)[-1].name == f"step-{stopped_at}"

    again = launcher_run(d)
    assert "cleared the last attempt's STOP and PREEMPTED" in again.stdout
    assert (d / rundir.COMPLETED).exists() and not (d / rundir.STOP).exists()
    assert records(d, "start")[-1]["resumed_from_step"] == stopped_at
    assert losses(d) == pytest.approx(reference, rel=RNG_RTOL, abs=0)

    other = tmp_path / "seed1"
    launcher_run(other, *COMMON, *RANDOM, "train.seed=1", "train.max_steps=3")
    assert all(abs(a - b) > 1e-3 for a, b in zip(losses(other), reference))


def pid_of_rank(run_dir: Path, rank: int) -> int:
    pid = rank_pid(run_dir, rank)
    assert pid is not None, f"no process of rank {rank} for {run_dir}"
    return pid


def test_a_throttled_rank_is_named_in_the_reports_per_rank_table(tmp_path):
    """Rank 1 is stopped and continued every few milliseconds (SIGSTOP/SIGCONT, stopped three
    quarters of the time): a real slow rank. The report's per-rank table names it as the slowest:
    it computes longest and waits least, while rank 0 waits for it at the end of every step.
    (Stopped half of the time, beside the other worker's ranks, it computed only 1.14x and 1.29x
    rank 0's median in two runs: the scheduler gave it a core at once each time it was continued.)"""
    d = tmp_path / "straggler"
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "run", "--run-dir", str(d), *COMMON,
                             *STRATEGY["zero3"], "train.max_steps=12", "train.save_every_steps=100"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)

    def throttle():
        pid = pid_of_rank(d, 1)
        while proc.poll() is None:
            try:
                os.kill(pid, signal.SIGSTOP)
                time.sleep(0.03)
                os.kill(pid, signal.SIGCONT)
                time.sleep(0.01)
            except ProcessLookupError:
                return

    watcher = when_step(d, 1, throttle)
    out, _ = proc.communicate(timeout=600)
    watcher.join(timeout=10)
    assert proc.returncode == 0, out[-3000:]
    st = json.loads((d / rundir.REPORT_JSON).read_text())["stragglers"]
    by_rank = {r["rank"]: r for r in st["per_rank"]}
    assert st["slowest_rank"] == 1 and st["slowest_node"] == by_rank[1]["host"]
    assert by_rank[1]["compute_median_s"] > 1.3 * by_rank[0]["compute_median_s"], by_rank
    assert by_rank[0]["wait_median_s"] > by_rank[1]["wait_median_s"], by_rank
    md = (d / rundir.REPORT_MD).read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| rank 1"))
    assert "<- slowest" in row and "compute" in row and "waiting" in row
