"""launcher slurm / status / logs / cancel against the real test Slurm cluster (2 nodes n1, n2 on
this machine; see tests/conftest.py and tests/slurm/setup.sh)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.execute.status import run_status
from launcher.execute.slurm import is_final, job_state, signal_batch

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

HOSTILE = "x $(touch pwned) `touch pwned` it's"


def launcher(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def submit(cwd: Path, run_dir: Path, *args: str) -> str:
    res = launcher("slurm", *args, "--run-dir", str(run_dir), "--submit", cwd=cwd)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "launcher status" in res.stdout and "launcher logs" in res.stdout
    return (run_dir / "slurm_job_id").read_text().strip()


def wait_state(job_id: str, *, until=is_final, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = job_state(job_id)
        if until(st["state"]) or time.monotonic() > deadline:
            return st
        time.sleep(1)


def job_logs(run_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted((run_dir / "logs").glob("*")))


def no_pwned_file(*dirs: Path) -> list[Path]:
    found = [p for d in dirs if d.is_dir() for p in d.rglob("pwned")]
    found += [p for p in (Path("/") / "pwned", Path.home() / "pwned", Path.cwd() / "pwned") if p.exists()]
    return found


@pytest.fixture(scope="module")
def preflight_run(slurm_cluster, tmp_path_factory):
    """A 2-node preflight-only job with a hostile job name and run dir, run to its end."""
    base = tmp_path_factory.mktemp("slurm preflight")
    run_dir = base / f"run {HOSTILE}"
    t0 = time.monotonic()
    job_id = submit(base, run_dir, f"name=preflight {HOSTILE}", "cluster.nodes=2", "cluster.device=cpu",
                    "cluster.cpu_procs_per_node=1", "cluster.slurm.env={GLOO_SOCKET_IFNAME: lo}",
                    "cluster.slurm.time='00:05:00'", "--preflight-only")
    st = wait_state(job_id)
    return {"base": base, "run_dir": run_dir, "job_id": job_id, "state": st, "elapsed_s": time.monotonic() - t0}


def test_preflight_runs_on_both_nodes_with_hostile_names(preflight_run):
    run_dir, st = preflight_run["run_dir"], preflight_run["state"]
    assert st["state"] == "COMPLETED", f"{st}\n{job_logs(run_dir)}"
    report = json.loads((run_dir / "logs" / "preflight.json").read_text())
    assert report["ok"] and report["world_size"] == 2
    assert len(report["ranks"]) == 2 and sorted(r["rank"] for r in report["ranks"]) == [0, 1]
    assert sorted(r["hostname"] for r in report["ranks"]) == ["n1", "n2"]
    out = run_dir / "logs" / f"slurm-{preflight_run['job_id']}.out"
    assert "preflight ok: 2 rank(s) on 2 node(s)" in out.read_text()
    assert not no_pwned_file(preflight_run["base"], Path("/var/lib/slurm-ci")), "a name was run by a shell"


def test_status_reports_completed_from_slurmctld_then_from_sacct(preflight_run):
    run_dir, job_id, base = preflight_run["run_dir"], preflight_run["job_id"], preflight_run["base"]
    res = launcher("status", str(run_dir), cwd=base)
    assert res.returncode == 0, res.stderr
    header, row = res.stdout.splitlines()
    assert header.split()[:3] == ["RUN", "JOB", "STATE"] and f"  {job_id}  " in row and "COMPLETED" in row
    assert "n[1-2]" in row
    # the test cluster forgets finished jobs after MinJobAge=10 s (+ its purge interval): then sacct answers
    deadline = time.monotonic() + 120
    while job_state(job_id)["source"] == "scontrol" and time.monotonic() < deadline:
        time.sleep(2)
    res = launcher("status", "--json", str(run_dir), cwd=base)
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)
    assert (st["source"], st["state"], st["nodes"], st["job_id"]) == ("sacct", "COMPLETED", "n[1-2]", job_id)
    # logs: the job's .out has the preflight line
    res = launcher("logs", str(run_dir), cwd=base)
    assert res.returncode == 0 and "preflight ok" in res.stdout


def test_cancel_ends_a_running_job_cancelled(slurm_cluster, tmp_path):
    run_dir = tmp_path / "long run"
    job_id = submit(tmp_path, run_dir, "name=long", "cluster.device=cpu", "cluster.cpu_procs_per_node=1",
                    "cluster.slurm.setup=['sleep 300']", "--preflight-only")
    st = wait_state(job_id, until=lambda s: s == "RUNNING" or is_final(s), timeout=60)
    assert st["state"] == "RUNNING", st
    res = launcher("cancel", str(run_dir), cwd=tmp_path)
    assert res.returncode == 0 and f"cancelled job {job_id}" in res.stdout, res.stderr
    st = wait_state(job_id, timeout=60)
    assert st["state"] == "CANCELLED", st
    assert run_status(run_dir)["state"] == "CANCELLED"


STAND_IN_TRAINER = """#!/bin/bash
# stands in for `python -m torch.distributed.run ... -m launcher train RUN_DIR`: keeps the trainer's
# side of the preemption protocol (poll STOP, write PREEMPTED, exit 0; resume on the requeued attempt)
prev=; for a; do [ "$prev" = train ] && RUN_DIR=$a; prev=$a; done
if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then
  echo "resumed, restart $SLURM_RESTART_COUNT"; date +%s > "$RUN_DIR/COMPLETED"; exit 0
