"""Per-job report: FLOPs, accelerator peaks, report arithmetic, rendering and the CLI, on a
synthetic run directory written as the launcher writes one (a real plan from ``plan_job``,
complete typed records) but with made-up figures (no training, no CodeCarbon)."""
from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import cli
from launcher.errors import JobError
from launcher.plan import plan_job
from launcher.report import build_report as build_model
from launcher.report import read_or_build_report, what_changed, write_reports
from launcher.report.energy import read_node_energy, sum_energy
from launcher.facts.flops import flops_per_token_from_config, model_flops_per_token
from launcher.facts.hardware import ACCELERATORS, match_accelerator
from launcher.rundir import CheckpointRecord, EndRecord, EvalRecord, StartRecord, TrainRecord, write_plan
from launcher.rundir.report_file import Report
from launcher.spec import JobSpec


def build_report(run) -> dict:
    """The report as report.json holds it (what users and their scripts read)."""
    return build_model(run).to_json()


def typed(report: dict) -> Report:
    return Report.model_validate(report)

T0 = 1_700_000_000.0
H100 = "NVIDIA H100 80GB HBM3"
FPT = 6.2e9

# four optimizer steps on 2 nodes x 8 GPUs
TOKENS = [250_000, 260_000, 255_000, 245_000]
PADDING = [6_000, 2_000, 7_000, 17_000]
SAMPLES = [128, 128, 128, 128]
STEP_TIMES = [10.0, 9.0, 11.0, 10.0]
STEP_END = [60.0, 69.0, 80.0, 90.0]  # seconds after the start record
LOSSES = [2.0, 1.5, 1.2, 1.1]

NODE0 = {"cpu": 0.10, "gpu": 2.00, "ram": 0.05}
NODE1 = {"cpu": 0.12, "gpu": 2.20, "ram": 0.05}


def job_dict(device="cuda", **report):
    rep = {"gpu_hour_price": 2.0, "energy_price_per_kwh": 0.25, "currency": "EUR", "pue": 1.2,
           "country_iso_code": "FRA"}
    rep.update(report)
    return JobSpec.model_validate({
        "name": "demo",
        "model": {"path": "/models/tiny", "dtype": "bf16"},
        "data": {"max_seq_len": 2048, "packing": True},
        "train": {"method": "full", "micro_batch_size": 4, "grad_accum_steps": 2, "max_steps": 4},
        "parallel": {"strategy": "zero", "zero_stage": 3},
        "cluster": {"nodes": 2, "gpus_per_node": 8, "device": device},
        "report": rep,
    }).to_dict()


def write_lines(path: Path, records: list, torn: str | None = None) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if torn:
        text += torn
    path.write_text(text)


def node_file(run: Path, node: str, energy: dict, emissions: float, gpu_label="measured (NVML energy counter)"):
    e = dict(energy, total=sum(energy.values()))
    (run / "emissions").mkdir(exist_ok=True)
    (run / "emissions" / f"{node}.json").write_text(json.dumps({
        "schema_version": 1, "node": node, "energy_kwh": e, "it_energy_kwh": e["total"] / 1.2,
        "emissions_kg": emissions, "duration_s": 95.0, "pue": 1.2, "pue_values": [1.2], "pue_included": True,
        "country_iso_code": "FRA", "region": None, "final": True,
        "measured": {"cpu": "estimated (TDP x CPU load)", "gpu": gpu_label, "ram": "estimated (RAM power model)"},
    }))


def start_record(plan, time=T0, accelerator=H100, **kw) -> StartRecord:
    """What the trainer writes once the model is built (launcher.train.metrics.start_record)."""
    return StartRecord(
        time=time, world_size=plan.world_size, nodes=plan.nodes, device=plan.device,
        accelerator=accelerator if plan.device == "cuda" else "Intel(R) Xeon(R) Processor",
        strategy=plan.strategy, zero_stage=plan.zero_stage, method=plan.job.train.method, dtype=plan.dtype,
        seq_len=plan.seq_len, n_params=1_000_000_000, n_trainable_params=1_000_000_000, flops_per_token=FPT,
        planned_steps=4, train_rows=512, train_samples=512, train_tokens=1_010_000, packed=plan.job.data.packing,
        hostname="node0", **kw)


