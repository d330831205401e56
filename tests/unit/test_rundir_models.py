"""Every file of a run directory has a model: writers build it, readers validate it, and a damaged
file, or one of another schema version, is one line naming the file."""
from __future__ import annotations

import json

import pytest

from launcher.errors import JobError
from launcher.rundir import RunDir
from launcher.rundir.artifacts import (DamagedFile, DataStats, FileHash, HangRecord, Lock, Manifest, Preflight,
                                       RunningTotals, SlurmAccounting, SlurmAttempt, TrackerIds, TrackerRun,
                                       TrainerState, read_model)
from launcher.rundir.energy_file import NodeEnergy, read_node_energy, session_from_row, EmissionsRow, node_summary
from launcher.rundir.report_file import Report

EXAMPLES = [
    Manifest(step=3, world_size=2, time=1.0, files={"engine/a.pt": FileHash(bytes=10, sha256="ab" * 32)}),
    TrainerState(step=3, time=1.0, totals=RunningTotals(cum_samples=12, cum_tokens=340)),
    SlurmAccounting(job_id="42", queried_at=2.0, attempts=[SlurmAttempt(state="COMPLETED", elapsed_s=60, gpus=8)]),
    TrackerIds(mlflow=TrackerRun(run_id="abc", tracking_uri="sqlite:///x.db"), tensorboard=TrackerRun(log_dir="tb")),
    Preflight(ok=False, error="preflight: rank 1 did not arrive", time=3.0, rank=1, hostname="n2"),
    Lock(host="n1", pid=123, time=4.0),
    HangRecord(rank=0, host="n1", step=5, elapsed_s=16.0, timeout_s=15.0, behind=[1], not_responding=[1]),
    DataStats(documents=10, train_documents=9, eval_documents=1, train_rows=3, eval_rows=1, train_tokens=300,
              train_label_tokens=200, eval_tokens=30, truncated=0, dropped=0, packed=True, max_seq_len=128),
]


@pytest.mark.parametrize("model", EXAMPLES, ids=lambda m: type(m).__name__)
def test_each_file_reads_back_what_was_written(tmp_path, model):
    path = model.write(tmp_path / "f.json")
    assert read_model(type(model), path) == model


@pytest.mark.parametrize("model", EXAMPLES, ids=lambda m: type(m).__name__)
def test_a_damaged_file_is_one_line_naming_it(tmp_path, model):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(model.model_dump(mode="json"))[:-7])  # torn mid-write
    with pytest.raises(DamagedFile) as e:
        read_model(type(model), path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    path.write_text(json.dumps({**model.model_dump(mode="json"), "surprise": 1}))  # not this model
    with pytest.raises(DamagedFile, match="surprise"):
        read_model(type(model), path)
    assert read_model(type(model), tmp_path / "missing.json", missing_ok=True) is None


def test_another_schema_version_is_named(tmp_path):
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps({"schema_version": 9, "step": 1, "time": 0.0}))
    with pytest.raises(DamagedFile) as e:
        read_model(TrainerState, path)
    assert str(e.value) == f"{path}: schema version 9, this launcher reads 2"
    # a checkpoint from before the running totals (no schema_version) still resumes
    path.write_text(json.dumps({"step": 4, "time": 0.0}))
    old = read_model(TrainerState, path)
    assert old.step == 4 and old.totals is None


def test_a_report_of_another_schema_version_or_damaged_is_one_line(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"schema_version": 0, "job": {}}))
    with pytest.raises(JobError) as e:
        Report.read(path)
    assert str(e.value) == f"{path}: schema version 0, this launcher reads 1; rebuild it with launcher report {tmp_path}"
    path.write_text("{")
    with pytest.raises(JobError) as e:
        Report.read(path)
    assert str(e.value).startswith(f"{path}: not valid JSON (") and "\n" not in str(e.value)
    assert str(e.value).endswith(f"; rebuild it with launcher report {tmp_path}")


def test_node_energy_from_the_csv_rows_and_back(tmp_path):
    row = EmissionsRow.model_validate({"run_id": "r1", "duration": "10", "cpu_energy": "0.1", "gpu_energy": "nan",
                                       "ram_energy": "", "energy_consumed": "0.1", "pue": "1.2", "country_iso_code": "",
                                       "unknown_column": "x"})
    assert (row.gpu_energy, row.ram_energy, row.country_iso_code) == (0.0, 0.0, None)
    node = node_summary("node0-a", [session_from_row(row)], hostname="a")
    RunDir(tmp_path).emissions.mkdir()
    node_file = RunDir(tmp_path).node_energy_json("node0-a")
    node_file.write_text(json.dumps(node.model_dump(mode="json")))
    (back,) = read_node_energy(RunDir(tmp_path).emissions)
    assert back == node and isinstance(back, NodeEnergy) and back.energy_kwh.total == pytest.approx(0.1)