fi
echo "attempt 1 on $(hostname): training"
for i in $(seq 1 1500); do [ -e "$RUN_DIR/STOP" ] && break; sleep 0.2; done
echo "saw STOP: checkpoint saved"; echo "step 3" > "$RUN_DIR/PREEMPTED"; exit 0
"""


def test_usr2_requeues_and_the_job_resumes_with_a_stand_in_trainer(slurm_cluster, tmp_path):
    """The script's side of preemption on real Slurm: USR2 to the batch shell (what
    --signal=B:USR2@N sends) -> STOP -> PREEMPTED -> scontrol requeue -> second attempt."""
    fake = tmp_path / "fake python"
    fake.write_text(STAND_IN_TRAINER)
    fake.chmod(0o755)
    run_dir = tmp_path / "preempt run"
    job_id = submit(tmp_path, run_dir, "name=preempt", "cluster.device=cpu", "cluster.cpu_procs_per_node=1",
                    "--python", str(fake))
    out = run_dir / "logs" / f"slurm-{job_id}.out"
    deadline = time.monotonic() + 60
    while not (out.exists() and "training" in out.read_text()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "training" in out.read_text(), job_logs(run_dir)
    signal_batch(job_id, "USR2")
    st = wait_state(job_id, timeout=120)
    assert st["state"] == "COMPLETED", f"{st}\n{job_logs(run_dir)}"
    assert (run_dir / "COMPLETED").exists() and not (run_dir / "PREEMPTED").exists()
    log = out.read_text()  # --open-mode=append: both attempts in one file
    assert "saw STOP" in log and "resumed, restart 1" in log
    assert "requeueing job" in (run_dir / "logs" / f"slurm-{job_id}.err").read_text()


# ---------------------------------------------------------------------------------- real training
# The embedded demo job on both nodes, one CPU rank per node (world size 2), kept tiny. train.epochs
# is raised only so that max_steps, not the size of the demo data set, decides the number of steps.
DEMO = ["cluster.nodes=2", "cluster.device=cpu", "cluster.cpu_procs_per_node=1",
        "cluster.slurm.env.GLOO_SOCKET_IFNAME=lo", "cluster.slurm.time='00:10:00'"]
TINY = ["data.num_samples=400", "train.eval_accuracy_samples=0", "train.global_batch_size=8",
        "train.micro_batch_size=2", "train.epochs=20"]
# enough steps (~12 s of training) that USR2, sent once step 3 is logged, lands well before the end
PREEMPT_STEPS = 120
PREEMPT = [f"train.max_steps={PREEMPT_STEPS}", "train.epochs=60",
           "train.save_every_steps=1000"]  # only USR2 makes a checkpoint


def records(run_dir: Path, kind: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:  # a line being written
            continue
        if r.get("kind") == kind:
            out.append(r)
    return out


def sacct_states(job_id: str, *, until_final: bool = True, timeout: float = 30) -> list[str]:
    """Every attempt's state (``sacct -D``: requeued attempts too), oldest first; slurmdbd can lag
    slurmctld by a moment, so wait until the last attempt is final."""
    deadline = time.monotonic() + timeout
    while True:
        proc = subprocess.run(["sacct", "-j", job_id, "-D", "-X", "-n", "-P", "-o", "JobID,State"],
                              capture_output=True, text=True, timeout=60)
        states = [ln.split("|")[1].split()[0] for ln in proc.stdout.splitlines() if ln.split("|")[0] == job_id]
        if (states and (not until_final or is_final(states[-1]))) or time.monotonic() > deadline:
            return states
        time.sleep(1)


def cancel_if_running(job_id: str, st: dict) -> None:
    """A job still running past its wait: cancel it, so that it does not hold the test cluster."""
    if not is_final(st["state"]):
        subprocess.run(["scancel", job_id], capture_output=True, timeout=60)


def check_train_steps(run_dir: Path, n: int) -> list[dict]:
    train = records(run_dir, "train")
    steps = [r["step"] for r in train]
    assert steps == list(range(1, n + 1)), f"train steps in metrics.jsonl: {steps}"
    return train


@pytest.fixture(scope="module")
def demo_run(slurm_cluster, tmp_path_factory):
    """The embedded demo job trained on both nodes through Slurm, uninterrupted, to its end."""
    base = tmp_path_factory.mktemp("slurm demo")
    run_dir = base / "demo run"
    t0 = time.monotonic()
    job_id = submit(base, run_dir, *DEMO, *TINY, "train.max_steps=8")
    st = wait_state(job_id, timeout=240)
    cancel_if_running(job_id, st)
    return {"run_dir": run_dir, "job_id": job_id, "state": st, "elapsed_s": time.monotonic() - t0}


def test_demo_training_two_nodes_completes(demo_run):
    run_dir, job_id = demo_run["run_dir"], demo_run["job_id"]
    assert demo_run["state"]["state"] == "COMPLETED", f"{demo_run['state']}\n{job_logs(run_dir)}"
    assert (run_dir / "COMPLETED").exists() and not (run_dir / "PREEMPTED").exists()
    check_train_steps(run_dir, 8)
    (start,) = records(run_dir, "start")
    assert (start["world_size"], start["nodes"], start["planned_steps"]) == (2, 2, 8)
    assert start["resumed_from_step"] is None
    assert records(run_dir, "end")[-1]["status"] == "completed"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "completed" and report["complete"], report["status_detail"]
    assert report["job"]["nodes"] == 2 and report["job"]["world_size"] == 2
    # one energy tracker per node, not per rank
    emissions = sorted(p.name for p in (run_dir / "emissions").glob("*.csv"))
    assert len(emissions) == 2, emissions
    assert {n.rsplit("-", 1)[-1].removesuffix(".csv") for n in emissions} == {"n1", "n2"}, emissions
    assert (run_dir / "final" / "model.safetensors").exists()
    assert sacct_states(job_id) == ["COMPLETED"]
    out = (run_dir / "logs" / f"slurm-{job_id}.out").read_text()
    assert "step 8/8" in out
    # the report is the batch script's last step (`launcher report --finish`), not a rank's work
    assert "tokens/s per device" in out.split("step 8/8", 1)[1], out[-3000:]


@pytest.fixture(scope="module")
def preempted_run(slurm_cluster, tmp_path_factory):
    """The demo job with more steps, sent USR2 (as at --signal=B:USR2@N) once it has trained a few
    steps: it checkpoints, requeues itself and resumes. While it waits to run again, the same job
    trains uninterrupted with `launcher run` on this machine (2 ranks on one node: same world size)
    as the reference for the losses."""
    base = tmp_path_factory.mktemp("slurm preempt")
    run_dir, ref_dir = base / "preempt run", base / "reference run"
    t0 = time.monotonic()
    job_id = submit(base, run_dir, *DEMO, *TINY, *PREEMPT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        steps = [r["step"] for r in records(run_dir, "train")]
        if steps and max(steps) >= 3:
            break
        if is_final(job_state(job_id)["state"]):
            break
        time.sleep(0.1)
    signalled_at = max((r["step"] for r in records(run_dir, "train")), default=None)
    if signalled_at is None or signalled_at < 3:
        cancel_if_running(job_id, job_state(job_id))
    assert signalled_at is not None and signalled_at >= 3, \
        f"the job did not start training: {job_state(job_id)}\n{job_logs(run_dir)}"
    signal_batch(job_id, "USR2")
    t_signal = time.monotonic()
    ref = subprocess.Popen(
        [sys.executable, "-m", "launcher", "run", "--run-dir", str(ref_dir), "cluster.device=cpu",
         "cluster.cpu_procs_per_node=2", *TINY, *PREEMPT],
        cwd=base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # watch the requeue happen: Restarts=1 while slurmctld still knows the job
    states, restarts = [], 0
    deadline = time.monotonic() + 300
    while True:
        st = job_state(job_id)
        restarts = max(restarts, st["restarts"] or 0)
        if not states or states[-1] != st["state"]:
            states.append(st["state"])
        if is_final(st["state"]) or time.monotonic() > deadline:
            break
        time.sleep(1)
    cancel_if_running(job_id, st)
    try:
        ref_out, _ = ref.communicate(timeout=max(10.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        ref.kill()
        ref_out, _ = ref.communicate()
    return {"run_dir": run_dir, "ref_dir": ref_dir, "job_id": job_id, "state": st, "states": states,
            "restarts": restarts, "signalled_at": signalled_at, "ref_rc": ref.returncode, "ref_out": ref_out,
            "elapsed_s": time.monotonic() - t0, "after_signal_s": time.monotonic() - t_signal}


def test_usr2_preempts_checkpoints_requeues_and_resumes_the_training(preempted_run):
    run_dir, job_id = preempted_run["run_dir"], preempted_run["job_id"]
    assert preempted_run["state"]["state"] == "COMPLETED", \
        f"{preempted_run['state']} (states seen {preempted_run['states']})\n{job_logs(run_dir)}"
    assert preempted_run["restarts"] == 1 and "PENDING" in preempted_run["states"], preempted_run["states"]
    assert sacct_states(job_id) == ["REQUEUED", "COMPLETED"]
    assert (run_dir / "COMPLETED").exists()
    assert not (run_dir / "PREEMPTED").exists() and not (run_dir / "STOP").exists()

    # attempt 1 stopped at the step all ranks agreed on, saved it, and attempt 2 started from it
    ckpts = records(run_dir, "checkpoint")
    assert len(ckpts) == 1, ckpts
    stop = ckpts[0]["step"]
    assert preempted_run["signalled_at"] <= stop < PREEMPT_STEPS, (preempted_run["signalled_at"], stop)
    assert (run_dir / "checkpoints" / f"step-{stop}" / "trainer_state.json").exists()
    first, second = records(run_dir, "start")
    assert first["resumed_from_step"] is None and second["resumed_from_step"] == stop
    assert first["planned_steps"] == second["planned_steps"] == PREEMPT_STEPS
    assert [e["status"] for e in records(run_dir, "end")] == ["preempted", "completed"]
    # every step exactly once: the resumed attempt dropped nothing and redid nothing
    check_train_steps(run_dir, PREEMPT_STEPS)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "completed" and report["status_detail"]["attempts"] == 2
    assert report["throughput"]["redone_steps"] == 0 and report["throughput"]["steps"] == PREEMPT_STEPS
    out = (run_dir / "logs" / f"slurm-{job_id}.out").read_text()
    err = (run_dir / "logs" / f"slurm-{job_id}.err").read_text()
    assert f"resumed from step-{stop}: step {stop} of {PREEMPT_STEPS}" in out, out[-3000:]
    assert "USR2: asking the trainer" in err and f"requeueing job {job_id}" in err
    assert f"job {job_id} (restart 1)" in err


def test_resumed_losses_match_an_uninterrupted_run(preempted_run):
    """The data order depends only on the step, the RNG state and the optimizer and LR scheduler
    state come back from the checkpoint: the preempted job's losses are the uninterrupted ones."""
    run_dir, ref_dir = preempted_run["run_dir"], preempted_run["ref_dir"]
    assert preempted_run["ref_rc"] == 0 and (ref_dir / "COMPLETED").exists(), preempted_run["ref_out"][-4000:]
    ref = check_train_steps(ref_dir, PREEMPT_STEPS)
    got = check_train_steps(run_dir, PREEMPT_STEPS)
    (ref_start,) = records(ref_dir, "start")
    assert (ref_start["world_size"], ref_start["nodes"]) == (2, 1)
    for key, rtol in (("loss", 1e-4), ("lr", 1e-9), ("label_tokens", 0), ("samples", 0)):
        bad = [(r["step"], g[key], r[key]) for g, r in zip(got, ref)
               if abs(g[key] - r[key]) > rtol * abs(r[key])]
        assert not bad, f"{key} differs from the uninterrupted run at (step, preempted, reference): {bad[:8]} " \
                        f"(preempted at step {preempted_run['signalled_at']})"


