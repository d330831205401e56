"""The forecast on every device, calibrated by earlier runs, and when to start: the CPU probe, the
calibration history and its nearest point, the hourly intensity CSV (best start, #SBATCH --begin,
the report's CO2 of the hours run) and the price of offsetting."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import cli
from launcher.plan import plan_job
from launcher.plan.calibration import distance, from_point, nearest
from launcher.plan.start import best_start, mean_intensity
from launcher.plan.types import CalibrationPoint
from launcher.report.history import read_points
from tests.unit.test_report import T0, job_dict, make_run

REPO = Path(__file__).resolve().parents[2]
HOUR = 3600.0


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def intensity_csv(path: Path, start: float, values: list[float]) -> Path:
    path.write_text("timestamp,g_co2e_per_kwh\n" + "".join(f"{iso(start + i * HOUR)},{g}\n" for i, g in
                                                           enumerate(values)))
    return path


def clean_window_csv(tmp_path: Path) -> tuple[Path, float]:
    """An hourly CSV from the hour before now for 30 hours: 400 g/kWh, except 50 g/kWh for the 4
    hours that start 6 hours after the current hour. Returns (path, the clean window's start)."""
    hour = time.time() // HOUR * HOUR
    values = [50.0 if 7 <= i < 11 else 400.0 for i in range(31)]  # row 0 is the hour before now
    return intensity_csv(tmp_path / "intensity.csv", hour - HOUR, values), hour + 6 * HOUR


# --------------------------------------------------------------------------- CPU: plan and probe


def test_plan_on_a_machine_without_gpu_plans_cpu_and_forecasts_from_the_probe(tmp_path):
    """The embedded default planned here: device cpu, no CUDA context in its memory, a forecast of
    time and energy from this machine's measured matrix throughput and CodeCarbon's power."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "launcher", "plan", "train.max_steps=100", "--no-calibration", "--json"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["device"] == "cpu" and plan["backend"] == "gloo"
    assert not any("CUDA" in line for line in plan["memory"]["formulas"] + plan["memory"]["assumptions"])
    f = plan["forecast"]
    probe = f["cpu"]
    assert probe["matmul_gflops"] > 0 and probe["threads"] == plan["threads_per_rank"]
    assert Path(probe["cache_file"]).is_file()
    # time: the FLOPs of a step over the ranks' measured rate and the stated MFU
    assert f["step_time_s"] == pytest.approx(plan["tokens_per_step"] * f["flops_per_token"]
                                             / (plan["world_size"] * probe["matmul_gflops"] * 1e9 * f["mfu_assumed"]))
    # energy: CodeCarbon's CPU power model at the ranks' load, and its RAM power, for the hours
    load = min(1.0, plan["procs_per_node"] * plan["threads_per_rank"] / probe["logical_cpus"])
    host_w = probe["cpu_tdp_w"] * (0.1 + 0.9 * load ** 3) + probe["ram_w"]
    assert f["host_power_w"] == pytest.approx(host_w)
    assert f["kwh"] == pytest.approx(f["hours"] * host_w / 1000 * plan["job"]["report"]["pue"])
    assert f["kg_co2e"] is not None and not [m for m in f["missing"] if m.startswith(("time", "energy"))]
    text = CliRunner().invoke(cli, ["plan", "train.max_steps=100", "--no-calibration"]).stdout  # the probe, cached
    assert "device         cpu (gloo)" in text and "CUDA" not in text and "GFLOP/s per rank" in text


def test_accelerator_named_plans_for_the_clusters_gpus():
    res = CliRunner().invoke(cli, ["plan", "cluster.accelerator=H100-SXM", "train.max_steps=10", "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert plan["device"] == "cuda" and plan["forecast"]["accelerator"] == "NVIDIA H100 SXM"


# --------------------------------------------------------------------------- calibration


def point(**kw) -> CalibrationPoint:
    base = dict(run_dir="/runs/a", finished_at=1.0, device="cpu", device_kind="AMD EPYC", n_params=321_408,
                n_trainable_params=321_408, method="full", strategy="zero", zero_stage=2, dtype="fp32", seq_len=128,
                packing=True, micro_batch_size=8, grad_accum_steps=1, world_size=2, nodes=1, threads_per_rank=1,
                tokens_per_step=2048, flops_per_token=2.0e6, steps=10, step_time_s=0.5,
                tokens_per_s_per_device=2048.0, energy_per_token_j=0.01, pue=1.2)
    base.update(kw)
    return CalibrationPoint(**base)


def demo_plan(*overrides: str):
    """The embedded default on 2 CPU ranks of one thread each (micro 8, 128 tokens, ZeRO-2)."""
    from launcher.cli._common import load_job_or_default
    from launcher.sources import model_info

    spec = load_job_or_default(None, ["cluster.device=cpu", "train.max_steps=10", *overrides])
    return plan_job(spec, device="cpu", model_info=model_info(spec), cpu_count=2)


def fitted_point(plan, name: str, tokens: int, extra_s: float = 0.0, **kw) -> CalibrationPoint:
    """A run of ``plan``'s FLOPs per token, ``tokens`` per step on 2 ranks of one thread: 20 ms +
    its FLOPs at 50 GFLOP/s per thread + ``extra_s`` (what the term under test costs)."""
    from launcher.plan.calibration import work_per_thread

    fpt, tps = plan.forecast.flops_per_token, plan.tokens_per_step
    return point(run_dir=f"/runs/{name}", tokens_per_step=tokens, flops_per_token=fpt,
                 micro_batch_size=plan.micro_batch_size * tokens // tps,
                 step_time_s=0.02 + work_per_thread(tokens, fpt, 2, 1) / 50e9 + extra_s, **kw)


def test_nearest_point_same_device_kind_least_distance_newest_first():
    plan = demo_plan()
    same = point(run_dir="/runs/same")
    assert distance(same, plan, "AMD EPYC") == 0.0
    assert distance(same, plan, "Intel Xeon") is None  # another CPU: never a calibration
    assert distance(point(device="cuda"), plan, "AMD EPYC") is None
    twice = point(run_dir="/runs/seq256", seq_len=256)
    assert distance(twice, plan, "AMD EPYC") == pytest.approx(0.6931, abs=1e-4)  # |ln 2|
    lora = point(run_dir="/runs/lora", method="lora")
    assert distance(lora, plan, "AMD EPYC") == 1.0
    newer = point(run_dir="/runs/newer", finished_at=2.0)
    cal = nearest([twice, lora, same, newer], plan, "AMD EPYC")
    assert (cal.run_dir, cal.distance, cal.source) == ("/runs/newer", 0.0, "history")
    assert nearest([point(device_kind="Intel Xeon")], plan, "AMD EPYC") is None


def test_the_forecast_scales_a_point_by_flops_per_rank_and_its_energy_by_time_and_devices():
    from launcher.plan import with_forecast

    plan = demo_plan()
    f0 = plan.forecast
    p = point(flops_per_token=f0.flops_per_token, tokens_per_step=plan.tokens_per_step // 2, step_time_s=0.25)
    f = with_forecast(plan, calibration=from_point(p, "history", 0.0)).forecast
    # twice the tokens per step at the same FLOPs per token and world: twice the step time
    assert f.step_time_s == pytest.approx(0.5)
    # the same time per token and devices: the same energy per token
    assert f.kwh == pytest.approx(f.tokens * 0.01 / 3.6e6 * plan.job.report.pue / 1.2)
    assert any("scaled by the FLOPs per rank per step" in a for a in f.assumptions)
    # on CPU the cores draw the power: one rank of two threads as two ranks of one thread each
    one = demo_plan("cluster.cpu_procs_per_node=1", "parallel.zero_stage=0")
    assert (one.world_size, one.threads_per_rank, p.world_size, p.threads_per_rank) == (1, 2, 2, 1)
    g = with_forecast(one, calibration=from_point(p, "history", 1.0)).forecast
    per_token = g.kwh * 3.6e6 / g.tokens / (one.job.report.pue / 1.2)
    assert per_token == pytest.approx(0.01 * (g.step_time_s / one.tokens_per_step) / (0.25 / p.tokens_per_step))


def test_a_configuration_not_in_the_history_is_forecast_as_overhead_plus_work_over_a_fitted_rate():
    """Runs at two sizes of work under two strategies, each step 20 ms (ZeRO-2) or 60 ms (ZeRO-3) of
    overhead plus its FLOPs at 50 GFLOP/s per thread. A ZeRO-3 job of a size none of them had gets
    ZeRO-3's overhead and the fitted rate, not the nearest run's time scaled by FLOPs alone."""
    from launcher.plan import with_forecast
    from launcher.plan.calibration import OVERHEAD_TAU, fit_step, work_per_thread

    plan = demo_plan("parallel.zero_stage=3")
    fpt, tps = plan.forecast.flops_per_token, plan.tokens_per_step
    x = work_per_thread(tps, fpt, 2, 1)
    rate = 50e9

    def run(name, stage, tokens):
        work = work_per_thread(tokens, fpt, 2, 1)
        return point(run_dir=f"/runs/{name}", zero_stage=stage, tokens_per_step=tokens, flops_per_token=fpt,
                     micro_batch_size=plan.micro_batch_size * tokens // tps,
                     step_time_s=(0.02 if stage == 2 else 0.06) + work / rate)

    history = [run("z2-small", 2, tps // 4), run("z2-big", 2, tps * 4), run("z3-small", 3, tps // 4),
               run("z3-big", 3, tps * 4)]
    fit = fit_step(history, plan, "AMD EPYC")
    assert fit.points == 4 and fit.gflops_per_thread == pytest.approx(50.0, rel=1e-3)
    # ZeRO-3's runs weigh 1 and ZeRO-2's exp(-1/OVERHEAD_TAU): the overhead leans to ZeRO-3's 60 ms
    w = math.exp(-1 / OVERHEAD_TAU)
    assert fit.overhead_s == pytest.approx((2 * 0.06 + 2 * w * 0.02) / (2 + 2 * w), rel=1e-4)
    cal = nearest(history, plan, "AMD EPYC")
    assert cal.fit == fit and cal.distance > 0
    f = with_forecast(plan, calibration=cal).forecast
    assert f.step_time_s == pytest.approx(fit.overhead_s + x / rate, rel=1e-3)
    assert any("fitted over 4 runs" in a for a in f.assumptions)
    # scaled by FLOPs from the nearest run alone, the forecast would be 4x its step time or a quarter
    assert abs(f.step_time_s - 0.06 - x / rate) < abs(f.step_time_s - 4 * (0.06 + x / 4 / rate))
    # a run of the job's own configuration is scaled from directly, with no fit
    same = run("z3-same", 3, tps)
    assert nearest([*history, same], plan, "AMD EPYC").fit is None
    # too little to fit: one size of work, or fewer than 3 runs
    assert fit_step([run("a", 2, tps), run("b", 3, tps), run("c", 2, tps)], plan, "AMD EPYC") is None
    assert fit_step(history[:2], plan, "AMD EPYC") is None


def test_the_bytes_a_sharded_run_gathers_are_fitted_and_forecast_with_the_job_s_own():
    """ZeRO-3 and FSDP2 gather every parameter each step: a cost that grows with the model, not the
    tokens. Runs of 20 ms overhead + FLOPs at 50 GFLOP/s per thread + 10 s per GB gathered (ZeRO-3
    runs of two model sizes, ZeRO-2 runs with none): the fit finds all three, and a ZeRO-3 job is
    forecast with the bytes its own plan gathers. Points written before the bytes were kept (None)
    leave the fit to the rate alone."""
    from launcher.plan import with_forecast
    from launcher.plan.calibration import fit_step, gathered_bytes, work_per_thread

    plan = demo_plan("parallel.zero_stage=3")
    fpt, tps = plan.forecast.flops_per_token, plan.tokens_per_step
    mine = gathered_bytes(plan)
    # the plan's own all-gathers (forward and backward) and reduce-scatter of a 2-rank ZeRO-3 job
    assert mine == plan.forecast.communication.bytes_per_gpu_per_step > 0
    assert gathered_bytes(demo_plan("parallel.zero_stage=2")) == 0
    assert gathered_bytes(demo_plan("parallel.zero_stage=3", "cluster.cpu_procs_per_node=1")) == 0

    def run(name, stage, tokens, gathered):
        return fitted_point(plan, name, tokens, gathered * 10e-9, zero_stage=stage, gathered_bytes=gathered)

    history = [run("z2-small", 2, tps // 4, 0), run("z2-big", 2, tps * 4, 0),
               run("z3-small", 3, tps // 4, 4_000_000), run("z3-big", 3, tps * 4, 40_000_000)]
    fit = fit_step(history, plan, "AMD EPYC")
    assert (fit.gflops_per_thread, fit.s_per_gb_gathered, fit.overhead_s) == (
        pytest.approx(50.0, rel=1e-3), pytest.approx(10.0, rel=1e-3), pytest.approx(0.02, rel=1e-3))
    f = with_forecast(plan, calibration=nearest(history, plan, "AMD EPYC")).forecast
    assert f.step_time_s == pytest.approx(0.02 + work_per_thread(tps, fpt, 2, 1) / 50e9 + mine * 10e-9, rel=1e-3)
    assert any("sent per rank at 10 s per GB" in a for a in f.assumptions)
    # a ZeRO-2 job gathers nothing: the same fit, no bytes
    z2 = demo_plan("parallel.zero_stage=2")
    f2 = with_forecast(z2, calibration=nearest(history, z2, "AMD EPYC")).forecast
    assert f2.step_time_s == pytest.approx(0.02 + work_per_thread(tps, fpt, 2, 1) / 50e9, rel=1e-3)
    # sharded points from before the bytes were kept: the rate alone, as before
    old = [p.model_copy(update={"gathered_bytes": None}) if p.zero_stage == 3 else p for p in history]
    assert fit_step(old, plan, "AMD EPYC").s_per_gb_gathered is None


def test_zero3_fetches_each_module_and_fsdp2_each_unit_twice_a_micro_step():
    """What each rank fetches per step where the parameters are sharded: ZeRO-3 every module that
    holds parameters (the demo's 21; with LoRA on its 14 linears, 28 more: A and B each), FSDP2
    every unit (2 decoder layers, the untied embedding and LM head, the root), forward and backward
    of each micro step, and again in the recompute with activation checkpointing."""
    from launcher.plan.calibration import module_fetches

    z3 = demo_plan("parallel.zero_stage=3")
    assert z3.model.n_param_modules == 21 and z3.grad_accum_steps == 1
    assert module_fetches(z3) == 21 * 2
    lora = demo_plan("parallel.zero_stage=3", "train.method=lora", "train.lora.r=8")
    assert lora.model.n_param_modules == 49 and module_fetches(lora) == 49 * 2
    accum = demo_plan("parallel.zero_stage=3", "train.global_batch_size=32", "train.activation_checkpointing=true")
    assert module_fetches(accum) == 21 * 3 * accum.grad_accum_steps and accum.grad_accum_steps == 2
    assert module_fetches(demo_plan("parallel.strategy=fsdp")) == (2 + 2 + 1) * 2
    assert module_fetches(demo_plan("parallel.zero_stage=2")) == 0
    # a model counted before its modules were: no fetches to forecast with
    assert module_fetches(z3.model_copy(update={"model": z3.model.model_copy(update={"n_param_modules": None})})) is None


def test_the_fetches_of_a_sharded_step_are_fitted_and_forecast_with_the_job_s_own():
    """ZeRO-3 fetches each module's parameters with hooks and a collective of its own: LoRA's
    adapters double the fetches of the same model. Runs of 20 ms + FLOPs at 50 GFLOP/s per thread
    + 0.5 ms per fetch (ZeRO-2 runs with none, full ZeRO-3 runs at two accumulations): the fit finds
    the three, and LoRA under ZeRO-3, which no run had, is forecast with its own 98 fetches. Where
    the fetches and the bytes gathered both are in the history and the fetches come out negative
    with the bytes, the bytes give way. Points written before the fetches were kept leave them out."""
    from launcher.plan import with_forecast
    from launcher.plan.calibration import fit_step, module_fetches, work_per_thread

    plan = demo_plan("parallel.zero_stage=3", "train.method=lora", "train.lora.r=8")
    fpt, tps = plan.forecast.flops_per_token, plan.tokens_per_step
    mine = module_fetches(plan)

    def run(name, stage, tokens, fetches, extra=0.0, gathered=0):
        return fitted_point(plan, name, tokens, fetches * 0.5e-3 + extra, zero_stage=stage, module_fetches=fetches,
                            gathered_bytes=gathered, method="lora")

    history = [run("z2-small", 2, tps // 4, 0), run("z2-big", 2, tps * 4, 0), run("z2-mid", 2, tps, 0),
               run("z3-small", 3, tps // 4, 42), run("z3-big", 3, tps * 4, 84)]
    fit = fit_step(history, plan, "AMD EPYC")
    assert (fit.gflops_per_thread, fit.ms_per_fetch, fit.overhead_s) == (
        pytest.approx(50.0, rel=1e-3), pytest.approx(0.5, rel=1e-3), pytest.approx(0.02, rel=1e-3))
    f = with_forecast(plan, calibration=nearest(history, plan, "AMD EPYC")).forecast
    assert f.step_time_s == pytest.approx(0.02 + work_per_thread(tps, fpt, 2, 1) / 50e9 + mine * 0.5e-3, rel=1e-3)
    assert any(f"{mine} parameter fetches per step at 0.5 ms each" in a for a in f.assumptions)
    # points from before the fetches were kept: not fitted
    old = [p.model_copy(update={"module_fetches": None}) if p.zero_stage == 3 else p for p in history]
    assert fit_step(old, plan, "AMD EPYC").ms_per_fetch is None
    # ZeRO-3 runs of four models whose extra cost neither the fetches nor the bytes explain alone
    # (a model of few large modules costing as much as one of many small ones): fitted with the
    # bytes, each fetch comes out negative; the bytes give way and the fetches are kept
    def sharded(name, fetches, extra, gathered):
        return run(name, 3, tps, fetches, extra=extra - fetches * 0.5e-3, gathered=gathered)

    mixed = [*history[:3], sharded("a", 42, 0.0325, 2_000_000), sharded("b", 10, 0.031, 2_000_000),
             sharded("c", 78, 0.068, 20_000_000), sharded("d", 14, 0.08, 14_000_000)]
    fit = fit_step(mixed, plan, "AMD EPYC")
    assert fit.ms_per_fetch and fit.ms_per_fetch > 0 and fit.s_per_gb_gathered is None


def test_zero3_and_fsdp2_each_have_their_cost_per_byte_gathered():
    """ZeRO-3 gathers module by module into flat buffers, FSDP2 unit by unit through DTensors: runs
    of 20 ms + FLOPs at 50 GFLOP/s per thread + 10 s per GB gathered under ZeRO-3 and 30 under
    FSDP2 (two sizes each, ZeRO-2 runs with none). Each job is forecast with its own strategy's
    cost; a history with no FSDP2 run lends an FSDP2 job ZeRO-3's."""
    from launcher.plan.calibration import fit_step

    z3, fsdp = demo_plan("parallel.zero_stage=3"), demo_plan("parallel.strategy=fsdp")
    tps = z3.tokens_per_step

    def run(name, strategy, stage, tokens, gathered):
        per_gb = {"zero": 10.0, "fsdp": 30.0}[strategy]
        return fitted_point(z3, name, tokens, gathered * per_gb * 1e-9, strategy=strategy, zero_stage=stage,
                            gathered_bytes=gathered)

    zero_runs = [run("z2-small", "zero", 2, tps // 4, 0), run("z2-big", "zero", 2, tps * 4, 0),
                 run("z3-small", "zero", 3, tps // 4, 4_000_000), run("z3-big", "zero", 3, tps * 4, 40_000_000)]
    history = [*zero_runs, run("fsdp-small", "fsdp", None, tps // 4, 3_000_000),
               run("fsdp-big", "fsdp", None, tps * 2, 30_000_000)]
    assert fit_step(history, z3, "AMD EPYC").s_per_gb_gathered == pytest.approx(10.0, rel=1e-3)
    assert fit_step(history, fsdp, "AMD EPYC").s_per_gb_gathered == pytest.approx(30.0, rel=1e-3)
    assert fit_step(zero_runs, fsdp, "AMD EPYC").s_per_gb_gathered == pytest.approx(10.0, rel=1e-3)


def test_what_a_step_of_several_ranks_costs_over_one_rank_is_fitted_and_paid_only_by_several():
    """Runs of one rank (two threads) and of two (one thread each), at two sizes of work each:
    20 ms + FLOPs at 50 GFLOP/s per thread, + 30 ms a step with two ranks (their collectives and
    waits). The fit finds all three; a one-rank job is forecast without the 30 ms, a two-rank job
    with it. A history of two-rank runs alone cannot tell it (None)."""
    from launcher.plan import with_forecast
    from launcher.plan.calibration import fit_step, work_per_thread

    plan = demo_plan("parallel.zero_stage=2")
    fpt, tps = plan.forecast.flops_per_token, plan.tokens_per_step

    def run(name, world, tokens):
        threads = 2 // world
        return point(run_dir=f"/runs/{name}", world_size=world, threads_per_rank=threads,
                     zero_stage=2 if world > 1 else 0, tokens_per_step=tokens, flops_per_token=fpt,
                     micro_batch_size=plan.micro_batch_size * tokens // tps,
                     step_time_s=0.02 + work_per_thread(tokens, fpt, world, threads) / 50e9 + (0.03 if world > 1 else 0))

    history = [run("one-small", 1, tps // 4), run("one-big", 1, tps * 4), run("two-small", 2, tps // 4),
               run("two-big", 2, tps * 4), run("two-mid", 2, tps * 2)]
    fit = fit_step(history, plan, "AMD EPYC")
    assert (fit.gflops_per_thread, fit.multi_rank_s, fit.overhead_s) == (
        pytest.approx(50.0, rel=1e-3), pytest.approx(0.03, rel=1e-3), pytest.approx(0.02, rel=1e-3))
    two = with_forecast(plan, calibration=nearest(history, plan, "AMD EPYC")).forecast
    assert two.step_time_s == pytest.approx(0.05 + work_per_thread(tps, fpt, 2, 1) / 50e9, rel=1e-3)
    assert any("+ 0.03 s per step of more than one rank" in a for a in two.assumptions)
    single = demo_plan("cluster.cpu_procs_per_node=1", "parallel.zero_stage=0")
    one = with_forecast(single, calibration=nearest(history, single, "AMD EPYC")).forecast
    assert one.step_time_s == pytest.approx(0.02 + work_per_thread(tps, fpt, 1, 2) / 50e9, rel=1e-3)
    assert not any("more than one rank" in a for a in one.assumptions)
    assert fit_step([p for p in history if p.world_size == 2], plan, "AMD EPYC").multi_rank_s is None


def test_lora_adapters_on_a_rank_of_several_threads_cost_what_its_threads_do_not_share():
    """peft's rank-r products are too thin for a CPU rank's threads to split. Runs of one rank (two
    threads) and of two (one thread each), full and LoRA, at two sizes of work: 20 ms + FLOPs at 50
    GFLOP/s per thread + 5 ns per adapter value the threads do not share. The fit finds the 5 ns; a
    LoRA job on one rank of two threads pays it, on two ranks of one thread it does not; LoRA
    points written before the count was kept leave the term out."""
    from launcher.plan import with_forecast
    from launcher.plan.calibration import adapter_work, fit_step, work_per_thread

    lora_one = demo_plan("train.method=lora", "cluster.cpu_procs_per_node=1", "parallel.zero_stage=0")
    lora_two = demo_plan("train.method=lora")
    # the tokens of a step x the features into and out of the adapted projections x (1 - 1/threads)
    features = lora_one.params["trainable"] / lora_one.job.train.lora.r
    assert adapter_work(lora_one) == lora_one.tokens_per_step * features * 0.5
    assert adapter_work(lora_two) == 0 and adapter_work(demo_plan("cluster.cpu_procs_per_node=1")) == 0
    fpt, tps = lora_one.forecast.flops_per_token, lora_one.tokens_per_step

    def run(name, world, method, tokens):
        threads = 2 // world
        values = tokens / world * features * (1 - 1 / threads) if method == "lora" else 0.0
        return point(run_dir=f"/runs/{name}", world_size=world, threads_per_rank=threads, method=method,
                     zero_stage=2 if world > 1 else 0, tokens_per_step=tokens, flops_per_token=fpt,
                     adapter_work=values, micro_batch_size=lora_one.micro_batch_size * tokens // tps,
                     step_time_s=0.02 + work_per_thread(tokens, fpt, world, threads) / 50e9 + values * 5e-9)

    history = [run(f"{w}-{m}-{n}", w, m, tokens) for w in (1, 2) for m in ("full", "lora")
               for n, tokens in (("small", tps // 4), ("big", tps * 4)) if not (w == 2 and m == "lora")]
    fit = fit_step(history, lora_one, "AMD EPYC")
    assert (fit.gflops_per_thread, fit.ns_per_adapter_value, fit.overhead_s) == (
        pytest.approx(50.0, rel=1e-3), pytest.approx(5.0, rel=1e-3), pytest.approx(0.02, rel=1e-3))
    one = with_forecast(lora_one, calibration=nearest(history, lora_one, "AMD EPYC")).forecast
    assert one.step_time_s == pytest.approx(0.02 + work_per_thread(tps, fpt, 1, 2) / 50e9
                                            + adapter_work(lora_one) * 5e-9, rel=1e-3)
    assert any("LoRA adapter values per step that the rank's threads do not share at 5 ns" in a
               for a in one.assumptions)
    two = with_forecast(lora_two, calibration=nearest(history, lora_two, "AMD EPYC")).forecast
    assert two.step_time_s == pytest.approx(0.02 + work_per_thread(tps, fpt, 2, 1) / 50e9, rel=1e-3)
    assert not any("adapter values" in a for a in two.assumptions)
    old = [p.model_copy(update={"adapter_work": None}) if p.method == "lora" else p for p in history]
    assert fit_step(old, lora_one, "AMD EPYC").ns_per_adapter_value is None


def test_the_overhead_leans_to_runs_of_the_job_s_model_size():
    """Runs configured alike, two of the job's model and two of a model ten times its parameters,
    whose steps carry 20 and 60 ms of overhead: the job's overhead leans to its own size's runs,
    a factor e of parameters counting as one difference of configuration."""
    from launcher.plan.calibration import OVERHEAD_SIZE, OVERHEAD_TAU, fit_step

    plan = demo_plan()
    n = plan.model.n_params
    history = [fitted_point(plan, "own-small", plan.tokens_per_step // 4, n_params=n),
               fitted_point(plan, "own-big", plan.tokens_per_step * 4, n_params=n),
               fitted_point(plan, "tenfold-small", plan.tokens_per_step // 4, 0.04, n_params=10 * n),
               fitted_point(plan, "tenfold-big", plan.tokens_per_step * 4, 0.04, n_params=10 * n)]
    fit = fit_step(history, plan, "AMD EPYC")
    w = math.exp(-OVERHEAD_SIZE * math.log(10) / OVERHEAD_TAU)
    assert fit.overhead_s == pytest.approx((2 * 0.02 + 2 * w * 0.06) / (2 + 2 * w), rel=1e-3)
    assert fit.overhead_s < 0.03  # the plain mean of the four would be 40 ms


def test_a_run_s_first_step_is_its_warm_up_kept_apart_from_the_step_and_forecast_once(tmp_path):
    """The first step of an attempt pays its one-off costs (first-touch allocations, the optimizer's
    state, first kernel calls): the report, the calibration point and the forecast keep it apart
    from the steady step, so a short calibration run does not spread it over every step of a long
    job; a resumed attempt's first step is a warm-up too."""
    from launcher.plan.forecast import with_forecast
    from launcher.report.history import point_of
    from launcher.rundir import read_plan, write_plan
    from tests.unit.test_report import build_report, start_record, train_record, write_lines

    run = make_run(tmp_path)  # steps of 10, 9, 11, 10 s
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    next(r for r in recs if r["kind"] == "train")["step_time_s"] = 30.0
    write_lines(run / "metrics.jsonl", recs)
    t = build_report(run)["throughput"]
    assert (t["step_time_sum_s"], t["steady_step_time_s"], t["warmup_s"]) == (60.0, pytest.approx(10.0),
                                                                             pytest.approx(20.0))
    pt = point_of(run)
    assert (pt.step_time_s, pt.warmup_s) == (pytest.approx(10.0), pytest.approx(20.0))

    plan = read_plan(run)
    f = with_forecast(plan, calibration=from_point(pt, "--calibrate", 0.0)).forecast
    # the step scaled from the steady 10 s (by the FLOPs per rank), the warm-up once in the hours
    cold = with_forecast(plan, calibration=from_point(pt.model_copy(update={"warmup_s": None}), "--calibrate",
                                                      0.0)).forecast
    assert f.step_time_s == cold.step_time_s and f.warmup_s == pytest.approx(20.0) and cold.warmup_s is None
    assert f.hours == pytest.approx((f.steps * f.step_time_s + 20.0) / 3600) and f.hours > cold.hours
    assert any(a.startswith("warm-up: 20 s once") for a in f.assumptions)
    write_plan(run, plan.model_copy(update={"forecast": f}))
    row = build_report(run)["forecast"]["rows"]["time_s"]
    assert (row["forecast"], row["actual"]) == (pytest.approx(4 * f.step_time_s + 20.0), 60.0)

    # a second attempt redoes steps 3 and 4: its first step (3, 11 s) is a warm-up as well
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    plan = read_plan(run)
    write_plan(resumed, plan)
    extra = [start_record(plan, time=T0 + 1100, resumed_from_step=2), train_record(2, T0 + 1111),
             train_record(3, T0 + 1121)]
    write_lines(resumed / "metrics.jsonl", recs[:-2] + [r.model_dump(mode="json") for r in extra])
    t = build_report(resumed)["throughput"]
    # steady: steps 2 (9 s) and 4 (10 s); warm-ups: step 1 (30 s) and the resumed step 3 (11 s)
    assert t["steady_step_time_s"] == pytest.approx(9.5) and t["warmup_s"] == pytest.approx((20.5 + 1.5) / 2)


def test_history_skips_lines_it_cannot_read_and_keeps_the_newest_of_a_run(tmp_path):
    h = tmp_path / "calibration.jsonl"
    h.write_text("\n".join([point(step_time_s=1.0).model_dump_json(), "{torn", json.dumps({"run_dir": "x"}),
                            point(step_time_s=2.0).model_dump_json(), point(run_dir="/runs/b").model_dump_json()]))
    got = {p.run_dir: p.step_time_s for p in read_points(h)}
    assert got == {"/runs/a": 2.0, "/runs/b": 0.5}


def test_plan_names_the_nearest_run_and_no_calibration_ignores_it(tmp_path, monkeypatch):
    """A finished run in the history calibrates the next plan of the same job (its JSON says which,
    how near and why); --no-calibration ignores it; --calibrate names one."""
    from launcher.report.history import append

    monkeypatch.setenv("LAUNCHER_CACHE", str(tmp_path / "cache"))
    run = make_run(tmp_path, name="earlier")
    assert append(run) is not None
    # the earlier run: 16 H100 (its start record's torch name), ZeRO-3, bf16; the plan: the demo on
    # two GPUs named as the job names them (one kind of device: H100-SXM), so near but not the same
    args = ["plan", "cluster.accelerator=H100-SXM", "train.max_steps=4", "--json"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    cal = json.loads(res.stdout)["forecast"]["calibration"]
    assert cal["run_dir"] == str(run.resolve()) and cal["source"] == "history" and cal["distance"] > 0
    res = CliRunner().invoke(cli, [*args, "--no-calibration"])
    assert json.loads(res.stdout)["forecast"]["calibration"] is None
    res = CliRunner().invoke(cli, [*args, "--calibrate", str(run)])
    assert json.loads(res.stdout)["forecast"]["calibration"]["source"] == "--calibrate"
    text = " ".join(CliRunner().invoke(cli, args[:-1]).stdout.split())  # the table folds long lines
    assert "scaled from" in text and "earlier: the nearest run of the calibration history, distance" in text


# --------------------------------------------------------------------------- when to start


def test_mean_intensity_and_best_start_by_hand():
    s = [(0.0, 100.0), (HOUR, 300.0), (2 * HOUR, 50.0)]
    assert mean_intensity(s, 0.5 * HOUR, 1.5 * HOUR) == pytest.approx(200.0)
    assert mean_intensity(s, 0, 4 * HOUR) is None  # past the series' last hour
    b = best_start(s, now=0.0, duration_s=HOUR, kwh=2.0, window_s=2 * HOUR, source="s")
    assert (b.at_epoch, b.kg_co2e, b.kg_co2e_now) == (2 * HOUR, pytest.approx(0.1), pytest.approx(0.2))


def test_plan_start_window_finds_the_clean_hours(tmp_path):
    csv, clean = clean_window_csv(tmp_path)
    res = CliRunner().invoke(cli, ["plan", "cluster.accelerator=H100-SXM", "train.max_steps=2000",
                                   f"report.intensity_forecast={csv}", "--start-window", "24h", "--json"])
    assert res.exit_code == 0, res.output
    f = json.loads(res.stdout)["forecast"]
    b = f["best_start"]
    assert b["at"] == iso(clean) and f["hours"] < 4
    assert b["kg_co2e"] == pytest.approx(f["kwh"] * 50 / 1000) and b["kg_co2e_now"] == pytest.approx(f["kwh"] * 400 / 1000)
    res = CliRunner().invoke(cli, ["plan", "cluster.accelerator=H100-SXM", "train.max_steps=2000",
                                   f"report.intensity_forecast={csv}", "--start-window", "3h", "--json"])
    b = json.loads(res.stdout)["forecast"]["best_start"]
    assert b["kg_co2e"] == pytest.approx(b["kg_co2e_now"])  # no cleaner hour within 3 h: start now


def test_carbon_aware_slurm_script_begins_in_the_clean_window(tmp_path):
    csv, clean = clean_window_csv(tmp_path)
    res = CliRunner().invoke(cli, ["slurm", "cluster.accelerator=H100-SXM", "train.max_steps=2000",
                                   f"report.intensity_forecast={csv}", "--carbon-aware", "--dry-run",
                                   "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(clean))
    assert f"#SBATCH --begin={local}\n" in res.output
    plain = CliRunner().invoke(cli, ["slurm", "cluster.accelerator=H100-SXM", "train.max_steps=2000",
                                     f"report.intensity_forecast={csv}", "--dry-run", "--run-dir", str(tmp_path / "r")])
    assert "--begin" not in plain.output


def test_report_co2_of_the_hours_run_by_hand(tmp_path):
    """Two nodes' tracker sessions over an hour boundary: each session's energy times the mean
    intensity of the hours it ran, beside CodeCarbon's flat figure."""
    from launcher.report import build_report

    hour = (T0 // HOUR) * HOUR
    csv = intensity_csv(tmp_path / "ci.csv", hour - HOUR, [999.0, 100.0, 300.0, 999.0])
    run = make_run(tmp_path, job=job_dict(intensity_forecast=str(csv)))
    sessions = {"node0-a": (hour + 1800, hour + 5400, 0.6), "node1-b": (hour + 3600, hour + 4500, 0.3)}
    for node, (start, end, kwh) in sessions.items():
        p = run / "emissions" / f"{node}.json"
        d = json.loads(p.read_text())
        d["sessions"] = [{"run_id": "a", "duration_s": end - start, "energy_kwh": {"cpu": 0, "gpu": kwh, "ram": 0,
                                                                                   "total": kwh},
                          "start_time": start, "end_time": end, "final": True}]
        p.write_text(json.dumps(d))
    h = build_report(run).energy.hourly
    # node 0: half an hour at 100 g/kWh, half an hour at 300; node 1: a quarter hour at 300
    by_hand = 0.6 * (100 * 1800 + 300 * 1800) / 3600 / 1000 + 0.3 * 300 / 1000
    assert h.available and h.kg_co2e == pytest.approx(by_hand)
    assert h.flat_kg_co2e == pytest.approx(0.25) and h.start == iso(hour + 1800) and h.end == iso(hour + 5400)
    from launcher.report.render import render_markdown

    assert "Emissions, hours run" in render_markdown(build_report(run))


# --------------------------------------------------------------------------- offsetting


def test_the_offset_price_adds_up_in_plan_report_and_model_card(tmp_path):
    from launcher.export import training_rows
    from launcher.report import build_report
    from launcher.rundir import read_plan

    res = CliRunner().invoke(cli, ["plan", "cluster.accelerator=H100-SXM", "train.max_steps=2000",
                                   "report.offset_price_per_tonne=80", "--json"])
    f = json.loads(res.stdout)["forecast"]
    assert f["offset_cost"] == pytest.approx(f["kg_co2e"] / 1000 * 80) and f["offset_price_per_tonne"] == 80
    run = make_run(tmp_path, job=job_dict(offset_price_per_tonne=80.0))
    rep = build_report(run)
    assert rep.offset_cost == pytest.approx(rep.energy.emissions_kg / 1000 * 80) == rep.cost.offset.cost
    assert rep.cost.total == pytest.approx(rep.cost.compute.cost + rep.cost.energy.cost)  # not in the total
    from launcher.report.format import fmt_money, fmt_num

    rows = dict(training_rows(read_plan(run), rep))
    assert rows["offset"] == (f"{fmt_money(rep.offset_cost, 'EUR')} to offset {fmt_num(rep.energy.emissions_kg / 1000)} "
                              f"tCO2e at {fmt_money(80.0, 'EUR')} per tonne")
    no_price = build_report(make_run(tmp_path, name="no-price"))
    assert no_price.offset_cost is None and "offset" not in dict(training_rows(read_plan(run), no_price))


# --------------------------------------------------------------------------- MFU on CPU


def test_cpu_mfu_is_against_the_probes_measured_rate(tmp_path):
    """A CPU run whose plan holds this machine's probe: MFU = tokens/s per device x FLOPs per token
    over the measured matrix rate, labelled as measured; without the probe, or with another CPU's,
    n/a as before."""
    from launcher.plan.types import CpuProbe
    from launcher.report import build_report
    from launcher.rundir import read_plan, write_plan

    probe = CpuProbe(cpu_model="AMD EPYC", logical_cpus=2, threads=1, dtype="bf16", matmul_gflops=200.0,
                     matmul_n=512, cpu_tdp_w=8.0, cpu_tdp_source="table", ram_w=20.0, torch_version="x",
                     measured_at=0.0, cache_file="/c/p.json")
    for name in ("same", "other"):
        run = make_run(tmp_path, name=name, device="cpu", job=job_dict(device="cpu"))
        ran_on = build_report(run).job.accelerator  # the CPU the start record names
        plan = read_plan(run)
        p = probe.model_copy(update={"cpu_model": ran_on if name == "same" else "another CPU"})
        write_plan(run, plan.model_copy(update={"forecast": plan.forecast.model_copy(update={"cpu": p})}))
        rep = build_report(run)
        m = rep.mfu
        if name == "same":
            assert m.value == pytest.approx(rep.throughput.tokens_per_s_per_device * m.flops_per_token / 200e9)
            assert m.peak_tflops == pytest.approx(0.2) and "measured" in m.accelerator_source
        else:
            assert m.value is None and m.reason == "peak of cpu unknown"