def train_record(i: int, time: float) -> TrainRecord:
    """Optimizer step ``i + 1`` of the made-up run."""
    return TrainRecord(
        time=time, step=i + 1, epoch=(i + 1) / 4, loss=LOSSES[i], lr=1e-4, grad_norm=1.0, samples=SAMPLES[i],
        tokens=TOKENS[i], padding_tokens=PADDING[i], label_tokens=TOKENS[i] - SAMPLES[i],
        step_time_s=STEP_TIMES[i], cum_samples=sum(SAMPLES[:i + 1]), cum_tokens=sum(TOKENS[:i + 1]))


def make_run(tmp_path: Path, name="run-a", device="cuda", accelerator=H100, completed=True, end=True,
             torn=None, energy=True, steps=4, job=None, records_extra=()) -> Path:
    run = tmp_path / name
    run.mkdir()
    plan = plan_job(JobSpec.model_validate(job or job_dict(device=device)), device=device, train_rows=512)
    write_plan(run, plan)
    recs: list = [start_record(plan, accelerator=accelerator)]
    for i in range(steps):
        recs.append(train_record(i, T0 + STEP_END[i]))
        if i + 1 in (2, 4):
            recs.append(EvalRecord(step=i + 1, eval_loss=1.4 if i + 1 == 2 else 1.0, eval_tokens=5000,
                                   time=T0 + STEP_END[i] + 2, accuracy=0.5 if i + 1 == 2 else 0.6))
    recs.extend(records_extra)
    if end:
        recs.append(CheckpointRecord(step=4, path="checkpoints/step-4", time=T0 + 95))
        recs.append(EndRecord(time=T0 + 100, steps=4, status="completed", final_path="final"))
    write_lines(run / "metrics.jsonl", [r.model_dump(mode="json") for r in recs], torn)
    if energy:
        node_file(run, "node0-a", NODE0, 0.12)
        node_file(run, "node1-b", NODE1, 0.13)
    if completed:
        (run / "COMPLETED").write_text("")
    return run


# --------------------------------------------------------------------------- flops


def test_flops_hand_calculation_full_lora_and_tied():
    cfg = {"num_hidden_layers": 2, "hidden_size": 64, "vocab_size": 1000, "tie_word_embeddings": False}
    # N = 200_000 - 1000*64 (input embedding, a gather) = 136_000; attention 12*2*64*128 = 196_608
    assert model_flops_per_token(136_000, 2, 64, 128) == 6 * 136_000 + 196_608 == 1_012_608
    assert flops_per_token_from_config(cfg, 128, 200_000) == 1_012_608
    # LoRA: 4 * frozen + 6 * trainable + attention, frozen = N - trainable
    assert flops_per_token_from_config(cfg, 128, 200_000, 4_000, "lora") == 4 * 132_000 + 6 * 4_000 + 196_608
    assert model_flops_per_token(136_000, 2, 64, 128, 4_000, "lora") == 748_608
    # tied embeddings: the table is the LM head's matmul, so it stays in N
    tied = dict(cfg, tie_word_embeddings=True)
    assert flops_per_token_from_config(tied, 128, 200_000) == 6 * 200_000 + 196_608
    with pytest.raises(ValueError):
        model_flops_per_token(100, 1, 8, 8, method="lora")


# --------------------------------------------------------------------------- accelerators


@pytest.mark.parametrize("name,key", [
    ("NVIDIA H100 80GB HBM3", "H100-SXM"), ("NVIDIA H100 PCIe", "H100-PCIE"), ("NVIDIA H100 NVL", "H100-NVL"),
    ("NVIDIA H200", "H200-SXM"), ("NVIDIA A100-SXM4-80GB", "A100-SXM-80GB"),
    ("NVIDIA A100-SXM4-40GB", "A100-SXM-40GB"), ("NVIDIA A100-PCIE-40GB", "A100-PCIE-40GB"),
    ("NVIDIA A10G", "A10G"), ("NVIDIA L40S", "L40S"), ("NVIDIA L4", "L4"), ("Tesla V100-SXM2-16GB", "V100-SXM2"),
    ("NVIDIA GeForce RTX 4090", "RTX-4090"), ("AMD Instinct MI300X", "MI300X"), ("NVIDIA B200", "B200"),
    ("H100-SXM", "H100-SXM"), ("h100", "H100-SXM"),
])
def test_match_accelerator(name, key):
    assert match_accelerator(name).key == key


