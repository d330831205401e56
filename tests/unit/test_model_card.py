"""The export's pure parts: shard sizes, the card's metadata (hub ids only, emissions in grams)
and that huggingface_hub's ModelCard parses the card. Real exports: tests/integration/test_export.py."""
from __future__ import annotations

import pytest

from launcher.errors import JobError
from launcher.export import co2_metadata, hub_ids, render_card, shard_bytes
from launcher.rundir.report_file import Report

REPORT = Report.model_validate({
    "run_dir": "/runs/demo-1", "generated_at": "2026-12-06T00:00:00+00:00", "status": "completed", "complete": True,
    "job": {"name": "demo", "model": "org/base", "method": "lora", "dtype": "bf16", "procs_per_node": 8, "seq_len": 2048,
            "packing": True, "micro_batch_size": 2, "grad_accum_steps": 1, "global_batch_size": 32,
            "accelerator": "NVIDIA H100 80GB HBM3", "device": "cuda", "world_size": 16, "nodes": 2,
            "strategy": "zero", "zero_stage": 3, "planned_steps": 100},
    "status_detail": {"complete": True, "completed_marker": True, "end_record": True},
    "throughput": {"steps": 100, "tokens": 26_214_400, "tokens_per_s": 700_000.0, "tokens_per_s_per_device": 43_750.0,
                   "wall_time_s": 37.4},
    "mfu": {}, "forecast": {}, "checkpoints": {}, "restarts": {}, "stragglers": {}, "allocation": {},
    "loss": {"last_train_loss": 1.2345, "last_eval_loss": 1.3456},
    "energy": {"available": True, "emissions_kg": 0.0123, "energy_kwh": {"total": 0.0333}, "total_label": "measured",
               "pue": 1.2, "country_iso_code": "FRA", "region": None},
    "cost": {"available": True, "total": 12.5, "currency": "EUR"},
})


def plan_of(*overrides):
    from launcher.prepare import plan_without_data
    from launcher.spec import load_job

    spec = load_job(None, ["cluster.device=cpu", *overrides])
    return plan_without_data(spec, "cpu", cpu_count=2)[1]


def test_shard_sizes():
    assert shard_bytes("5GB") == 5 * 10 ** 9 and shard_bytes("2GiB") == 2 * 2 ** 30 and shard_bytes("500kb") == 500_000
    for bad in ("abc", "5", "0GB", "5 PB"):
        with pytest.raises(JobError, match="--max-shard-size"):
            shard_bytes(bad)


def test_card_metadata_names_hub_ids_only_and_emissions_in_grams():
    from huggingface_hub import ModelCard

    local = plan_of("train.method=lora")
    assert hub_ids(local, None) == (None, [])
    assert hub_ids(local, "org/base") == ("org/base", [])
    hub = local.model_copy(update={"job": local.job.model_copy(update={
        "model": local.job.model.model_copy(update={"path": "org/base"}),
        "data": local.job.data.model_copy(update={"path": "hf://datasets/org/data@v1"})})})
    assert hub_ids(hub, None) == ("org/base", ["org/data"])

    co2 = co2_metadata(REPORT)
    assert co2 == {"emissions": pytest.approx(12.3), "source": "CodeCarbon (measured)", "training_type": "fine-tuning",
                   "geographical_location": "FRA", "hardware_used": "16 x NVIDIA H100 80GB HBM3 on 2 nodes"}
    assert co2_metadata(REPORT.model_copy(update={"energy": REPORT.energy.model_copy(update={"available": False})})) is None

    card = ModelCard(render_card(hub, REPORT, kind="adapter", dtype=None, base_model="org/base", datasets=["org/data"]))
    assert card.data.base_model == "org/base" and card.data.datasets == ["org/data"]
    assert card.data.library_name == "peft" and card.data.co2_eq_emissions["emissions"] == pytest.approx(12.3)
    for fact in ("| steps | 100 of 100 |", "| tokens | 26,214,400 |", "| final train loss | 1.234 |",
                 "| final eval loss | 1.346 |", "700,000 tokens/s", "0.0333 kWh (measured, PUE 1.2)", "12.50 EUR",
                 "AutoPeftModelForCausalLM"):
        assert fact in card.text, fact
    merged = ModelCard(render_card(hub, REPORT, kind="merged", dtype="bf16", base_model=None, datasets=[]))
    assert merged.data.library_name == "transformers" and merged.data.base_model is None
