"""job.sbatch rendering: golden files, quoting of hostile names, and the script's own logic run
under bash with stand-ins for srun/scontrol (no Slurm needed).

Regenerate the golden files after an intended change with:
    UPDATE_GOLDEN=1 python -m pytest tests/unit/test_render_slurm.py -q
"""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import cli
from launcher.errors import JobError
from launcher.plan import plan_job
from launcher.render.slurm import render_sbatch, shell_word, template_text
from launcher.spec import load_job
from tests.helpers import GOLDEN, check_golden

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_RUN_DIR = "/scratch/runs/demo-20250101-000000"
HOSTILE = "a b $(touch pwned) `touch pwned` it's \"q\" %j"


def _plan(overrides=(), device="cuda", cpu_count=None):
    return plan_job(load_job(None, list(overrides)), device=device, cpu_count=cpu_count)


def _bash_n(tmp_path: Path, text: str) -> None:
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_golden_single_node():
    plan = _plan(["cluster.slurm.partition=gpu"])
    check_golden("job_single_node.sbatch", render_sbatch(plan, GOLDEN_RUN_DIR))


def test_golden_multi_node():
    plan = _plan([
        "cluster.nodes=4", "cluster.gpus_per_node=8", "train.global_batch_size=256",
        "cluster.slurm.job_name=llama-sft", "cluster.slurm.partition=gpu", "cluster.slurm.account=ml-team",
        "cluster.slurm.qos=high", "cluster.slurm.time='12:00:00'", "cluster.slurm.cpus_per_task=96",
        "cluster.slurm.mem=480G", "cluster.slurm.constraint=h100&ib", "cluster.slurm.exclusive=true",
        "cluster.slurm.signal_grace_s=300",
        "cluster.slurm.extra_sbatch=['--mail-type=END,FAIL', '--comment=fine tune']",
        "cluster.slurm.setup=['module load cuda/12.4', 'source /shared/venv/bin/activate']",
        "cluster.slurm.env={NCCL_SOCKET_IFNAME: ib0, NCCL_DEBUG: WARN}",
    ])
    check_golden("job_multi_node.sbatch", render_sbatch(plan, GOLDEN_RUN_DIR, python="/shared/venv/bin/python"))


def test_golden_scripts_parse(tmp_path):
    for name in ("job_single_node.sbatch", "job_multi_node.sbatch"):
        _bash_n(tmp_path, (GOLDEN / name).read_text())