@pytest.mark.parametrize("name", [None, "", "cpu", "Intel(R) Xeon(R) Processor", "NVIDIA GeForce GTX 1080"])
def test_unknown_accelerator_is_none(name):
    assert match_accelerator(name) is None


def test_peaks_are_dense():
    h = ACCELERATORS["H100-SXM"]
    assert h.peak_tflops("bf16") == pytest.approx(989.4) and h.tdp_w == 700
    assert ACCELERATORS["A100-SXM-80GB"].peak_tflops("bf16") == 312.0
    assert ACCELERATORS["V100-SXM2"].peak_tflops("bf16") is None


# --------------------------------------------------------------------------- report arithmetic


def test_report_counts_throughput_and_cost(tmp_path):
    r = build_report(make_run(tmp_path))
    assert r["schema_version"] == 1
    assert r["status"] == "completed" and r["complete"] is True
    j = r["job"]
    assert (j["strategy"], j["zero_stage"], j["method"], j["dtype"], j["nodes"], j["world_size"]) == \
        ("zero", 3, "full", "bf16", 2, 16)
    assert j["accelerator"] == H100 and j["accelerator_key"] == "H100-SXM"
    t = r["throughput"]
    assert t["steps"] == 4 and t["last_step"] == 4
    assert t["tokens"] == sum(TOKENS) == 1_010_000
    assert t["samples"] == 512
    assert t["padding_tokens"] == 32_000
    assert t["padding_share"] == pytest.approx(32_000 / 1_042_000)
    assert t["step_time_sum_s"] == 40.0
    assert t["tokens_per_s"] == pytest.approx(1_010_000 / 40.0)
    assert t["tokens_per_s_per_device"] == pytest.approx(1_010_000 / 40.0 / 16)
    assert t["samples_per_s"] == pytest.approx(512 / 40.0)
    assert t["step_time_median_s"] == 10.0
    assert t["step_time_p90_s"] == pytest.approx(10.7)
    assert t["time_to_first_step_s"] == 60.0
    assert t["wall_time_s"] == 100.0
    assert t["tokens_per_s_wall"] == pytest.approx(10_100.0)
    assert t["device_hours_label"] == "GPU-hours"
    assert t["device_hours"] == pytest.approx(16 * 100 / 3600)
    c = r["cost"]
    assert c["currency"] == "EUR" and c["available"]
    assert c["compute"]["cost"] == pytest.approx(16 * 100 / 3600 * 2.0)
    kwh = sum(NODE0.values()) + sum(NODE1.values())
    assert c["energy"]["cost"] == pytest.approx(kwh * 0.25)
    assert c["total"] == pytest.approx(16 * 100 / 3600 * 2.0 + kwh * 0.25)
    assert c["per_million_tokens"] == pytest.approx(c["total"] / 1.01)
    lo = r["loss"]
    assert (lo["first_train_loss"], lo["last_train_loss"], lo["min_train_loss"]) == (2.0, 1.1, 1.1)
    assert [e["eval_loss"] for e in lo["eval"]] == [1.4, 1.0] and lo["last_accuracy"] == 0.6
    assert r["checkpoints"] == {"count": 1, "last_step": 4}


def test_node_hour_price_when_no_gpu_price(tmp_path):
    job = job_dict(gpu_hour_price=None, node_hour_price=30.0, energy_price_per_kwh=None)
    r = build_report(make_run(tmp_path, job=job))
    assert r["cost"]["compute"]["basis"] == "node-hours"
    assert r["cost"]["total"] == pytest.approx(2 * 100 / 3600 * 30.0)
    assert r["cost"]["energy"] is None


def test_no_prices_means_no_cost(tmp_path):
    job = job_dict(gpu_hour_price=None, energy_price_per_kwh=None)
    r = build_report(make_run(tmp_path, job=job))
    assert r["cost"]["available"] is False and "no prices" in r["cost"]["reason"]


