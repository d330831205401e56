"""Real training runs: torchrun, gloo, 2 CPU ranks, the embedded tiny model.

Tolerance: the trainer divides the summed token loss by the label tokens of the whole global
batch, so every world layout and strategy computes the same mathematical step; what differs is
the order of floating-point reductions (fp32). Per-step losses must agree to rtol 1e-4.
LoRA dropout is set to 0 here: dropout draws from each rank's own RNG stream, which a different
number of ranks cannot reproduce.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import rundir
from tests.helpers import ensure_libaio

pytestmark = pytest.mark.slow

RTOL = 1e-4
COMMON = [
    "train.max_steps=6", "data.num_samples=400", "train.eval_accuracy_samples=0", "train.global_batch_size=8",
    "train.micro_batch_size=2", "train.save_every_steps=100", "train.eval_every_steps=3", "train.lora.dropout=0",
    "train.lora.r=4", "cluster.device=cpu",
]
NVME = "nvme-swap"  # under the runs' folder (their working directory)
LAYOUTS = {
    "single": ["cluster.cpu_procs_per_node=1", "parallel.strategy=zero", "parallel.zero_stage=0"],
    "zero1": ["cluster.cpu_procs_per_node=2", "parallel.strategy=zero", "parallel.zero_stage=1"],
    "zero2": ["cluster.cpu_procs_per_node=2", "parallel.strategy=zero", "parallel.zero_stage=2"],
    "zero3": ["cluster.cpu_procs_per_node=2", "parallel.strategy=zero", "parallel.zero_stage=3"],
    "fsdp": ["cluster.cpu_procs_per_node=2", "parallel.strategy=fsdp"],
    # torchrun's own start (a fresh `python -m launcher train` per rank), where CPU ranks otherwise fork
    "zero2-spawn": ["cluster.cpu_procs_per_node=2", "parallel.strategy=zero", "parallel.zero_stage=2",
                    "cluster.start_method=spawn"],
    # DeepSpeedCPUAdam (JIT-built once, cached in TORCH_EXTENSIONS_DIR) steps the optimizer on the host
    "zero3-offload": ["cluster.cpu_procs_per_node=2", "parallel.strategy=zero", "parallel.zero_stage=3",
                      "parallel.offload_optimizer=cpu", "parallel.offload_params=cpu"],
    "zero2-offload": ["cluster.cpu_procs_per_node=2", "parallel.strategy=zero", "parallel.zero_stage=2",
                      "parallel.offload_optimizer=cpu"],
    # DeepSpeed's async I/O op (JIT-built once against Debian's libaio) swaps to a folder here
    "zero3-nvme": ["cluster.cpu_procs_per_node=2", "parallel.strategy=zero", "parallel.zero_stage=3",
                   "parallel.offload_optimizer=nvme", "parallel.offload_params=nvme", f"parallel.nvme_path={NVME}"],
}


def launcher_run(run_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "launcher", "run", "--run-dir", str(run_dir), *overrides],
                         capture_output=True, text=True, timeout=600, cwd=run_dir.parent)
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def losses(run_dir: Path) -> list[float]:
    train = records(run_dir, "train")
    assert [r["step"] for r in train] == list(range(1, len(train) + 1))
    return [r["loss"] for r in train]


class Runs:
    """Each layout x method trains once per session; several tests read the same run."""

    def __init__(self, root: Path):
        self.root = root
        self.done: dict[tuple[str, str], Path] = {}

    def get(self, layout: str, method: str) -> Path:
        key = (layout, method)
        if key not in self.done:
            if "nvme" in layout:
                ensure_libaio()
            (self.root / NVME).mkdir(exist_ok=True)
            d = self.root / f"{layout}-{method}"
            launcher_run(d, *COMMON, *LAYOUTS[layout], f"train.method={method}")
            self.done[key] = d
        return self.done[key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("train"))


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("layout", ["zero1", "zero2", "zero3", "fsdp"])
def test_strategies_match_a_single_process(runs, layout, method):
    ref = losses(runs.get("single", method))
    got = losses(runs.get(layout, method))
    assert len(ref) == len(got) == 6
    assert got == pytest.approx(ref, rel=RTOL), f"{layout}/{method} diverged from the single process"
    assert got[-1] < got[0], "the loss should fall over six steps"
    ev_ref = [r["eval_loss"] for r in records(runs.get("single", method), "eval")]
    ev = [r["eval_loss"] for r in records(runs.get(layout, method), "eval")]
    assert ev == pytest.approx(ev_ref, rel=RTOL)


def test_ranks_forked_from_the_agent_train_as_torchruns_own_do(runs):
    """On CPU the ranks fork from launcher.forkrun, which imported their libraries; with
    cluster.start_method=spawn torchrun starts each afresh. Same job, same losses and evals."""
    forked, spawned = runs.get("zero2", "full"), runs.get("zero2-spawn", "full")
    assert "-m launcher.forkrun " in (forked / "launch.sh").read_text()
    assert "-m torch.distributed.run " in (spawned / "launch.sh").read_text()
    assert losses(forked) == pytest.approx(losses(spawned), rel=1e-6)
    assert [r["eval_loss"] for r in records(forked, "eval")] == pytest.approx(
        [r["eval_loss"] for r in records(spawned, "eval")], rel=1e-6)


def test_zero3_cpu_offload_matches_a_single_process(runs):
    assert losses(runs.get("zero3-offload", "full")) == pytest.approx(losses(runs.get("single", "full")), rel=RTOL)


def test_zero2_optimizer_offload_matches_a_single_process(runs):
    assert losses(runs.get("zero2-offload", "full")) == pytest.approx(losses(runs.get("single", "full")), rel=RTOL)


def test_zero3_nvme_offload_trains_and_matches_a_single_process(runs):
    """Optimizer states and parameters swapped through DeepSpeed's async I/O (libaio) to a folder:
    each rank's swap folders for both were made there, and the losses are a single process's."""
    d = runs.get("zero3-nvme", "full")
    assert losses(d) == pytest.approx(losses(runs.get("single", "full")), rel=RTOL)
    swap = runs.root / NVME / "zero_stage_3"
    assert {p.relative_to(swap).as_posix() for p in swap.glob("*/rank*")} == {
        "optimizer/rank0", "optimizer/rank1", "float32params/rank0", "float32params/rank1"}


def test_prebuild_builds_the_offload_ops_where_jobs_find_them():
    """python -m launcher.prebuild: DeepSpeed's CPU Adam and async I/O ops, built (or found built)
    in TORCH_EXTENSIONS_DIR, where a rank's DeepSpeedCPUAdam and NVMe swapper load them."""
    ensure_libaio()
    out = subprocess.run([sys.executable, "-m", "launcher.prebuild"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["cpu_adam", "async_io"], out.stdout
    assert all(": ready in " in ln for ln in lines), out.stdout
    from torch.utils.cpp_extension import _get_build_directory

    for op in ("cpu_adam", "async_io"):
        assert (Path(_get_build_directory(op, verbose=False)) / f"{op}.so").is_file(), op


def test_fsdp_offload_on_cpu_is_refused_before_launch(tmp_path):
    out = launcher_run(tmp_path / "r", *COMMON, "parallel.strategy=fsdp", "parallel.offload_params=cpu", check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "parallel.offload_params: FSDP2 offloads from an accelerator to the host" in out.stderr
    assert not (tmp_path / "r").exists(), "nothing half-written"


@pytest.mark.parametrize("layout", ["zero3", "fsdp"])
def test_counts_are_exact_and_run_dir_complete(runs, layout):
    d = runs.get(layout, "full")
    for name in ("job.yaml", "plan.json", "launch.sh", "artifacts.sha256", "COMPLETED", "report.json",
                 "final/config.json", "final/model.safetensors"):
        assert (d / name).exists(), name
    plan = json.loads((d / "plan.json").read_text())
    train = records(d, "train")
    assert plan["total_steps"] == len(train) == 6
    rows = [r["samples"] for r in train]
    start = records(d, "start")[0]
    assert start["world_size"] == 2 and start["packed"] is True
    # packed: every row is full but the data set's last one, so at most one short row per epoch
    epochs_touched = -(-6 * 8 // start["train_rows"])
    assert sum(r["padding_tokens"] for r in train) < 128 * epochs_touched
    assert all(r["tokens"] + r["padding_tokens"] == 8 * 128 for r in train), "8 rows of 128 tokens per step"
    assert sum(rows) == train[-1]["cum_samples"]
    report = json.loads((d / "report.json").read_text())
    assert report["status"] == "completed"


# ZeRO-3 with LoRA: the loaded engine holds its persistent parameters (the adapters) gathered,
# which made the first step after a resume stop with DeepSpeed's "tracing error at step N".
@pytest.mark.parametrize("layout,method", [("zero3", "full"), ("fsdp", "full"), ("zero3", "lora")])
def test_stop_and_resume_matches_an_uninterrupted_run(runs, tmp_path, layout, method):
    ref_dir = runs.get(layout, method)
    d = tmp_path / "resumed"
    d.mkdir()
    (d / "STOP").write_text("")  # what Slurm's USR2 trap writes: all ranks stop after step 1
    first = launcher_run(d, *COMMON, *LAYOUTS[layout], f"train.method={method}", check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (d / "PREEMPTED").exists() and not (d / "COMPLETED").exists()
    assert (d / "checkpoints" / "step-1" / "trainer_state.json").exists()
    assert [r["step"] for r in records(d, "train")] == [1]
    (d / "STOP").unlink()
    (d / "PREEMPTED").unlink()
    launcher_run(d)  # `launcher run RUN_DIR`-style resume: an existing run directory resumes
    assert (d / "COMPLETED").exists()
    starts = records(d, "start")
    assert [s["resumed_from_step"] for s in starts] == [None, 1]
    assert losses(d) == pytest.approx(losses(ref_dir), rel=RTOL)
    train = records(d, "train")
    assert train[-1]["cum_tokens"] == sum(r["tokens"] for r in train), "running totals carried over the resume"
    assert train[-1]["cum_samples"] == sum(r["samples"] for r in train)
    from safetensors.torch import load_file

    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    a, b = load_file(d / "final" / weights), load_file(ref_dir / "final" / weights)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].float().allclose(b[k].float(), rtol=1e-4, atol=1e-6), k


@pytest.mark.parametrize("layout", ["zero3", "fsdp"])
def test_lora_adapter_saved_gathered_and_reproduces_eval_loss(runs, layout):
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launcher.spec import JobSpec
    from launcher.train.data import collate, pad_id_for, prepare_data
    from launcher.sources import job_paths
    from launcher.train.loss import label_count, token_loss_sum

    d = runs.get(layout, "lora")
    adapter = d / "final" / "adapter_model.safetensors"
    with safe_open(str(adapter), "pt") as st:
        keys = list(st.keys())
        assert keys and all(st.get_tensor(k).numel() > 0 for k in keys)
        assert any("lora_B" in k and st.get_tensor(k).abs().sum() > 0 for k in keys), "B matrices trained"
    spec = JobSpec.model_validate(json.loads((d / "plan.json").read_text())["job"])
    paths = job_paths(spec)
    model_path, data_path = paths.model, paths.data
    tok = AutoTokenizer.from_pretrained(str(d / "final"))
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(d / "final")).eval()
    prepared = prepare_data(spec, paths.tokenizer, data_path, d / "cache")
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(prepared.eval), 4):
            chunk = prepared.eval[i:i + 4]
            b = collate(chunk, pad_id_for(tok))
            kw = {"input_ids": b["input_ids"], "position_ids": b["position_ids"]}
            if not b.get("packed"):
                kw["attention_mask"] = b["attention_mask"]
            total += float(token_loss_sum(model(**kw, use_cache=False).logits, b["labels"]))
    mine = total / label_count(prepared.eval)
    logged = records(d, "eval")[-1]["eval_loss"]
    assert mine == pytest.approx(logged, rel=RTOL)


def test_bad_data_fails_before_the_model_loads(tmp_path):
    """torchrun starts while the data is tokenized (its ranks import, then wait for the plan): bad
    data ends it unseen. One line, exit 2, no run directory, no rank left running, no gate left
    in the temp folder."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1=", "response": "2"}\n{"prompt": "2+2="}\n')
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    run_dir = tmp_path / "r"
    out = subprocess.run([sys.executable, "-m", "launcher", "run", "--run-dir", str(run_dir), *COMMON, *LAYOUTS["zero3"],
                          f"data.path={data}"], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env=dict(os.environ, TMPDIR=str(systmp)))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and f"{data}:2: missing field 'response'" in lines[0], out.stderr
    assert not run_dir.exists(), "a failed start leaves no run directory behind"
    ranks = subprocess.run(["pgrep", "-f", f"launcher train {run_dir}"], capture_output=True, text=True).stdout
    assert not ranks.strip(), f"ranks of the cancelled start still run: {ranks}"
    assert not [p.name for p in systmp.iterdir() if p.name.startswith("launcher-start-")]


def test_embedded_default_learns(tmp_path):
    """The README's first command: eval loss falls and task accuracy rises. Under .ci/run, the run
    its README step just made (LAUNCHER_DEFAULT_RUN: the same command, in a bare install) is
    read instead of training the same default a second time."""
    shared = os.environ.get("LAUNCHER_DEFAULT_RUN")
    d = Path(shared) if shared else tmp_path / "demo"
    if not shared:
        launcher_run(d)
    plan = json.loads((d / rundir.PLAN_JSON).read_text())
    assert plan["job"]["name"] == "demo" and (d / rundir.COMPLETED).exists(), d
    ev = records(d, "eval")
    first, last = ev[0], ev[-1]
    assert first["step"] == 0 and last["step"] == records(d, "end")[0]["steps"]
    assert last["eval_loss"] < 0.6 * first["eval_loss"], (first, last)
    assert last["accuracy"] >= first["accuracy"] + 0.10, (first, last)


def test_cuda_asked_for_on_a_cpu_machine_fails_clearly(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = launcher_run(tmp_path / "r", "cluster.device=cuda", check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cluster.device: cuda was asked for but this machine has no visible GPU" in out.stderr


def test_padded_run_counts_padding_and_checkpointed_activations_match(runs, tmp_path):
    """Without packing every row is one document padded to the longest in its micro batch; the
    padding is counted apart from the useful tokens. Activation checkpointing recomputes the
    forward in backward and must not change the math."""
    d = tmp_path / "padded"
    launcher_run(d, *COMMON, *LAYOUTS["fsdp"], "train.method=full", "data.packing=false",
                 "train.activation_checkpointing=true")
    train = records(d, "train")
    assert len(train) == 6
    assert all(r["padding_tokens"] > 0 for r in train)
    assert all(r["samples"] == 8 for r in train), "unpacked: one document per row, 8 rows per step"
    ref = tmp_path / "padded-ref"
    launcher_run(ref, *COMMON, *LAYOUTS["single"], "train.method=full", "data.packing=false")
    assert losses(d) == pytest.approx(losses(ref), rel=RTOL)