def test_the_example_scripts_users_copy_are_what_the_template_renders_today(tmp_path):
    """slurm/examples/*.sbatch come from the one template through `launcher slurm --dry-run`
    (slurm/render_examples.py); a template change without a fresh render fails here."""
    import subprocess
    import sys

    assert (ROOT / "launcher" / "templates" / "job.sbatch.j2").read_text() == template_text()
    assert not (ROOT / "slurm" / "job.sbatch.j2").exists(), "one template: launcher/templates/job.sbatch.j2"
    examples = sorted((ROOT / "slurm" / "examples").glob("*.sbatch"))
    assert len(examples) >= 2
    for p in examples:
        _bash_n(tmp_path, p.read_text())
    out = subprocess.run([sys.executable, str(ROOT / "slurm" / "render_examples.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_gpu_flags_only_on_cuda_and_threads_on_cpu():
    gpu = render_sbatch(_plan(), GOLDEN_RUN_DIR)
    assert "#SBATCH --gpus-per-node=2" in gpu and "OMP_NUM_THREADS" not in gpu
    gres = render_sbatch(_plan(["cluster.slurm.gres=gpu:a100:2"]), GOLDEN_RUN_DIR)
    assert "#SBATCH --gres=gpu:a100:2" in gres and "--gpus-per-node" not in gres
    cpu = render_sbatch(_plan(["cluster.slurm.cpus_per_task=8", "cluster.cpu_procs_per_node=2"], "cpu", 8),
                        GOLDEN_RUN_DIR)
    assert "--gpus-per-node" not in cpu and "--gres" not in cpu
    assert "export OMP_NUM_THREADS=4" in cpu
    assert "srun --ntasks-per-node=1 --kill-on-bad-exit=1 --cpus-per-task=8 " in cpu
    env = render_sbatch(_plan(["cluster.slurm.env={GLOO_SOCKET_IFNAME: lo}"], "cpu"), GOLDEN_RUN_DIR)
    assert "export GLOO_SOCKET_IFNAME=lo" in env
    no_requeue = render_sbatch(_plan(["cluster.slurm.requeue=false"]), GOLDEN_RUN_DIR)
    assert "#SBATCH --no-requeue" in no_requeue and "scontrol requeue" not in no_requeue


def test_hostile_names_are_single_quoted_literals(tmp_path):
    plan = _plan([f"name={HOSTILE}"], "cpu")
    run_dir = f"/tmp/{HOSTILE}"
    text = render_sbatch(plan, run_dir, extra_train_args=["--preflight-only"])
    _bash_n(tmp_path, text)
    # the job name and paths appear only as single-quoted literals ('"'"' closes, escapes, reopens)
    q = HOSTILE.replace("'", "'\"'\"'")
    assert f"#SBATCH --job-name='{q}'" in text
    assert f"RUN_DIR='/tmp/{q}'" in text
    assert f"#SBATCH --output='/tmp/{q.replace('%', '%%')}/logs/slurm-%j.out'" in text
    # the script's own expressions stay double-quoted so that they expand, one word each
    assert '--rdzv-endpoint "$HEAD:$PORT" --rdzv-id "$SLURM_JOB_ID"' in text
    assert '-m launcher train "$RUN_DIR" --preflight-only &' in text
    assert shell_word("$HEAD:$PORT") == '"$HEAD:$PORT"' and shell_word("$(x)") == "'$(x)'"


@pytest.mark.parametrize("override, field", [
    ('name="a\\nb"', "name"),  # YAML double quotes: a real newline
    ('cluster.slurm.job_name="a\\nb"', "cluster.slurm.job_name"),
    ('cluster.slurm.partition="gpu\\n#SBATCH --x"', "cluster.slurm.partition"),
    ('cluster.slurm.time="1:00:00\\n"', "cluster.slurm.time"),
    ('cluster.slurm.env={A: "x\\ny"}', "cluster.slurm.env.A"),
    ('cluster.slurm.setup=["echo a\\necho b"]', "cluster.slurm.setup[0]"),
    ('cluster.slurm.extra_sbatch=["--comment=a\\nb"]', "cluster.slurm.extra_sbatch[0]"),
])
def test_newline_in_a_value_is_rejected_naming_the_field(override, field):
    with pytest.raises(JobError) as e:
        render_sbatch(_plan([override]), GOLDEN_RUN_DIR)
    assert len(e.value.lines) == 1 and e.value.lines[0].startswith(f"{field}: contains a newline")


def test_bad_run_dirs_and_env_names_are_rejected():
    for run_dir, what in [("/tmp/a\nb", "newline"), ("runs/x", "absolute"), ("/tmp/a\\b", "backslash")]:
        with pytest.raises(JobError, match=what):
            render_sbatch(_plan(), run_dir)
    with pytest.raises(JobError, match="not a valid environment variable name"):
        render_sbatch(_plan(["cluster.slurm.env={'A-B': x}"]), GOLDEN_RUN_DIR)


# ---------------------------------------------------------------------------- the script, run by bash

STUB_SRUN = """#!/bin/bash
# stand-in for srun: record argv (one per line), then act as the trainer would
printf '%s\\n' "$@" > "$STUB_DIR/srun.argv"
prev=; for a; do [ "$prev" = train ] && RUN_DIR=$a; prev=$a; done
case "$STUB_MODE" in
  ok) exit 0 ;;
  fail) exit 3 ;;
  preempt)
    touch "$STUB_DIR/started"
    for i in $(seq 1 200); do [ -e "$RUN_DIR/STOP" ] && break; sleep 0.05; done
    [ -e "$RUN_DIR/STOP" ] || exit 9
    echo "step 7" > "$RUN_DIR/PREEMPTED"; exit 0 ;;
  completed_then_abort) date +%s > "$RUN_DIR/COMPLETED"; exit 134 ;;
esac
"""
STUB_SCONTROL = """#!/bin/bash
echo "$@" >> "$STUB_DIR/scontrol.calls"
if [ "$1 $2" = "show hostnames" ]; then echo n1; echo n2; fi
"""


def _stub_env(tmp_path: Path, mode: str) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("srun", STUB_SRUN), ("scontrol", STUB_SCONTROL)):
        p = bin_dir / name
        p.write_text(body)
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_DIR": str(tmp_path), "STUB_MODE": mode,
            "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NNODES": "2", "SLURM_NODEID": "0"}


def _script(tmp_path: Path, extra=()) -> tuple[Path, Path]:
    run_dir = tmp_path / f"runs {HOSTILE}"
    (run_dir / "logs").mkdir(parents=True)
    plan = _plan([f"name={HOSTILE}", "cluster.nodes=2", "cluster.cpu_procs_per_node=1",
                  "cluster.slurm.setup=['echo setup ran > \"$RUN_DIR/setup.out\"']"], "cpu")
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(plan, str(run_dir), python="/opt/py/bin/python3", extra_train_args=list(extra)))
    return script, run_dir


