"""Every DeepSpeed config `launcher ds-config` writes is one DeepSpeed's engine accepts: a sweep of
model shapes (parameter counts whose twentieth is odd, prime-ish dimensions, a tiny model), full
fine-tuning and LoRA with an odd number of trainable parameters, ZeRO stages 0-3, no offload and
CPU offload, fp32 and bf16. Each config is built by ``deepspeed.initialize`` and steps once on
gloo, world 2 (tests/integration/ds_engine_worker.py under torchrun). DeepSpeed's config parser
alone accepts configs its ZeRO optimizers then refuse at start (an odd allgather_bucket_size)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import cli

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("ds_engine_worker.py")
LORA = {"r": 1, "alpha": 2, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj"]}
# Llama shapes: the first is a user's model whose ZeRO-2 config DeepSpeed refused (109,504
# parameters, a twentieth of 5,475); the others have odd twentieths too, and odd LoRA counts.
SHAPES = {
    "h64-l2-v213": dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, vocab_size=213,
                        num_attention_heads=4, num_key_value_heads=4),
    # an odd hidden size (head_dim given apart): LoRA on q, k and v trains 175 parameters
    "h45-l1-v103": dict(hidden_size=45, num_hidden_layers=1, intermediate_size=97, vocab_size=103,
                        num_attention_heads=3, num_key_value_heads=1, head_dim=8),
    "h8-l1-v33": dict(hidden_size=8, num_hidden_layers=1, intermediate_size=12, vocab_size=33,
                      num_attention_heads=2, num_key_value_heads=1),
}
EXPECTED_PARAMS = {"h64-l2-v213": 109_504}
FIRST = next(iter(SHAPES))


def layouts():
    for stage in (0, 1, 2, 3):
        yield stage, "none", "none"
        if stage >= 1:
            yield stage, "cpu", "cpu" if stage == 3 else "none"


def write_models(root: Path) -> dict[str, Path]:
    from transformers import LlamaConfig

    folders = {}
    for name, dims in SHAPES.items():
        folders[name] = root / name
        LlamaConfig(max_position_embeddings=128, **dims).save_pretrained(folders[name])
    return folders


def ds_config(folder: Path, method: str, stage: int, opt: str, par: str, dtype: str, out: Path) -> dict:
    overrides = [f"model.path={folder}", f"model.dtype={dtype}", f"train.method={method}",
                 f"train.lora.r={LORA['r']}", f"train.lora.alpha={LORA['alpha']}", "train.lora.dropout=0",
                 "train.lora.target_modules=[q_proj,k_proj,v_proj]", "parallel.strategy=zero",
                 f"parallel.zero_stage={stage}", f"parallel.offload_optimizer={opt}",
                 f"parallel.offload_params={par}", "cluster.cpu_procs_per_node=2", "train.micro_batch_size=1",
                 "train.global_batch_size=4",
                 # both ways the planner sizes ZeRO on CPU: full fine-tuning with lean's twentieth caps
                 # (the odd buckets of the bug), LoRA with fast's DeepSpeed sizes (buckets of the odd
                 # trainable counts, rounded)
                 f"parallel.host_memory={'lean' if method == 'full' else 'fast'}"]
    res = CliRunner().invoke(cli, ["ds-config", *overrides, "--device", "cpu", "--output", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds-engine")
    folders = write_models(root)
    cases = []
    for shape, folder in folders.items():
        for method in ("full", "lora"):
            for stage, opt, par in layouts():
                # bf16 on the first shape only: the dtype does not change a size the planner derives
                for dtype in ("fp32", "bf16") if shape == FIRST else ("fp32",):
                    name = f"{shape}-{method}-zero{stage}-offload_{opt}-{dtype}"
                    path = root / f"{name}.json"
                    cfg = ds_config(folder, method, stage, opt, par, dtype, path)
                    cases.append({"name": name, "shape": shape, "method": method, "stage": stage, "dtype": dtype,
                                  "model": str(folder), "lora": LORA, "ds_config": str(path), "config": cfg})
    (root / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:0", str(WORKER),
                           str(root / "cases.json"), str(root / "results.jsonl")],
                          capture_output=True, text=True, timeout=900, env=env, cwd=root)
    results_file = root / "results.jsonl"
    assert results_file.exists(), (proc.stdout[-3000:] + proc.stderr[-3000:])
    results = {r["case"]: r for r in map(json.loads, results_file.read_text().splitlines())}
    return cases, results


def test_every_config_builds_deepspeeds_engine_and_steps(sweep):
    cases, results = sweep
    assert len(results) == len(cases) == 2 * 7 * (2 + 1 + 1)
    refused = [f"{name}: {r['error']}" for name, r in results.items() if not r["ok"]]
    assert not refused, "\n".join(refused)


def test_the_sweep_has_odd_twentieths_and_odd_lora_counts(sweep):
    """What made the bug: a bucket derived from the model's size, odd for about half the models."""
    from launcher.modelinfo import read_model_info_from_folder

    cases, results = sweep
    seen = {}
    for case in cases:
        if case["method"] == "full" and case["stage"] == 2 and case["dtype"] == "fp32":
            info = read_model_info_from_folder(case["model"])
            seen[case["shape"]] = info.n_params
            z = case["config"]["zero_optimization"]
            assert z["allgather_bucket_size"] % 2 == 0
            assert z["allgather_bucket_size"] in (info.n_params // 20, info.n_params // 20 + 1)
    assert all(n // 20 % 2 == 1 for n in seen.values()), seen
    assert {k: seen[k] for k in EXPECTED_PARAMS} == EXPECTED_PARAMS
    lora_counts = {r["n_trainable"] for name, r in results.items() if "-lora-" in name and r["ok"]}
    assert any(n % 2 for n in lora_counts), lora_counts
    for case in cases:  # fast's sizes: the reduce bucket is every trainable element, rounded up to even
        if case["method"] == "lora" and case["stage"] in (1, 2) and case["name"] in results:
            n = results[case["name"]]["n_trainable"]
            assert case["config"]["zero_optimization"]["reduce_bucket_size"] == n + n % 2, (case["name"], n)


def test_launcher_run_trains_zero2_on_the_model_deepspeed_refused(tmp_path):
    """The user's run that stopped in ``deepspeed.initialize``: full fine-tuning under ZeRO-2 of the
    109,504-parameter Llama, 2 ranks, through `launcher run`, to the end."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.helpers import make_char_tokenizer

    model = tmp_path / "model"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(max_position_embeddings=128, **SHAPES[FIRST])).save_pretrained(model)
    make_char_tokenizer(model)
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "launcher", "run", "--run-dir", str(run), f"model.path={model}",
                          "parallel.zero_stage=2", "parallel.host_memory=lean", "train.method=full", "train.max_steps=3",
                          "train.eval_accuracy_samples=0", "data.num_samples=800", "cluster.device=cpu"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (run / "COMPLETED").exists()
    z = json.loads((run / "ds_config.json").read_text())["zero_optimization"]
    assert z["allgather_bucket_size"] == 5476


IMPORT_PROBE = """
import json, sys
if sys.argv[1] == "launcher":
    from launcher.train.strategies.zero import import_deepspeed
    import_deepspeed()
else:
    import deepspeed, deepspeed.runtime.zero.muon.original_muon
from deepspeed.autotuning import autotuner
from deepspeed.runtime.zero.muon import original_muon
compiled = hasattr(original_muon.muon_update, "_torchdynamo_orig_callable")
seen = {"mlflow_at_import": "mlflow" in sys.modules, "autotuner_mlflow": autotuner.has_mlflow, "muon_compiled": compiled}
import subprocess
forks = []
real = subprocess.check_output
subprocess.check_output = lambda cmd, *a, **k: forks.append(cmd) or real(cmd, *a, **k)
from deepspeed.accelerator import get_accelerator
try:
    get_accelerator().device_count()  # ZeRO-3 asks once per gradient bucket
except Exception:
    pass  # numactl not installed: the fork happened all the same
seen["numactl_forks"] = len(forks)
import mlflow  # a job that tracks with mlflow still imports it
seen["mlflow_later"] = bool(mlflow.__version__)
print(json.dumps(seen))
"""


@pytest.mark.parametrize("how", ["launcher", "plain"])
def test_a_rank_imports_deepspeed_without_mlflow_or_compiling_muon(how):
    """import_deepspeed: DeepSpeed's autotuner does not import mlflow, and Muon's update functions
    are not wrapped by torch.compile (together about 2 s of every rank's start); a later
    ``import mlflow`` works; DeepSpeed's CPU accelerator counts a node's devices without forking
    the rank for ``numactl`` (LOCAL_SIZE from torchrun's LOCAL_WORLD_SIZE). The plain import, in
    the same environment, does all three: the probe can fail."""
    env = {k: v for k, v in os.environ.items() if k != "LOCAL_SIZE"}
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE, how], capture_output=True, text=True, timeout=300,
                         env=dict(env, DS_ACCELERATOR="cpu", LOCAL_WORLD_SIZE="2"))
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    plain = how == "plain"
    assert seen == {"mlflow_at_import": plain, "autotuner_mlflow": plain, "muon_compiled": plain, "mlflow_later": True,
                    "numactl_forks": int(plain)}
