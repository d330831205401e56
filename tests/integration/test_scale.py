"""Models that need many GPUs, shown on 2 CPU ranks: no rank holds the whole model, model states
halve with the world size, bf16 tracks fp32, a resume on another world size is resharded (FSDP2)
or refused (ZeRO), and packing that cannot keep documents apart is refused before launch.

Tolerances: bf16 keeps 8 bits of mantissa (a relative error of 2^-8 = 0.4% per rounding), so a
bf16 loss curve tracks the fp32 one to 1% over these few steps (measured: 0.1%). Two bf16 layouts
of the same job agree to 1e-3 (they differ in the order of bf16 reductions only).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BF16_VS_FP32 = 1e-2
BF16_LAYOUTS = 1e-3
COMMON = [
    "train.max_steps=4", "data.num_samples=400", "train.eval_accuracy_samples=0", "train.global_batch_size=8",
    "train.micro_batch_size=2", "train.save_every_steps=100", "train.eval_every_steps=3", "cluster.device=cpu",
    "train.method=full",
]


def launcher_run(run_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "launcher", "run", "--run-dir", str(run_dir), *overrides],
                         capture_output=True, text=True, timeout=900, cwd=run_dir.parent)
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def losses(run_dir: Path) -> list[float]:
    train = records(run_dir, "train")
    assert [r["step"] for r in train] == list(range(1, len(train) + 1))
    return [r["loss"] for r in train]


def memory(run_dir: Path, phase: str = "end") -> list[dict]:
    return next(r for r in records(run_dir, "memory") if r["phase"] == phase)["ranks"]


def state_bytes(rank: dict) -> int:
    return rank["params_bytes"] + rank["grads_bytes"] + rank["optimizer_bytes"]


class Runs:
    def __init__(self, root: Path, common: list[str]):
        self.root, self.common, self.done = root, common, {}

    def get(self, name: str, *overrides: str) -> Path:
        if name not in self.done:
            d = self.root / name
            launcher_run(d, *self.common, *overrides)
            self.done[name] = d
        return self.done[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("scale"), COMMON)


LAYOUT = {
    "fp32-single": ["model.dtype=fp32", "parallel.strategy=zero", "parallel.zero_stage=0", "cluster.cpu_procs_per_node=1"],
    "bf16-fsdp": ["model.dtype=bf16", "parallel.strategy=fsdp", "cluster.cpu_procs_per_node=2"],
    "bf16-fsdp-1": ["model.dtype=bf16", "parallel.strategy=fsdp", "cluster.cpu_procs_per_node=1"],
    "bf16-zero2": ["model.dtype=bf16", "parallel.strategy=zero", "parallel.zero_stage=2", "cluster.cpu_procs_per_node=2"],
    "bf16-zero3": ["model.dtype=bf16", "parallel.strategy=zero", "parallel.zero_stage=3", "cluster.cpu_procs_per_node=2"],
    "bf16-zero3-1": ["model.dtype=bf16", "parallel.strategy=zero", "parallel.zero_stage=3", "cluster.cpu_procs_per_node=1"],
}


@pytest.mark.parametrize("layout", ["bf16-fsdp", "bf16-zero2", "bf16-zero3"])
def test_bf16_tracks_the_fp32_loss_curve(runs, layout):
    ref = losses(runs.get("fp32-single", *LAYOUT["fp32-single"]))
    got = losses(runs.get(layout, *LAYOUT[layout]))
    assert len(got) == len(ref) == 4
    assert got == pytest.approx(ref, rel=BF16_VS_FP32)
    assert got[-1] < got[0]
    start = records(runs.get(layout), "start")[0]
    assert start["dtype"] == "bf16"
    if layout != "bf16-fsdp":
        assert got == pytest.approx(losses(runs.get("bf16-fsdp", *LAYOUT["bf16-fsdp"])), rel=BF16_LAYOUTS)


@pytest.mark.parametrize("strategy", ["fsdp", "zero3"])
def test_model_states_per_rank_halve_with_two_ranks(runs, strategy):
    one = memory(runs.get(f"bf16-{strategy}-1", *LAYOUT[f"bf16-{strategy}-1"]))
    two = memory(runs.get(f"bf16-{strategy}", *LAYOUT[f"bf16-{strategy}"]))
    assert len(one) == 1 and len(two) == 2
    single = state_bytes(one[0])
    assert single > 0 and one[0]["optimizer_bytes"] > one[0]["params_bytes"], one[0]  # Adam's states exist
    for rank in two:
        assert state_bytes(rank) == pytest.approx(single / 2, rel=0.05), (rank, one[0])


@pytest.mark.parametrize("layout", ["bf16-fsdp", "bf16-zero2", "bf16-zero3"])
def test_planned_model_states_equal_what_each_rank_counts(runs, layout):
    """The plan's params + optimizer + the gradients held at the step (ZeRO: ``step_grads``, the
    fp32 partition DeepSpeed builds; FSDP2: the sharded ``grads``) against the bytes each rank
    counted from its tensors at the optimizer step (issue: within 5%)."""
    d = runs.get(layout, *LAYOUT[layout])
    plan = json.loads((d / "plan.json").read_text())
    m = plan["memory"]["per_device_bytes"]
    planned = m["params"] + m["optimizer"] + (m["step_grads"] if plan["strategy"] == "zero" else m["grads"])
    for rank in memory(d):
        assert state_bytes(rank) == pytest.approx(planned, rel=0.05), (rank, m)


def test_fsdp_resumes_on_another_world_size_and_zero_refuses(runs, tmp_path):
    ref = losses(runs.get("bf16-fsdp", *LAYOUT["bf16-fsdp"]))
    d = tmp_path / "resharded"
    d.mkdir()
    (d / "STOP").write_text("")  # all ranks stop after step 1
    launcher_run(d, *COMMON, *LAYOUT["bf16-fsdp"])
    assert (d / "PREEMPTED").exists()
    (d / "STOP").unlink()
    (d / "PREEMPTED").unlink()
    out = launcher_run(d, "cluster.cpu_procs_per_node=1")  # 2 ranks -> 1 rank
    assert "world size 2 -> 1: FSDP2 reshards the checkpoint" in out.stdout
    assert [s["world_size"] for s in records(d, "start")] == [2, 1]
    assert json.loads((d / "plan.json").read_text())["world_size"] == 1
    assert losses(d) == pytest.approx(ref, rel=BF16_LAYOUTS), "the loss continues where it stopped"

    z = tmp_path / "zero"
    z.mkdir()
    (z / "STOP").write_text("")
    launcher_run(z, *COMMON, *LAYOUT["bf16-zero2"])
    (z / "STOP").unlink()
    (z / "PREEMPTED").unlink()
    plan_before = (z / "plan.json").read_text()
    out = launcher_run(z, "cluster.cpu_procs_per_node=1", check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"error: world size: {z} holds a checkpoint written by 2 ranks and this launch has 1; DeepSpeed ZeRO "
        "checkpoints are not resharded here: resume with 2 ranks (cluster.cpu_procs_per_node, cluster.nodes "
        "or --nproc-per-node)"]
    assert (z / "plan.json").read_text() == plan_before, "plan.json is never overwritten silently"


def test_attention_that_cannot_isolate_packed_documents_is_refused_before_launch(tmp_path):
    out = launcher_run(tmp_path / "fa", *COMMON, "model.attn_implementation=flash_attention_2", check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "model.attn_implementation: flash_attention_2 needs the flash-attn package" in out.stderr
    assert not (tmp_path / "fa").exists()
    eager = launcher_run(tmp_path / "eager", *COMMON, "model.attn_implementation=eager", "train.max_steps=1",
                         "cluster.cpu_procs_per_node=1", "parallel.zero_stage=0")
    assert eager.returncode == 0


# --------------------------------------------------------------------------- a model of 290M parameters

# Llama-shaped; the embedding and the LM head are 5.8% of the parameters each (Llama-3-8B: 6.5%)
BIG = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=20, num_attention_heads=16,
           num_key_value_heads=16, vocab_size=16384, max_position_embeddings=256, tie_word_embeddings=False)
# The largest rank's peak anonymous memory above a process that imports what a rank imports, as a
# share of the model's fp32 size (before: at least 1.0, the whole fp32 model on every rank); the
# issue's target is 0.45. Measured on 2 cores (2026-12-05, `python bench/gloo_gather.py`, 3 runs
# each): FSDP2 0.415-0.426, ZeRO-3 0.440 with the in-place gathers on gloo (FSDP2 0.430-0.442,
# ZeRO-3 0.468-0.470 with gloo's own all_gather_into_tensor, which holds a second copy of each
# gathered module: the LM head is the largest). The bf16 shard alone is 0.25. Ten ZeRO-3 runs by
# hand that day spread over 3 MiB (0.439-0.442).
PEAK_SHARE = {"fsdp": 0.45, "zero3": 0.45}
BIG_RUN = [
    "train.method=lora", "model.dtype=bf16", "train.lora.r=8", "train.lora.dropout=0", "data.num_samples=64",
    "data.max_seq_len=8", "data.eval_fraction=0.0", "train.micro_batch_size=1", "train.global_batch_size=2",
    "train.max_steps=2", "train.eval_accuracy_samples=0", "train.save_every_steps=100", "cluster.device=cpu",
    "train.lr=1e-3", "parallel.host_memory=lean",  # the bound is lean's: fast trades this memory for speed
]  # no eval rows: an eval before and after the steps cost 14 s a run and is not what this bounds
# 8 tokens a row, the least a job takes: on a CPU without bf16 instructions (AVX2 only) torch's bf16
# products through the frozen weights in the backward run at ~0.7 GFLOP/s, so a step of this model
# costs seconds per token (32 tokens: 50 s a step under the suite; 8: 10 s), while the memory
# this test bounds is the model's, not the activations' (a rank's peak 727-742 MiB at 8, 750-796 at 32)


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """A Llama-shaped model of ~290M parameters with random weights, saved in bf16 (581 MB)."""
    import torch
    from transformers import LlamaConfig

    from launcher.demo import ensure_demo_assets

    path = tmp_path_factory.mktemp("big") / "llama-271m"
    n = save_random_llama(path, LlamaConfig(**BIG, bos_token_id=1, eos_token_id=2, pad_token_id=0), torch.bfloat16)
    return {"path": path, "n_params": n, "tokenizer": str(ensure_demo_assets().tokenizer_dir)}


def save_random_llama(path: Path, config, dtype) -> int:
    """A Llama with N(0, 0.02) weights, built on the meta device and filled in place (no second
    copy), saved as safetensors in ``dtype``; returns its parameter count."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=g)
    model.to(dtype).save_pretrained(str(path), safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def import_only_rss_anon(layout: str) -> int:
    """Anonymous memory of a process that only imports the libraries a rank of ``layout`` imports
    (DeepSpeed as a rank imports it: launcher.train.strategies.zero.import_deepspeed; CodeCarbon
    runs in its own process, launcher.train.energy_sidecar.NodeEnergySidecar)."""
    code = ("import torch, torch.distributed, safetensors\n"
            "import transformers, peft\nfrom transformers import LlamaForCausalLM\n"
            "from peft import LoraConfig, get_peft_model\n")
    if layout == "fsdp":  # FSDP2 and its checkpoint format (DCP); a ZeRO rank imports neither
        code += "import torch.distributed.fsdp, torch.distributed.checkpoint\n"
    if layout == "zero3":
        code += "from launcher.train.strategies.zero import import_deepspeed\nimport_deepspeed()\n" \
                "import deepspeed.runtime.engine, deepspeed.runtime.zero.stage3\n"
    code += "from launcher.train.memory import read_status\nprint(read_status()['RssAnon'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def big_runs(big_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("big-runs")
    model = [f"model.path={big_model['path']}", f"model.tokenizer={big_model['tokenizer']}"]
    out = {}
    for name, layout in {"fsdp": ["parallel.strategy=fsdp", "cluster.cpu_procs_per_node=2"],
                         "zero3": ["parallel.strategy=zero", "parallel.zero_stage=3", "cluster.cpu_procs_per_node=2"]}.items():
        launcher_run(root / name, *BIG_RUN, *model, *layout)
        out[name] = root / name
    return out


@pytest.mark.parametrize("layout", ["fsdp", "zero3"])
def test_no_rank_holds_the_whole_model(big_model, big_runs, layout):
    fp32_size = 4 * big_model["n_params"]
    assert 250e6 < big_model["n_params"] < 300e6
    base = import_only_rss_anon(layout)
    ranks = memory(big_runs[layout])
    largest = max(ranks, key=lambda r: r["rss_anon_peak_bytes"])
    above = largest["rss_anon_peak_bytes"] - base
    assert above <= PEAK_SHARE[layout] * fp32_size, (f"rank {largest['rank']}: {above / 2**20:.0f} MiB above an import-only "
                                      f"process, {above / fp32_size:.2f}x the fp32 model", ranks)
    # the two engines, sharded their own ways, train the same steps (each matches a single process
    # on the small models of test_train.py; a third run of this model as one process adds no proof)
    assert losses(big_runs["fsdp"]) == pytest.approx(losses(big_runs["zero3"]), rel=BF16_LAYOUTS)
    adapter = big_runs[layout] / "final" / "adapter_model.safetensors"
    assert adapter.exists() and adapter.stat().st_size > 0


# --------------------------------------------------------------------------- planned totals, a 100M model

# bench/memory_plan.py's model (a 100.8M-parameter Llama, the demo's character vocabulary): big
# enough that a rank's peak is the model and its training, not the runtime's fixed cost. Its run
# of ten configurations (bench/RESULTS.md, "Memory plan against real runs") had every total within
# 25%; these two are the ones with the widest margin, one with activation checkpointing, one without.
PLAN_MODEL = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=16, num_attention_heads=12,
                  num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=False)
