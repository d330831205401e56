import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from launcher.cli import COMMANDS, cli

HEAVY = ["torch", "transformers", "deepspeed", "peft", "datasets", "codecarbon", "matplotlib"]


def run_cli(args, tmp_path=None):
    """Run the real console entry point in a subprocess: exit codes and stderr as users see them."""
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True,
                          cwd=tmp_path)


@pytest.mark.parametrize("args", [[]] + [[name] for name in COMMANDS])
def test_help_imports_no_heavy_library(args):
    code = (
        "import sys\n"
        "from launcher.cli import cli\n"
        f"try:\n    cli.main({args + ['--help']!r}, standalone_mode=False)\n"
        "except SystemExit:\n    pass\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout
    assert "Usage:" in out.stdout


def test_top_level_help_lists_every_command_with_one_line():
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0
    assert len(COMMANDS) == 14
    for name, (_, _, line) in COMMANDS.items():
        assert f"  {name} " in res.output and line.split()[0] in res.output


def test_bad_job_exits_2_with_one_line_per_problem_and_no_traceback(tmp_path):
    (tmp_path / "job.yaml").write_text("train: {micro_batch_size: 0}\nparalel: {}\n")
    res = run_cli(["plan", "job.yaml"], tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines == [
        "error: job.yaml: train.micro_batch_size: must be >= 1, got 0",
        "error: job.yaml: paralel: unknown key; did you mean 'parallel'? "
        "(valid: name, output_dir, model, data, train, eval, parallel, cluster, report)",
    ]


def test_missing_job_file_exits_2(tmp_path):
    res = run_cli(["plan", "nope.yaml"], tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == ("error: nope.yaml: job file not found; check the path, "
                                                          "or write one with launcher init (overrides are "
                                                          "key.sub=value)")


def test_init_then_plan_accepts_the_starter(tmp_path):
    res = run_cli(["init", "job.yaml"], tmp_path)
    assert res.returncode == 0, res.stderr
    res = run_cli(["plan", "job.yaml", "--json"], tmp_path)
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert plan["world_size"] == 16 and plan["grad_accum_steps"] == 2 and plan["global_batch_size"] == 128
    again = run_cli(["init", "job.yaml"], tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_plan_with_overrides_and_indivisible_batch(tmp_path):
    run_cli(["init", "job.yaml"], tmp_path)
    res = run_cli(["plan", "job.yaml", "train.global_batch_size=100"], tmp_path)
    assert res.returncode == 2
    assert "nearest valid global_batch_size: 64 or 128" in res.stderr
    res = run_cli(["plan", "job.yaml", "cluster.nodes=4", "train.global_batch_size=256"], tmp_path)
    assert res.returncode == 0 and "micro 4 x accum 2 x world 32 = global 256" in res.stdout


def test_plan_reads_a_local_model_config(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "intermediate_size": 8192,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
        "vocab_size": 128256, "tie_word_embeddings": True, "max_position_embeddings": 131072}))
    run_cli(["init", "job.yaml"], tmp_path)
    res = run_cli(["plan", "job.yaml", "model.path=m", "parallel.zero_buckets=model", "--json"], tmp_path)
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert plan["model"]["n_params"] == 1_235_814_400
    assert plan["ds_config"]["zero_optimization"]["reduce_bucket_size"] == 2048 * 2048


def test_overrides_without_a_job_file_apply_to_the_default(tmp_path):
    res = run_cli(["plan", "train.lr=1e-3", "--json"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["job"]["train"]["lr"] == 1e-3


def test_plan_with_data_knows_the_steps(tmp_path):
    res = run_cli(["plan", "--with-data", "--device", "cpu", "--json"], tmp_path)
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert plan["train_rows"] > 0
    assert plan["steps_per_epoch"] == plan["train_rows"] // plan["global_batch_size"]
    assert plan["total_steps"] == plan["steps_per_epoch"] * plan["job"]["train"]["epochs"]
    assert list(tmp_path.iterdir()) == [], "plan writes nothing"


def tree(folder):
    """Every path under ``folder`` with its size and modification time: what "wrote nothing" compares."""
    from pathlib import Path

    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).rglob("*")}


@pytest.mark.parametrize("start, module", [("auto", "launcher.forkrun"), ("spawn", "torch.distributed.run")])
def test_run_dry_run_prints_the_exact_command_and_writes_nothing(tmp_path, start, module):
    """On CPU the ranks fork from launcher.forkrun unless the job says spawn (torchrun itself)."""
    before = tree(tmp_path)
    res = run_cli(["run", "--dry-run", "--run-dir", "a 0", "cluster.device=cpu", f"cluster.start_method={start}"],
                  tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "#!/usr/bin/env bash" and "export OMP_NUM_THREADS=1" in lines
    torchrun = lines[-1].split()
    assert torchrun[:3] == [sys.executable, "-m", module]
    assert torchrun[3:8] == ["--standalone", "--nnodes", "1", "--nproc-per-node", "2"]
    assert res.stdout.rstrip().endswith(f"-m launcher train '{tmp_path / 'a 0'}' \"$@\"")  # the run dir quoted
    assert tree(tmp_path) == before, "a dry run writes nothing"


def test_hosts_dry_run_prints_each_hosts_script_as_the_real_command_writes_it(tmp_path):
    args = ["run", "--hosts", "h1,h2", "--run-dir", "r", "cluster.device=cpu", "train.global_batch_size=32"]
    before = tree(tmp_path)
    dry = run_cli([*args, "--dry-run"], tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert tree(tmp_path) == before, "a dry run writes nothing"
    real = run_cli(args, tmp_path)
    assert real.returncode == 0, real.stderr
    written = {p.name: p.read_text() for p in sorted((tmp_path / "r").glob("launch-*.sh"))}
    assert list(written) == ["launch-0-h1.sh", "launch-1-h2.sh"]
    assert dry.stdout == "".join(f"# {name}\n{text}\n" for name, text in written.items())
    for rank, (name, text) in enumerate(written.items()):
        assert (f"--nnodes 2 --rdzv-backend c10d --rdzv-endpoint h1:29500 --rdzv-id r --node-rank {rank} "
                f"--local-addr h{rank + 1} --nproc-per-node 2") in text
