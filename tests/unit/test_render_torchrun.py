"""Golden files pin the torchrun argv and launch script. Regenerate after an intended change:
UPDATE_GOLDEN=1 python -m pytest tests/unit/test_render_torchrun.py"""
import shlex
import subprocess

import pytest

from launcher.plan import plan_job
from launcher.render.torchrun import render_env, render_launch_script, render_torchrun_argv
from launcher.spec import build_job
from tests.helpers import check_golden

def _plan(nodes, device="cuda"):
    spec = build_job({"name": "golden", "cluster": {"nodes": nodes, "gpus_per_node": 8},
                      "train": {"micro_batch_size": 4, "global_batch_size": 64 * nodes}})
    return plan_job(spec, device=device, cpu_count=2)


def test_single_node_standalone():
    plan = _plan(1)
    argv = render_torchrun_argv(plan, "/runs/golden-1")
    assert argv[:4] == ["torchrun", "--standalone", "--nnodes", "1"]
    check_golden("torchrun_single_node.sh", render_launch_script(argv, render_env(plan)))


def test_multi_node_c10d():
    plan = _plan(2)
    argv = render_torchrun_argv(plan, "/runs/golden-1", rdzv_endpoint="10.1.0.1:29500", rdzv_id="golden-1",
                                node_rank="1")
    assert "--standalone" not in argv
    i = argv.index("--rdzv-backend")
    assert argv[i + 1] == "c10d" and argv[argv.index("--rdzv-endpoint") + 1] == "10.1.0.1:29500"
    check_golden("torchrun_multi_node.sh", render_launch_script(argv, render_env(plan)))


def test_multi_node_needs_an_endpoint():
    with pytest.raises(ValueError):
        render_torchrun_argv(_plan(2), "/r")


def test_cpu_env_sets_threads_per_rank():
    plan = _plan(1, device="cpu")
    env = render_env(plan)
    assert env["OMP_NUM_THREADS"] == "1" and list(env) == sorted(env)


@pytest.mark.parametrize("hostile", ["a 0", "a'; echo foo", "$(touch pwned)", "`touch pwned`", 'x"y'])
def test_hostile_run_dir_stays_one_argument(tmp_path, hostile):
    plan = _plan(1)
    script = render_launch_script(["printf", "%s\\n"] + [hostile], render_env(plan, {"X": hostile}))
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == hostile + "\n"
    assert not (tmp_path / "pwned").exists()
    assert shlex.quote(hostile) in script