def test_job_energy_is_the_sum_of_node_files(tmp_path):
    run = make_run(tmp_path)
    nodes = read_node_energy(run)
    assert [n.node for n in nodes] == ["node0-a", "node1-b"]
    e = build_report(run)["energy"]
    for comp in ("cpu", "gpu", "ram"):
        assert e["energy_kwh"][comp] == pytest.approx(NODE0[comp] + NODE1[comp])
    total = sum(NODE0.values()) + sum(NODE1.values())
    assert e["energy_kwh"]["total"] == pytest.approx(total)
    assert e["emissions_kg"] == pytest.approx(0.25)
    assert e["nodes"] == 2 and e["partial"] is False
    assert e["pue"] == 1.2 and e["pue_included"] is True  # never multiplied again
    assert e["energy_kwh"]["total"] == pytest.approx(sum_energy(nodes)["energy_kwh"].total)
    assert e["measured"]["gpu"] == "measured (NVML energy counter)"
    assert e["measured"]["cpu"].startswith("estimated")
    assert e["total_label"] == "partly measured (gpu), partly estimated (cpu, ram)"
    assert e["energy_per_token_j"] == pytest.approx(total * 3.6e6 / 1_010_000)
    assert e["gco2e_per_million_tokens"] == pytest.approx(0.25 * 1000 / 1.01)


def test_one_node_missing_marks_energy_partial(tmp_path):
    run = make_run(tmp_path)
    (run / "emissions" / "node1-b.json").unlink()
    r = build_report(run)
    assert r["energy"]["nodes"] == 1 and r["energy"]["partial"] is True
    assert any("1 of 2 nodes" in n for n in r["notes"])


def test_mfu_recomputes_from_tokens_flops_and_h100_peak(tmp_path):
    r = build_report(make_run(tmp_path))
    m = r["mfu"]
    per_device = 1_010_000 / 40.0 / 16
    assert m["peak_tflops"] == pytest.approx(989.4)
    assert m["flops_per_token"] == FPT
    assert m["value"] == pytest.approx(per_device * FPT / 989.4e12)
    assert m["mfu_wall"] == pytest.approx(10_100.0 / 16 * FPT / 989.4e12)
    assert m["reason"] is None
    # the job's explicit accelerator wins over the detected name
    job = job_dict()
    job["cluster"]["accelerator"] = "A100-SXM-80GB"
    r2 = build_report(make_run(tmp_path, name="run-b", job=job))
    assert r2["mfu"]["value"] == pytest.approx(per_device * FPT / 312e12)


def test_cpu_run_says_mfu_na(tmp_path):
    r = build_report(make_run(tmp_path, device="cpu", job=job_dict(device="cpu")))
    assert r["mfu"]["value"] is None
    assert r["mfu"]["reason"] == "peak of cpu unknown"
    assert r["throughput"]["device_hours_label"] == "device-hours"
    from launcher.report.render import render_markdown, render_table

    md = render_markdown(typed(r))
    assert "MFU: n/a (peak of cpu unknown)" in md
    assert "n/a (peak of cpu unknown)" in render_table(typed(r))


def test_unknown_gpu_says_mfu_na(tmp_path):
    r = build_report(make_run(tmp_path, accelerator="NVIDIA Mystery 9000"))
    assert r["mfu"]["value"] is None and r["mfu"]["reason"] == "peak of NVIDIA Mystery 9000 unknown"


def test_incomplete_run_still_reports(tmp_path):
    run = make_run(tmp_path, completed=False, end=False, steps=3, energy=False,
                   torn='{"kind": "train", "step": 4, "loss": 1.')
    r = build_report(run)
    assert r["status"] == "incomplete (running or crashed)" and r["complete"] is False
    assert r["throughput"]["steps"] == 3
    assert r["throughput"]["tokens"] == sum(TOKENS[:3])
    assert r["throughput"]["wall_time_s"] == STEP_END[2]  # start -> last complete record
    assert r["energy"]["available"] is False
    from launcher.report.render import render_markdown

    assert "incomplete (running or crashed)" in render_markdown(typed(r))


def test_resumed_run_counts_redone_steps_once_and_bills_attempts(tmp_path):
    # attempt 2 starts 1000 s after attempt 1's last record and redoes steps 3 and 4
    plan = plan_job(JobSpec.model_validate(job_dict()), device="cuda", train_rows=512)
    extra = [start_record(plan, time=T0 + 1100, resumed_from_step=2)]
    extra += [train_record(i, T0 + 1100 + 10 * i) for i in (2, 3)]
    r = build_report(make_run(tmp_path, end=False, records_extra=extra))
    t = r["throughput"]
    assert t["steps"] == 4 and t["redone_steps"] == 2 and t["attempts"] == 2
    assert t["tokens"] == sum(TOKENS)
    busy = (STEP_END[3] + 2) + 30  # attempt 1: start -> last eval; attempt 2: start -> last step
    assert t["busy_time_s"] == pytest.approx(busy)
    assert t["device_hours"] == pytest.approx(16 * busy / 3600)
    assert t["wall_time_s"] == pytest.approx(1130)