PLAN_RUN = [
    "model.dtype=fp32", "train.method=full", "data.max_seq_len=256", "data.packing=true", "data.num_samples=600",
    "data.eval_fraction=0.0", "train.micro_batch_size=2", "train.global_batch_size=8", "train.max_steps=1",
    "train.eval_every_steps=null", "train.eval_accuracy_samples=0", "train.save_every_steps=null",
    "cluster.device=cpu", "cluster.cpu_procs_per_node=2",
    # the allocator and ZeRO sizes these totals were measured under (bench/RESULTS.md); under fast
    # the plan over-counts ZeRO-2's second reduce bucket on CPU (2,431 MiB planned, 1,751 MiB peak)
    "parallel.host_memory=lean",
]
TOTAL_RTOL = 0.25  # the target


@pytest.fixture(scope="module")
def plan_model(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, LlamaConfig

    from launcher.demo import ensure_demo_assets

    tok = AutoTokenizer.from_pretrained(str(ensure_demo_assets().tokenizer_dir))
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **PLAN_MODEL)
    path = tmp_path_factory.mktemp("plan-model") / "llama-100m"
    save_random_llama(path, cfg, torch.float32)
    tok.save_pretrained(str(path))
    return path


@pytest.mark.parametrize("layout", [
    ["parallel.strategy=zero", "parallel.zero_stage=3"],
    ["parallel.strategy=zero", "parallel.zero_stage=2", "train.activation_checkpointing=true"],
], ids=["zero3", "zero2-ckpt"])
def test_planned_total_is_within_25_percent_of_the_largest_ranks_peak(plan_model, tmp_path, layout):
    d = tmp_path / "run"
    launcher_run(d, f"model.path={plan_model}", *PLAN_RUN, *layout)
    planned = json.loads((d / "plan.json").read_text())["memory"]["per_device_bytes"]["total"]
    ranks = memory(d)
    peak = max(r["rss_anon_peak_bytes"] - r["rss_anon_baseline_bytes"] for r in ranks)
    assert planned == pytest.approx(peak, rel=TOTAL_RTOL), (f"planned {planned / 2**20:.0f} MiB, largest rank's "
                                                            f"peak {peak / 2**20:.0f} MiB", ranks)
