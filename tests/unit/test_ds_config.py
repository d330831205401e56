"""Every config the tool writes passes DeepSpeed's own parser for the stated world size."""
import itertools
import json
import os

import pytest
from click.testing import CliRunner

from launcher.cli import cli
from launcher.plan import build_ds_config
from launcher.presets import DS_CONFIGS_DIR, DS_PRESETS, regenerate
from launcher.render.deepspeed import find_auto


class _DataParallel:
    """DeepSpeed's `mpu` protocol: the way to tell its parser the data-parallel world size."""

    def __init__(self, world):
        self.world = world

    def get_data_parallel_world_size(self):
        return self.world

    def get_data_parallel_rank(self):
        return 0

    def get_model_parallel_world_size(self):
        return 1

    def get_model_parallel_rank(self):
        return 0


@pytest.fixture(scope="module")
def ds_parse():
    """DeepSpeedConfig needs a process group to read the world size from the mpu. DeepSpeed is
    imported as a rank imports it (without its shared-memory allreduce op, which a plain
    ``import deepspeed`` JIT-builds at init_distributed on CPU: half a minute on a fresh machine)."""
    from launcher.train.strategies.zero import import_deepspeed

    deepspeed = import_deepspeed()
    from deepspeed.runtime.config import DeepSpeedConfig

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29400 + os.getpid() % 500))
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    yield lambda cfg, world: DeepSpeedConfig(cfg, mpu=_DataParallel(world))
    import torch.distributed as tdist

    if tdist.is_initialized():
        tdist.destroy_process_group()


STAGES = [0, 1, 2, 3]
OFFLOADS = ["none", "cpu", "nvme"]
PRECISIONS = ["bf16", "fp16", "fp32"]


def _valid(stage, opt, par):
    return not ((par != "none" and stage != 3) or (opt != "none" and stage == 0))


MATRIX = [c for c in itertools.product(STAGES, OFFLOADS, OFFLOADS, PRECISIONS) if _valid(*c[:3])]


@pytest.mark.parametrize("stage,opt,par,prec", MATRIX)
def test_matrix_passes_deepspeed_parser(ds_parse, stage, opt, par, prec):
    world, micro, accum = 8, 2, 4
    args = ["ds-config", "--stage", str(stage), "--offload-optimizer", opt, "--offload-params", par,
            "--precision", prec, "--micro-batch", str(micro), "--grad-accum", str(accum),
            "--world-size", str(world), "--hidden-size", "1024", "--nvme-path", "/local_nvme"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.output)
    assert find_auto(cfg) == []
    parsed = ds_parse(cfg, world)
    assert parsed.train_batch_size == micro * accum * world
    assert parsed.gradient_accumulation_steps == accum
    assert parsed.zero_optimization_stage == stage
    assert parsed.bfloat16_config.enabled == (prec == "bf16")
    assert parsed.float16_config.enabled == (prec == "fp16")
    if opt != "none":
        assert parsed.zero_config.offload_optimizer.device == opt
    if par != "none":
        assert parsed.zero_config.offload_param.device == par
    if stage >= 1:
        assert parsed.zero_config.reduce_bucket_size == 1024 * 1024
    if stage == 3:
        assert parsed.zero_config.prefetch_bucket_size == int(0.9 * 1024 * 1024)
        assert parsed.zero_config.param_persistence_threshold == 10 * 1024


def test_deepspeed_parser_rejects_a_wrong_world_size(ds_parse):
    cfg = build_ds_config(stage=2, micro_batch_size=2, grad_accum_steps=4, world_size=8)
    with pytest.raises(AssertionError):
        ds_parse(cfg, 4)


def test_global_batch_flag_derives_accumulation():
    res = CliRunner().invoke(cli, ["ds-config", "--stage", "3", "--micro-batch", "4", "--global-batch", "256",
                                   "--world-size", "16"])
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.output)
    assert (cfg["gradient_accumulation_steps"], cfg["train_batch_size"]) == (4, 256)


@pytest.mark.parametrize("args,message", [
    (["--stage", "2", "--offload-params", "cpu"], "--offload-params: cpu needs --stage 3"),
    (["--stage", "0", "--offload-optimizer", "cpu"], "--offload-optimizer: needs --stage 1, 2 or 3"),
    (["--stage", "3", "--offload-params", "nvme"], "--nvme-path: required"),
    (["--micro-batch", "3", "--global-batch", "10", "--world-size", "2"], "nearest valid global_batch_size: 6 or 12"),
])
def test_invalid_flag_combinations(args, message):
    from launcher.errors import JobError

    with pytest.raises(JobError, match=message.replace("-", r"\-")):
        CliRunner().invoke(cli, ["ds-config", *args], catch_exceptions=False, standalone_mode=False)


def test_ds_config_from_job_file_matches_plan(tmp_path):
    res = CliRunner().invoke(cli, ["ds-config", "parallel.zero_stage=1", "--output", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "c.json").read_text())
    assert cfg["zero_optimization"]["stage"] == 1 and cfg["train_batch_size"] == 16


def test_shipped_presets_are_what_the_tool_writes(tmp_path):
    regenerate(tmp_path)
    shipped = sorted(p.name for p in DS_CONFIGS_DIR.glob("*.json"))
    assert shipped == sorted(DS_PRESETS), "ds_configs/ has files that are not presets (or misses some)"
    for name in DS_PRESETS:
        assert (DS_CONFIGS_DIR / name).read_text() == (tmp_path / name).read_text(), (
            f"ds_configs/{name} drifted: regenerate with `python -m launcher.presets`")


@pytest.mark.parametrize("name", sorted(DS_PRESETS))
def test_presets_parse(ds_parse, name):
    cfg = json.loads((DS_CONFIGS_DIR / name).read_text())
    assert ds_parse(cfg, 1).train_batch_size == 1


def test_an_odd_bucket_size_in_the_job_is_one_line_at_plan_time(tmp_path):
    """DeepSpeed's config parser takes an odd allgather_bucket_size; its ZeRO-1/2 optimizer then
    asserts at start. A user's bucket size is refused at plan time instead, never changed."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "launcher", "plan", "parallel.zero_buckets=5475",
                          "parallel.zero_stage=2"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "parallel.zero_buckets: 5475 is not a multiple of 2" in res.stderr
    assert "nearest valid: 5474 or 5476" in res.stderr
    res = CliRunner().invoke(cli, ["ds-config", "parallel.zero_buckets=5476", "parallel.zero_stage=2"])
    assert res.exit_code == 0, res.output
    z = json.loads(res.output)["zero_optimization"]
    assert z["allgather_bucket_size"] == z["reduce_bucket_size"] == 5476


@pytest.mark.parametrize("n_params,n_trainable", [(109_504, None), (4_212_980, None), (25_380, 175), (1_032, 40)])
def test_derived_buckets_are_what_zero_asserts(n_params, n_trainable):
    for stage in (1, 2):
        z = build_ds_config(stage=stage, micro_batch_size=1, grad_accum_steps=1, world_size=2, n_params=n_params,
                            n_trainable=n_trainable)["zero_optimization"]
        assert z["allgather_bucket_size"] % 2 == 0 and z["allgather_bucket_size"] >= 2
    z = build_ds_config(stage=2, micro_batch_size=1, grad_accum_steps=1, world_size=2, hidden_size=1023)
    assert z["zero_optimization"]["allgather_bucket_size"] == 1023 * 1023 + 1