def test_the_report_bills_the_allocation_not_the_trainers_time(preempted_run):
    """Cost counts what Slurm allocated (sacct: every attempt's elapsed time x its devices; on a CPU
    cluster the ranks stand in for GPUs), not only the seconds the trainer measured: start-up, the
    requeue's second start and the shutdown are paid for too."""
    run_dir, job_id = preempted_run["run_dir"], preempted_run["job_id"]
    acc = json.loads((run_dir / "slurm_accounting.json").read_text())
    assert acc["job_id"] == str(job_id) and acc["attempts"], acc
    assert acc["attempts"][0]["state"] == "REQUEUED" and all(a["elapsed_s"] > 0 for a in acc["attempts"]), acc
    world = records(run_dir, "start")[0]["world_size"]
    report = json.loads((run_dir / "report.json").read_text())
    alloc = report["allocation"]
    assert alloc["available"] and alloc["source"] == "sacct" and alloc["attempts"] == len(acc["attempts"])
    expected = sum(a["elapsed_s"] * (a["gpus"] or world) for a in acc["attempts"]) / 3600
    assert alloc["device_hours"] == pytest.approx(expected, rel=1e-9)
    assert alloc["trainer_device_hours"] < alloc["device_hours"], alloc
    compute = (report.get("cost") or {}).get("compute")
    if compute:  # the job has a GPU-hour price: it is applied to the allocation
        assert compute["hours"] == pytest.approx(alloc["device_hours"], rel=1e-9), (compute, alloc)