def test_setup_time_in_start_record_counts(tmp_path):
    run = make_run(tmp_path)
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    recs[0]["setup_s"] = 20.0  # model loading before the start record was written
    write_lines(run / "metrics.jsonl", recs)
    t = build_report(run)["throughput"]
    assert t["time_to_first_step_s"] == 80.0 and t["wall_time_s"] == 120.0
    assert t["device_hours"] == pytest.approx(16 * 120 / 3600)


def test_report_without_metrics(tmp_path):
    run = make_run(tmp_path, completed=False, end=False, steps=0, energy=False)
    (run / "metrics.jsonl").unlink()
    r = build_report(run)
    assert r["status"].startswith("incomplete") and r["throughput"]["tokens"] == 0
    assert r["mfu"]["value"] is None


def test_unreadable_lines_get_a_note_but_a_torn_last_line_does_not(tmp_path):
    torn = make_run(tmp_path, name="torn", torn='{"kind": "end", "ste')
    assert not [n for n in build_report(torn)["notes"] if "unreadable" in n]
    run = make_run(tmp_path, torn='{"kind": "end", "ste')
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1:1] = ['{"kind": "train", "step": 9}\n', "not json\n"]  # a record of another version, garbage
    (run / "metrics.jsonl").write_text("".join(lines))
    r = build_report(run)
    assert r["throughput"]["tokens"] == sum(TOKENS)
    assert [n for n in r["notes"] if "unreadable" in n] == [
        "metrics.jsonl: 2 line(s) unreadable (not JSON, or not a record this launcher version knows) were "
        "left out of every figure"]


def test_what_changed_and_read_or_build_report(tmp_path):
    run = make_run(tmp_path)
    r = read_or_build_report(run)  # no report.json yet: built, nothing written
    assert not (run / "report.json").exists() and r.throughput.tokens == sum(TOKENS)
    assert what_changed(r) == "what changed: eval loss 1.4000 (step 2) -> 1.0000 (step 4), task accuracy 50.0% -> 60.0%"
    written = write_reports(run, html=False)
    assert read_or_build_report(run).generated_at == written.generated_at
    one = r.to_json()
    one["loss"]["eval"] = [{"step": 0, "eval_loss": 2.0, "accuracy": None}]
    assert what_changed(typed(one)) is None
    one["loss"]["eval"].append({"step": 4, "eval_loss": 1.5, "accuracy": 0.25})
    assert what_changed(typed(one)) == "what changed: eval loss 2.0000 (step 0) -> 1.5000 (step 4)"


# --------------------------------------------------------------------------- rendering


def _pngs(html: str) -> list[bytes]:
    out = []
    for chunk in html.split('src="data:image/png;base64,')[1:]:
        out.append(base64.b64decode(chunk.split('"', 1)[0]))
    return out


def test_write_reports_and_html_inlines_pngs(tmp_path):
    run = make_run(tmp_path)
    rep = write_reports(run)
    assert json.loads((run / "report.json").read_text())["throughput"]["tokens"] == rep.throughput.tokens
    md = (run / "report.md").read_text()
    assert "DeepSpeed ZeRO-3" in md and "measured (NVML energy counter)" in md
    html = (run / "report.html").read_text()
    pngs = _pngs(html)
    assert len(pngs) >= 3 and all(p.startswith(b"\x89PNG") for p in pngs)
    assert "http://" not in html.replace("http://www.w3.org", "") and "<script" not in html


def test_power_plot_from_csv_rows(tmp_path):
    from launcher.report.render import render_html
    from launcher.report.series import power_series, read_series

    run = make_run(tmp_path)
    hdr = "timestamp,run_id,duration,energy_consumed,cpu_energy,gpu_energy,ram_energy,pue\n"
    rows = "".join(f"t,r1,{10 * k},{0.001 * k},0,{0.001 * k},0,1.2\n" for k in (1, 2, 3))
    (run / "emissions" / "node0-a.csv").write_text(hdr + rows)
    xs, ys = power_series(run)["node0-a"]
    assert ys == pytest.approx([360.0, 360.0, 360.0])  # 0.001 kWh per 10 s = 360 W
    assert "Power over time" in render_html(build_model(run), read_series(run))


