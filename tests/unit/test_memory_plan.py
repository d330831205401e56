"""Plan before paying (issue #11): memory per device and per node, the settings that fit a GPU,
the forecast of time, energy, CO2 and money, communication per step, and the report's forecast
against actual. Shapes only (config.json dicts, meta device): no weights, no training."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import cli
from launcher.plan import ModelInfo, plan_job, read_model_info
from launcher.plan.activations import ActivationInputs, estimate_activations, layer_bytes_per_token
from launcher.plan.forecast import build_forecast, with_forecast
from launcher.plan.memory import CUDA_CONTEXT_BYTES, FRAGMENTATION, GLIBC_FAST_RETENTION, Layout, estimate_memory
from launcher.report.carbon import carbon_intensity
from launcher.rundir import MemoryRecord, read_plan, write_plan
from launcher.rundir.metrics import RankMemory
from launcher.spec import JobSpec, build_job

LLAMA3_8B = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
             "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False,
             "max_position_embeddings": 8192}
LLAMA3_70B = dict(LLAMA3_8B, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                  num_attention_heads=64)
TINY = ModelInfo(n_params=1_000_000, n_trainable_params=1_000_000, hidden_size=64, n_layers=2, vocab_size=100,
                 n_heads=4, n_kv_heads=2, head_dim=16, intermediate_size=128)


def run_cli(args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def llama8b_lora():
    """Llama-3-8B's shape counted on the meta device, LoRA r=16 on every linear layer: the base
    count is the model's, the trainables the adapters'."""
    lora = build_job({"train": {"method": "lora", "lora": {"r": 16, "target_modules": "all-linear"}}}).train.lora
    return read_model_info(LLAMA3_8B, "lora", lora)


def lay(**kw) -> Layout:
    base = dict(device="cuda", strategy="zero", zero_stage=3, offload_optimizer="none", offload_params="none",
                dtype="bf16", method="full", world=4, procs_per_node=4, micro_batch_size=1, grad_accum_steps=1,
                seq_len=128, packed=True, checkpointing=False)
    base.update(kw)
    return Layout(**base)


# --------------------------------------------------------------------------- Llama-3-8B (done-when)


def test_llama3_8b_counts_and_zero3_states_between_paper_and_deepspeed(llama8b_lora):
    info = llama8b_lora
    assert info.n_params == 8_030_261_248
    assert info.n_trainable_params == 41_943_040  # r=16 on q,k,v,o,gate,up,down of 32 layers
    full = info.model_copy(update={"n_trainable_params": info.n_params})
    spec = build_job({"model": {"dtype": "bf16"}, "data": {"max_seq_len": 4096},
                      "train": {"method": "full", "micro_batch_size": 1, "global_batch_size": 16},
                      "parallel": {"strategy": "zero", "zero_stage": 3}, "cluster": {"nodes": 2, "gpus_per_node": 8}})
    plan = plan_job(spec, device="cuda", model_info=full)
    states = plan.memory.per_device_bytes.model_states
    P, N = info.n_params, 16
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    _, ds_gpu, _ = estimate_zero3_model_states_mem_needs(
        total_params=P, largest_layer_params=128256 * 4096, num_gpus_per_node=8, num_nodes=2, cpu_offload=False,
        cpu_offload_params=False, zero_init=True)
    assert 16 * P / N < states < ds_gpu
    assert plan.params == {"total": P, "trainable": P, "adapters": 0}


def test_llama3_8b_lora_fsdp_keeps_frozen_base_in_bf16(llama8b_lora):
    spec = build_job({"data": {"max_seq_len": 4096}, "train": {"method": "lora", "micro_batch_size": 1,
                      "global_batch_size": 16}, "parallel": {"strategy": "fsdp"}, "cluster": {"nodes": 2}})
    d = plan_job(spec, device="cuda", model_info=llama8b_lora).memory.per_device_bytes
    A = 41_943_040
    assert d.params == -(-(2 * 8_030_261_248 + 4 * A) // 16)
    assert d.optimizer == -(-(8 * A) // 16)
    assert d.grads == -(-(4 * A) // 16)


# --------------------------------------------------------------------------- model states by hand


@pytest.mark.parametrize("strategy,stage,dtype,expect", [
    # (params, grads, optimizer, step_grads) for P = T = 1e6 on 4 ranks
    ("zero", 0, "bf16", (2_000_000, 2_000_000, 12_000_000, 4_000_000)),
    ("zero", 0, "fp32", (4_000_000, 4_000_000, 8_000_000, 0)),  # a plain torch optimizer on fp32 params
    ("zero", 1, "bf16", (2_000_000, 2_000_000, 3_000_000, 1_000_000)),
    ("zero", 2, "bf16", (2_000_000, 500_000, 3_000_000, 1_000_000)),
    ("zero", 3, "bf16", (500_000, 500_000, 3_000_000, 1_000_000)),
    ("zero", 3, "fp32", (1_000_000, 1_000_000, 3_000_000, 1_000_000)),
    ("fsdp", 3, "bf16", (1_000_000, 1_000_000, 2_000_000, 0)),  # fp32 shards, fp32 grads, m and v
])
def test_model_states_per_strategy(strategy, stage, dtype, expect):
    m = estimate_memory(TINY, lay(strategy=strategy, zero_stage=stage, dtype=dtype), 1_000_000)
    d = m.per_device_bytes
    assert (d.params, d.grads, d.optimizer, d.step_grads) == expect
    assert d.model_states == sum(expect)
    alloc = d.model_states + d.activations + d.logits + d.buffers
    assert d.total == alloc + CUDA_CONTEXT_BYTES + int(FRAGMENTATION * alloc)


def test_fsdp_accumulation_keeps_unsharded_fp32_grads():
    one = estimate_memory(TINY, lay(strategy="fsdp", grad_accum_steps=1), 1_000_000).per_device_bytes
    acc = estimate_memory(TINY, lay(strategy="fsdp", grad_accum_steps=4), 1_000_000).per_device_bytes
    # a buffer of the backward passes: the sharded grads the optimizer steps do not change
    assert acc.buffers - one.buffers == 4 * 1_000_000 and acc.grads == one.grads
    assert acc.total > one.total


def test_offload_moves_states_to_the_host_and_nvme():
    base = estimate_memory(TINY, lay(zero_stage=3), 1_000_000)
    cpu = estimate_memory(TINY, lay(zero_stage=3, offload_optimizer="cpu", offload_params="cpu"), 1_000_000)
    d = cpu.per_device_bytes
    assert (d.params, d.grads, d.optimizer, d.step_grads) == (0, 0, 0, 0)
    # per rank: bf16 params 0.5e6 + fp32 step grads 1e6 + master, m, v 3e6; 4 ranks on the node
    assert cpu.host_per_node.offload == 4 * (500_000 + 1_000_000 + 3_000_000)
    assert cpu.host_per_node_bytes > base.host_per_node_bytes - base.host_per_node.loading
    nvme = estimate_memory(TINY, lay(zero_stage=3, offload_optimizer="nvme", offload_params="nvme"), 1_000_000)
    assert nvme.nvme_per_node_bytes == 4 * (500_000 + 3_000_000)
    assert nvme.host_per_node.buffers > 0
    fsdp = estimate_memory(TINY, lay(strategy="fsdp", offload_params="cpu"), 1_000_000)
    assert fsdp.per_device_bytes.params == 0 and fsdp.host_per_node.offload == 4 * (1_000_000 + 1_000_000 + 2_000_000)


# --------------------------------------------------------------------------- activations by hand


def test_layer_activations_by_hand():
    x = ActivationInputs(bytes_per_value=2, micro_batch_size=1, seq_len=128, checkpointing=False, attn="sdpa",
                         packed=True, full=True)
    # norms 2 x (4x64 + 4 + 2x64) = 776; q/k/v input 128; attention 2x(64 + 2x64 + 64) + 16 = 528 (k, v
    # repeated to 4 heads: the packed mask); o_proj input 128; gate/up input 128; MLP 3x2x128 = 768; down 256
    assert layer_bytes_per_token(TINY, x)[0] == 2712
    flash = ActivationInputs(**{**x.__dict__, "attn": "flash_attention_2"})
    assert layer_bytes_per_token(TINY, flash)[0] == 2712 - 128  # no mask: k, v stay at 2 heads
    lora = ActivationInputs(**{**x.__dict__, "full": False, "lora_targets": ("q_proj", "v_proj"),
                               "lora_dropout": 0.1, "lora_r": 8})
    # frozen norms keep no y; q and v each keep their dropout (2 + 1) x 64; nothing for o, gate, up, down
    # inputs; lora_A outputs 2 x 8 x 2
    assert layer_bytes_per_token(TINY, lora)[0] == 2 * 260 + 2 * 3 * 64 + 528 + 768 + 32
    # under ZeRO-3 every projection keeps its input for the frozen base layer too (DeepSpeed's
    # LinearFunctionForZeroStage3): q/k/v input, o_proj input, gate/up input 2x64 each, down 2x128
    z3 = ActivationInputs(**{**lora.__dict__, "frozen_keep_input": True})
    assert layer_bytes_per_token(TINY, z3)[0] == layer_bytes_per_token(TINY, lora)[0] + 3 * 128 + 256
    assert layer_bytes_per_token(TINY, ActivationInputs(**{**x.__dict__, "frozen_keep_input": True}))[0] == 2712


def test_checkpointing_micro_batch_and_sequence_scale_activations():
    x = ActivationInputs(bytes_per_value=2, micro_batch_size=2, seq_len=128, checkpointing=False, attn="sdpa",
                         packed=True, full=True)
    a = estimate_activations(TINY, x)
    ck = estimate_activations(TINY, ActivationInputs(**{**x.__dict__, "checkpointing": True}))
    assert ck.activations < a.activations
    assert a.activations == 3 * 2712 * 256 + (4 * 64 + 4 + 2 * 64 + 2 * 64 + 2 * 2 * 16) * 256 + 2 * 128 * 128
    assert ck.activations == 2 * 2 * 64 * 256 + 2 * 2712 * 256 + (4 * 64 + 4 + 256 + 64) * 256 + 2 * 128 * 128
    assert a.logits == 2 * 2 * 100 * 256 + 2 * 4 * 100 * 128  # logits + their gradient; one fp32 piece
    double = estimate_activations(TINY, ActivationInputs(**{**x.__dict__, "micro_batch_size": 4}))
    assert double.logits > a.logits and double.activations > a.activations


# --------------------------------------------------------------------------- forecast


def _spec(**kw):
    job = {"data": {"max_seq_len": 4096}, "model": {"dtype": "bf16"},
           "train": {"method": "full", "micro_batch_size": 1, "global_batch_size": 64, "max_steps": 500},
           "parallel": {"strategy": "zero", "zero_stage": 3},
           "cluster": {"nodes": 2, "gpus_per_node": 8, "accelerator": "H100-SXM"},
           "report": {"country_iso_code": "FRA", "gpu_hour_price": 2.5, "energy_price_per_kwh": 0.17, "pue": 1.3}}
    for k, v in kw.items():
        job[k] = {**job.get(k, {}), **v}
    return build_job(job)


def test_forecast_cost_and_co2_follow_the_prices_and_codecarbon(llama8b_lora):
    ci, source = carbon_intensity("FRA")
    full = llama8b_lora.model_copy(update={"n_trainable_params": llama8b_lora.n_params})
    f = plan_job(_spec(), device="cuda", model_info=full, carbon_intensity=ci, carbon_source=source).forecast
    assert f.steps == 500 and f.tokens == 500 * 64 * 4096
    assert f.mfu_assumed == 0.38 and "Llama 3" in f.mfu_source
    assert f.gpu_hours == pytest.approx(f.hours * 16)
    assert f.cost == f.gpu_hours * 2.5 + f.kwh * 0.17  # exactly
    assert f.kwh == pytest.approx(f.hours * (16 * 700 + 2 * f.host_power_w) / 1000 * 1.3)
    # CodeCarbon's own offline computation for the same country
    from codecarbon.core.emissions import Emissions
    from codecarbon.input import DataSource

    mix = DataSource().get_global_energy_mix_data()["FRA"]
    assert f.kg_co2e / f.kwh == pytest.approx(Emissions._global_energy_mix_to_emissions_rate(mix).kgs_per_kWh)


def test_forecast_needs_steps_and_a_gpu_kind():
    spec = _spec(train={"max_steps": None}, cluster={"accelerator": None})
    f = plan_job(spec, device="cuda", model_info=TINY).forecast
    assert f.steps is None and f.hours is None and f.cost is None
    assert any("needs the data's row count" in m for m in f.missing)
    assert any("cluster.accelerator" in m for m in f.missing)
    f2 = plan_job(spec, device="cuda", model_info=TINY, train_rows=640).forecast
    assert f2.steps == 10 and "640 rows" in f2.steps_source


def test_calibration_replaces_the_assumptions():
    from launcher.plan import Calibration

    cal = Calibration(run_dir="/runs/x", tokens_per_s_per_device=1000.0, energy_per_token_j=2.0, pue=1.0)
    f = plan_job(_spec(), device="cuda", model_info=TINY, calibration=cal, carbon_intensity=100.0).forecast
    assert f.step_time_s == pytest.approx(64 * 4096 / (1000.0 * 16))
    assert f.kwh == pytest.approx(f.tokens * 2.0 / 3.6e6 * 1.3)  # rescaled to this job's PUE
    assert f.kg_co2e == pytest.approx(f.kwh * 0.1)
    assert f.cost == f.gpu_hours * 2.5 + f.kwh * 0.17


def test_70b_on_64_nodes_states_communication_and_its_bound():
    info = read_model_info(LLAMA3_70B)
    job = dict(data={"max_seq_len": 4096}, train={"micro_batch_size": 1, "global_batch_size": 512},
               cluster={"nodes": 64, "gpus_per_node": 8, "interconnect_gbps": 3200})
    fast = plan_job(_spec(**job), device="cuda", model_info=info).forecast.communication
    P, N = info.n_params, 512
    assert fast.bytes_per_gpu_per_step == int((N - 1) / N * 2 * P + 2 * (N - 1) / N * 2 * P)
    assert fast.time_lower_bound_s == pytest.approx(fast.bytes_per_gpu_per_step / 400e9)
    assert fast.bound == "compute"
    slow = plan_job(_spec(**{**job, "cluster": {**job["cluster"], "interconnect_gbps": 100}}), device="cuda",
                    model_info=info).forecast
    assert slow.communication.bound == "communication"
    assert slow.step_time_s == pytest.approx(slow.communication.time_lower_bound_s)
    unknown = plan_job(_spec(**{**job, "cluster": {**job["cluster"], "interconnect_gbps": None}}), device="cuda",
                       model_info=info).forecast.communication
    assert unknown.time_lower_bound_s is None and "unknown" in unknown.note


# --------------------------------------------------------------------------- plan.json, CLI


def test_plan_json_carries_memory_and_forecast_and_reads_back(tmp_path):
    p = plan_job(_spec(), device="cuda", model_info=TINY, carbon_intensity=50.0)
    write_plan(tmp_path, p)
    back = read_plan(tmp_path)
    assert back == p
    d = json.loads((tmp_path / "plan.json").read_text())
    assert {"total", "trainable"} <= set(d["params"])
    assert {"params", "grads", "optimizer", "activations", "total"} <= set(d["memory"]["per_device_bytes"])
    assert isinstance(d["memory"]["host_per_node_bytes"], int)
    assert {"steps", "tokens", "hours", "gpu_hours", "kwh", "kg_co2e", "cost", "currency",
            "mfu_assumed"} <= set(d["forecast"])
    legacy = dict(d, memory_gib_per_device={"params": 1.0, "grads": 1.0, "optimizer": 1.0, "total": 3.0})
    (tmp_path / "plan.json").write_text(json.dumps(legacy))
    assert read_plan(tmp_path).memory == p.memory  # a run directory of launcher 0.1 still reads


def _model_dir(tmp_path: Path, cfg: dict) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_best_fit_overrides_plan_cleanly(tmp_path):
    _model_dir(tmp_path, LLAMA3_8B)
    res = CliRunner().invoke(cli, ["init", str(tmp_path / "job.yaml")])
    assert res.exit_code == 0
    job = str(tmp_path / "job.yaml")
    common = [f"model.path={tmp_path / 'model'}", "data.max_seq_len=4096", "train.method=full",
              "train.max_steps=100", "cluster.accelerator=H100-SXM"]
    res = CliRunner().invoke(cli, ["plan", job, *common, "--gpu-memory", "80GiB", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["fit"] and isinstance(out["fits"], bool)
    best = out["fit"][0]
    assert set(best) >= {"overrides", "per_device_bytes_total", "forecast"}
    assert best["per_device_bytes_total"] <= 80 * 2**30 * (1 - out["fit_margin"])
    rates = [c["forecast"]["tokens_per_s_per_device"] for c in out["fit"]]
    assert rates == sorted(rates, reverse=True)  # best first
    again = CliRunner().invoke(cli, ["plan", job, *common, *best["overrides"], "--json"])
    assert again.exit_code == 0, again.output
    plan = json.loads(again.output)
    assert plan["memory"]["per_device_bytes"]["total"] == best["per_device_bytes_total"]
    assert plan["global_batch_size"] == out["global_batch_size"]  # the job's global batch is kept
    text = CliRunner().invoke(cli, ["plan", job, *common, "--gpu-memory", "80GiB"])
    assert "best: launcher plan" in text.output and "tok/s/GPU" in text.output
    assert "MFU assumed 38% on NVIDIA H100 SXM" in text.output


def test_hub_id_in_the_local_cache_gives_the_shape(tmp_path):
    cache = tmp_path / "hub"
    snap = cache / "models--acme--llama-8b" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(LLAMA3_8B))
    (cache / "models--acme--llama-8b" / "refs").mkdir()
    (cache / "models--acme--llama-8b" / "refs" / "main").write_text("a" * 40)
    res = run_cli(["plan", "model.path=acme/llama-8b", "model.dtype=bf16", "data.max_seq_len=4096",
                   "train.method=full", "train.max_steps=10", "cluster.accelerator=A100-SXM-80GB", "--device", "cuda",
                   "--json"], tmp_path, env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
                                             "LAUNCHER_CACHE": str(tmp_path / "lc")})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["params"]["total"] == 8_030_261_248
    assert out["memory"]["per_device_bytes"]["total"] > out["memory"]["per_device_bytes"]["model_states"] > 0
    assert out["forecast"]["mfu_assumed"] == 0.45 and out["forecast"]["kg_co2e"] > 0


def test_fit_keeps_packed_flash_attention_at_micro_batch_1():
    from launcher.plan.fit import fit

    spec = _spec(model={"attn_implementation": "flash_attention_2"})
    kept, _ = fit(spec, "cuda", TINY, 80 * 2**30, global_batch_size=64, world_size=16)
    assert kept and {c.plan.micro_batch_size for c in kept} == {1}
    padded = _spec(model={"attn_implementation": "flash_attention_2"}, data={"packing": False})
    kept, _ = fit(padded, "cuda", TINY, 80 * 2**30, global_batch_size=64, world_size=16)
    assert {c.plan.micro_batch_size for c in kept} == {1, 2, 4}


def test_gpu_memory_needs_a_known_model(tmp_path):
    (tmp_path / "job.yaml").write_text("model: {path: ./nowhere}\n")
    res = CliRunner().invoke(cli, ["plan", str(tmp_path / "job.yaml"), "--gpu-memory", "80GiB"])
    assert res.exit_code != 0 and "model's shape is unknown" in str(res.exception or res.output)


def test_parse_size():
    from launcher.cli.plan import parse_size

    assert parse_size("80GiB") == 80 * 2**30 == parse_size("80")
    assert parse_size("80GB") == 80 * 10**9 == parse_size("80G")
    assert parse_size("141.5 GiB") == int(141.5 * 2**30)


# --------------------------------------------------------------------------- report: forecast vs actual


def test_report_puts_forecast_against_actual_with_memory_records(tmp_path):
    from tests.unit.test_report import job_dict, make_run

    from launcher.report import build_report
    from launcher.report.render import render_markdown

    run = make_run(tmp_path, name="no-mem")
    rep = build_report(run)
    r = rep.to_json()
    assert r["forecast"]["rows"]["peak_memory_bytes"]["actual"] is None
    assert "Peak memory per device | forecast n/a · actual n/a" in render_markdown(rep)

    # the same run with a model the plan knows, and every rank's memory written by hand
    plan = plan_job(JobSpec.model_validate(job_dict()), device="cuda", model_info=TINY, train_rows=512)
    planned = plan.memory.per_device_bytes.total - CUDA_CONTEXT_BYTES
    ranks = [RankMemory(rank=i, host="node0", rss_anon_baseline_bytes=10, rss_anon_peak_bytes=20, vm_hwm_bytes=30,
                        cuda_max_allocated_bytes=planned // 2, cuda_max_reserved_bytes=planned // (2 - (i == 3)),
                        params_bytes=1, grads_bytes=1, optimizer_bytes=1) for i in range(16)]
    recs = [MemoryRecord(phase="setup", step=0, ranks=ranks[:1]), MemoryRecord(phase="end", step=4, ranks=ranks)]
    run2 = make_run(tmp_path, name="mem", records_extra=recs)
    write_plan(run2, plan)
    rep2 = build_report(run2)
    r2 = rep2.to_json()
    row = r2["forecast"]["rows"]["peak_memory_bytes"]
    assert row["actual"] == planned and row["forecast"] == planned and row["ratio"] == 1.0
    assert "rank 3" in row["note"]
    # plan.json knew neither the GPU kind (the job names none) nor the carbon intensity: the report
    # completes the forecast with the start record's accelerator and CodeCarbon's data
    assert plan.forecast.hours is None
    assert any("made at report time" in n for n in r2["notes"])
    ci, _ = carbon_intensity("FRA")
    f = with_forecast(plan, accelerator="NVIDIA H100 80GB HBM3", carbon_intensity=ci).forecast
    t = r2["forecast"]["rows"]["time_s"]
    assert t["forecast"] == pytest.approx(f.step_time_s * 4) and t["actual"] == 40.0
    assert t["ratio"] == pytest.approx(40.0 / (f.step_time_s * 4))
    assert r2["forecast"]["rows"]["cost"]["ratio"] == pytest.approx(r2["cost"]["total"] / f.cost)
    assert r2["forecast"]["rows"]["kg_co2e"]["forecast"] == pytest.approx(f.kwh * ci / 1000)
    md = render_markdown(rep2)
    assert "## Forecast vs actual" in md and "Peak memory per device | forecast" in md
    from launcher.report.render import render_csv, render_html

    assert "Forecast vs actual" in render_html(rep2, None)
    import csv
    import io

    row = next(csv.DictReader(io.StringIO(render_csv(rep2))))
    assert float(row["peak_memory_ratio"]) == 1.0 and float(row["forecast_cost_ratio"]) > 0


def test_calibrate_from_an_earlier_run(tmp_path):
    from tests.unit.test_report import make_run

    run = make_run(tmp_path, name="earlier")
    _model_dir(tmp_path, LLAMA3_8B)
    res = CliRunner().invoke(cli, ["plan", f"model.path={tmp_path / 'model'}", "train.max_steps=10",
                                   "data.max_seq_len=512", "--device", "cuda", "--calibrate", str(run), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    f = out["forecast"]
    assert f["calibration"]["run_dir"] == str(run.resolve()) and f["calibration"]["source"] == "--calibrate"
    # the earlier run's step time, scaled by the FLOPs each rank computes per step
    from launcher.report.history import point_of

    pt = point_of(run)
    assert pt.step_time_s == pytest.approx(40.0 / pt.steps) and pt.world_size == 16
    mine = out["tokens_per_step"] * f["flops_per_token"] / out["world_size"]
    theirs = pt.tokens_per_step * pt.flops_per_token / pt.world_size
    assert f["step_time_s"] == pytest.approx(pt.step_time_s * mine / theirs)
    assert f["tokens_per_s_per_device"] != pytest.approx(1_010_000 / 40.0 / 16)  # not the 8B's tokens/s unscaled


def test_with_forecast_keeps_what_it_was_handed():
    p = plan_job(_spec(), device="cuda", model_info=TINY, carbon_intensity=123.0)
    again = with_forecast(p)
    assert again.forecast == p.forecast
    assert build_forecast(p, carbon_intensity=123.0) == p.forecast


# --------------------------------------------------------------------------- host memory: lean or fast

def test_host_memory_auto_is_lean_only_when_the_node_is_short_of_ram():
    """parallel.host_memory=auto: lean (fixed mmap threshold, a trim every step) when the planned
    host memory of a node passes half of its RAM, fast otherwise or when either is unknown; a
    mode the job names is kept. The launch environment follows the resolved mode."""
    from launcher.plan.core import LEAN_SHARE
    from launcher.render.torchrun import render_env

    def planned(ram, **parallel):
        spec = build_job({"parallel": {"strategy": "zero", "zero_stage": 2, **parallel},
                          "cluster": {"device": "cpu", "cpu_procs_per_node": 2}})
        return plan_job(spec, device="cpu", model_info=TINY, cpu_count=2, host_memory_bytes=ram)

    host = planned(None).memory.host_per_node_bytes
    roomy, short = planned(int(host / LEAN_SHARE) + 2**20), planned(int(host / LEAN_SHARE) - 2**20)
    assert (roomy.host_memory, short.host_memory) == ("fast", "lean")
    assert any("host_memory = lean (auto: planned host memory" in d and "over 50%" in d for d in short.derivations)
    assert any("parallel.host_memory=lean trades speed for host memory" in n for n in short.notes)
    assert not any("host_memory=lean" in n for n in roomy.notes)
    assert planned(None).host_memory == "fast"
    assert planned(2**50, host_memory="lean").host_memory == "lean"
    assert planned(2**20, host_memory="fast").host_memory == "fast"
    assert "MALLOC_MMAP_THRESHOLD_" in render_env(short) and "MALLOC_MMAP_THRESHOLD_" not in render_env(roomy)


def test_a_nodes_ram_comes_from_slurm_mem_or_this_machine():
    from launcher.prepare import node_ram_bytes

    def spec(mem=None):
        return build_job({"cluster": {"slurm": {"mem": mem}}})

    assert node_ram_bytes(spec("200G"), here=False) == 200 * 2**30
    assert node_ram_bytes(spec("4096"), here=False) == 4096 * 2**20  # sbatch's unit: megabytes
    assert node_ram_bytes(spec("1.5T")) == int(1.5 * 2**40)
    assert node_ram_bytes(spec(), here=False) is None
    assert node_ram_bytes(spec()) == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # MemTotal


def test_zero_sizes_on_cpu_follow_the_host_memory_mode():
    """On CPU, fast gives ZeRO DeepSpeed's sizes (buckets no larger than the model; ZeRO-3 keeps a
    model under 1B parameters gathered), lean caps them at a twentieth of the model (the 290M
    scale runs' bound needs it). On GPUs the twentieth stays."""
    def zero(device, mode):
        spec = build_job({"parallel": {"strategy": "zero", "zero_stage": 3, "host_memory": mode},
                          "cluster": {"device": device, "cpu_procs_per_node": 2, "gpus_per_node": 2}})
        plan = plan_job(spec, device=device, model_info=TINY, cpu_count=2, host_memory_bytes=2**40)
        return plan.ds_config["zero_optimization"], plan

    fast, plan = zero("cpu", "fast")
    assert fast["stage3_max_live_parameters"] == 1_000_000_000 and fast["reduce_bucket_size"] == TINY.n_params
    assert any("stage3_max_live_parameters = 1,000,000,000 (DeepSpeed's default" in d for d in plan.derivations)
    lean, _ = zero("cpu", "lean")
    assert lean["stage3_max_live_parameters"] == TINY.n_params // 20 == lean["stage3_prefetch_bucket_size"]
    assert zero("cpu", "auto")[0] == fast  # a terabyte of RAM: fast
    assert zero("cuda", "fast")[0]["stage3_max_live_parameters"] == TINY.n_params // 20


def test_glibcs_heap_under_fast_is_counted_on_cpu_only():
    """On CPU under host_memory=fast glibc keeps freed blocks in its heap (GLIBC_FAST_RETENTION per
    rank, measured: docs/memory.md); lean maps and unmaps them, and GPUs' memory is not glibc's.
    The rest of the overhead is the 10% of what is allocated either way."""

    def mem(device, mode):
        spec = build_job({"parallel": {"strategy": "fsdp", "host_memory": mode},
                          "cluster": {"device": device, "cpu_procs_per_node": 2, "gpus_per_node": 2}})
        plan = plan_job(spec, device=device, model_info=TINY, cpu_count=2, host_memory_bytes=2**40)
        assert plan.host_memory == mode
        return plan.memory

    fast, lean, gpu = mem("cpu", "fast"), mem("cpu", "lean"), mem("cuda", "fast")
    allocated = fast.per_device_bytes.total - fast.per_device_bytes.overhead
    assert fast.per_device_bytes.overhead == int(FRAGMENTATION * allocated) + GLIBC_FAST_RETENTION
    assert lean.per_device_bytes.total == fast.per_device_bytes.total - GLIBC_FAST_RETENTION
    assert gpu.per_device_bytes.overhead == int(FRAGMENTATION * allocated) + CUDA_CONTEXT_BYTES
    assert any("glibc" in a for a in fast.assumptions) and not any("glibc" in a for a in lean.assumptions)