def _no_pwned(tmp_path: Path) -> None:
    assert not list(tmp_path.rglob("pwned")), "a value was executed by the shell"


def test_script_passes_hostile_paths_intact_and_exits_with_the_step_status(tmp_path):
    script, run_dir = _script(tmp_path, ["--preflight-only"])
    (cwd := tmp_path / "cwd").mkdir()
    res = subprocess.run(["bash", str(script)], env=_stub_env(tmp_path, "ok"), cwd=cwd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    argv = (tmp_path / "srun.argv").read_text().splitlines()
    assert argv[:3] == ["--ntasks-per-node=1", "--kill-on-bad-exit=1", "/opt/py/bin/python3"]
    assert argv[argv.index("--rdzv-endpoint") + 1] == "n1:24242"  # 20000 + 4242 % 20000
    assert argv[argv.index("--rdzv-id") + 1] == "4242"
    assert argv[argv.index("--nnodes") + 1] == "2"
    assert argv[-3:] == ["train", str(run_dir), "--preflight-only"]
    assert (run_dir / "setup.out").read_text() == "setup ran\n"
    _no_pwned(tmp_path)
    res = subprocess.run(["bash", str(script)], env=_stub_env(tmp_path, "fail"), cwd=cwd, capture_output=True)
    assert res.returncode == 3


def test_script_usr2_touches_stop_and_requeues_after_preempted(tmp_path):
    script, run_dir = _script(tmp_path)
    (run_dir / "STOP").write_text("")  # left by an earlier attempt: must not stop this one at once
    proc = subprocess.Popen(["bash", str(script)], env=_stub_env(tmp_path, "preempt"), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not (run_dir / "STOP").exists()
    proc.send_signal(signal.SIGUSR2)  # what --signal=B:USR2@N does
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "requeue 4242" in (tmp_path / "scontrol.calls").read_text()
    assert not (run_dir / "PREEMPTED").exists() and not (run_dir / "STOP").exists()
    assert "requeueing job 4242" in err


def test_script_counts_a_crash_after_completed_as_success(tmp_path):
    script, run_dir = _script(tmp_path)
    res = subprocess.run(["bash", str(script)], env=_stub_env(tmp_path, "completed_then_abort"), cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "after the trainer wrote COMPLETED" in res.stderr


# ---------------------------------------------------------------------------- launcher slurm (no Slurm needed)


def test_dry_run_prints_the_script_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["slurm", "cluster.device=cpu", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("#!/bin/bash\n#SBATCH --job-name=demo\n")
    assert list(tmp_path.iterdir()) == []


def test_render_writes_the_run_dir_with_absolute_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.jsonl").write_text('{"text": "x"}\n')
    res = CliRunner().invoke(cli, ["slurm", "data.path=data.jsonl", "data.format=text", "--run-dir", "r 1",
                                   "--python", "/opt/py/bin/python3"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "r 1"
    names = {p.name for p in run.iterdir()}
    assert {"job.yaml", "plan.json", "ds_config.json", "job.sbatch", "artifacts.sha256", "logs"} <= names
    assert "slurm_job_id" not in names
    assert stat.S_IMODE((run / "job.sbatch").stat().st_mode) == 0o755
    import yaml

    job = yaml.safe_load((run / "job.yaml").read_text())
    assert job["data"]["path"] == str(tmp_path / "data.jsonl") and job["model"]["path"] == "demo:tiny-llama"
    hashed = {ln.split()[1] for ln in (run / "artifacts.sha256").read_text().splitlines()}
    assert hashed == {"job.yaml", "plan.json", "ds_config.json", "job.sbatch"}
    assert f"sbatch --parsable '{run}/job.sbatch'" in res.output
    assert "#SBATCH --gpus-per-node=2" in (run / "job.sbatch").read_text()  # auto means the cluster's GPUs


def test_submit_without_sbatch_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = subprocess.run([sys.executable, "-m", "launcher", "slurm", "--submit", "--run-dir", "r"],
                         capture_output=True, text=True, env={**os.environ, "PATH": str(tmp_path)}, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == ("error: sbatch not found: is Slurm installed on this machine? "
                                  "use --dry-run to only render the script")


def test_status_logs_cancel_refuse_non_run_dirs(tmp_path):
    for args in (["status", str(tmp_path)], ["logs", str(tmp_path)], ["cancel", str(tmp_path / "nope")]):
        res = subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True)
        assert res.returncode == 2
        assert len(res.stderr.strip().splitlines()) == 1 and "not a run directory" in res.stderr