def test_csv_has_raw_numbers(tmp_path):
    from launcher.report.render import render_csv

    rows = list(csv.DictReader(io.StringIO(render_csv(build_model(make_run(tmp_path))))))
    assert len(rows) == 1 and rows[0]["tokens"] == "1010000" and rows[0]["currency"] == "EUR"


# --------------------------------------------------------------------------- CLI


def test_cli_not_a_run_dir_is_a_job_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(JobError) as ei:
        cli.main(["report", str(tmp_path)], standalone_mode=False)
    assert str(ei.value) == (f"{tmp_path}: not a run directory (no plan.json); "
                             "pass a folder made by launcher run or launcher slurm")
    from launcher.cli import main

    monkeypatch.setattr(sys, "argv", ["launcher", "report", str(tmp_path / "nope")])
    with pytest.raises(SystemExit) as ex:
        main()
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {tmp_path / 'nope'}: not a run directory (no plan.json); " \
                          "pass a folder made by launcher run or launcher slurm"


def test_cli_single_run_writes_files_and_output(tmp_path):
    run = make_run(tmp_path)
    out = tmp_path / "out.json"
    res = CliRunner().invoke(cli, ["report", str(run), "--format", "json", "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["throughput"]["tokens"] == 1_010_000
    assert all((run / f).is_file() for f in ("report.json", "report.md", "report.html"))
    res = CliRunner().invoke(cli, ["report", str(run), "--no-write"])
    assert res.exit_code == 0 and "Tokens/s per device" in res.output and "1,578" in res.output


def test_cli_compares_two_runs(tmp_path):
    a = make_run(tmp_path, name="run-a")
    job = job_dict()
    job["parallel"] = {**job["parallel"], "strategy": "fsdp"}
    b = make_run(tmp_path, name="run-b", job=job, device="cuda")
    res = CliRunner().invoke(cli, ["report", str(a), str(b), "--format", "md"])
    assert res.exit_code == 0, res.output
    assert "Comparison of 2 runs" in res.output
    assert "| run-a |" in res.output and "| run-b |" in res.output
    res = CliRunner().invoke(cli, ["report", str(a), str(b), "--format", "csv"])
    assert [r["run_dir"].endswith(n) for r, n in zip(csv.DictReader(io.StringIO(res.output)), ("run-a", "run-b"))] \
        == [True, True]
    out = tmp_path / "cmp.html"
    res = CliRunner().invoke(cli, ["report", str(a), str(b), "--format", "html", "-o", str(out)])
    assert res.exit_code == 0, res.output
    html = out.read_text()
    assert "run-a" in html and "run-b" in html and len(_pngs(html)) >= 2
    res = CliRunner().invoke(cli, ["report", str(a), str(b)])
    assert "run-a" in res.output and "run-b" in res.output and "FSDP2" in res.output
    assert not (a / "report.json").exists()  # comparisons write no report files


def test_report_help_imports_nothing_heavy():
    code = ("import sys\nfrom launcher.cli import cli\n"
            "try:\n    cli.main(['report', '--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('torch', 'matplotlib', 'codecarbon', 'rich', 'jinja2') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout and "RUN_DIR" in out.stdout


def test_the_memory_sampler_reads_the_same_rss_anon_as_proc_status():
    """The sampler reads /proc/self/statm (resident less shared pages), not the long status file:
    the same kernel counter, so a peak it samples is the RssAnon the report names."""
    import os

    from launcher.train.memory import MemoryMonitor, read_rss_anon, read_status

    block = bytearray(64 * 2**20)  # 64 MiB touched: anonymous memory
    for i in range(0, len(block), 4096):
        block[i] = 1
    fd = os.open("/proc/self/statm", os.O_RDONLY)
    try:
        a, b, c = read_rss_anon(), read_status()["RssAnon"], read_rss_anon(fd)
    finally:
        os.close(fd)
    assert abs(a - b) < 2**20 and abs(c - b) < 2**20, (a, b, c)
    monitor = MemoryMonitor()
    monitor.stop()
    assert monitor.sample() >= 64 * 2**20 and monitor.peak >= monitor.baseline
    del block
