"""Hub ids, resolved once before any rank starts, from a Hugging Face cache in the Hub's own layout
built here (models--org--name/{blobs,refs/main,snapshots/<commit>/...}, datasets--org--name
likewise), with HF_HUB_OFFLINE=1: nothing is downloaded.

* `launcher plan` reads a cached hub config (and the one of a revision);
* a missing id, offline, is one line (exit 2) naming the id, the cache and the command that fetches it;
* `launcher fetch` finds both ids in the cache; job.sbatch fetches on the first node before srun;
* a data set's configuration and split;
* (slow) a short LoRA `launcher run` trains from the hub model and the hub data set, offline, and
  `launcher export --merge` names both ids in the card.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import HUB_COMMIT, demo_hub_cache, folder_files, put_repo

MODEL_ID, DATA_ID = "tiny-org/tiny-llama", "tiny-org/arithmetic"
COMMIT, OLD_COMMIT = HUB_COMMIT, "b" * 40


@pytest.fixture(scope="module")
def hub_env(tmp_path_factory) -> dict[str, str]:
    """An offline environment whose Hugging Face cache holds the demo's tiny model and tokenizer as
    MODEL_ID (main, and an older revision with 3 layers), and 600 arithmetic rows as DATA_ID
    (parquet, train and test splits)."""
    from launcher.demo import ensure_demo_assets

    env = demo_hub_cache(tmp_path_factory.mktemp("hub"), MODEL_ID, DATA_ID)
    assets = ensure_demo_assets()
    old = {**folder_files(assets.model_dir), **folder_files(assets.tokenizer_dir)}
    cfg = json.loads(old["config.json"])
    old["config.json"] = json.dumps({**cfg, "num_hidden_layers": 3}).encode()
    put_repo(Path(env["HF_HUB_CACHE"]), MODEL_ID, "model", old, commit=OLD_COMMIT, ref="v0")
    return env


def launcher(env, *args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


HUB_JOB = [f"model.path={MODEL_ID}", f"data.path=hf://datasets/{DATA_ID}", "model.dtype=fp32"]


@pytest.mark.slow  # two plans, each building its model on the meta device in a fresh interpreter (~5 s each)
def test_plan_reads_the_cached_config_of_a_hub_id_and_of_a_revision(hub_env, tmp_path):
    res = launcher(hub_env, "plan", *HUB_JOB, "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    model = json.loads(res.stdout)["model"]
    assert model["n_layers"] == 2 and model["n_params"] > 0, model
    res = launcher(hub_env, "plan", *HUB_JOB, "model.revision=v0", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["model"]["n_layers"] == 3


@pytest.mark.parametrize("override, field, repo, download", [
    ("model.path=tiny-org/missing", "model.path", "tiny-org/missing", "hf download tiny-org/missing"),
    ("data.path=hf://datasets/tiny-org/missing", "data.path", "tiny-org/missing",
     "hf download --repo-type dataset tiny-org/missing"),
    ("model.revision=v9", "model.path", f"{MODEL_ID}@v9", f"hf download {MODEL_ID} --revision v9"),
])
def test_a_missing_id_offline_is_one_line(hub_env, tmp_path, override, field, repo, download):
    res = launcher(hub_env, "run", *HUB_JOB, override, "cluster.device=cpu", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {field}: {repo} is not in the local Hugging Face cache "
                               f"({hub_env['HF_HUB_CACHE']}) and HF_HUB_OFFLINE=1"), lines[0]
    assert lines[0].endswith(f"run once with network access, or fetch it first: {download}"), lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_fetch_finds_both_ids_and_the_batch_script_fetches_before_srun(hub_env, tmp_path):
    res = launcher(hub_env, "fetch", *HUB_JOB, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    cache = Path(hub_env["HF_HUB_CACHE"])
    assert res.stdout.splitlines() == [
        f"model.path: {cache}/models--tiny-org--tiny-llama/snapshots/{COMMIT}",
        f"data.path: {cache}/datasets--tiny-org--arithmetic/snapshots/{COMMIT}",
    ]
    res = launcher(hub_env, "slurm", *HUB_JOB, "--dry-run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    script = res.stdout
    fetch = next(i for i, line in enumerate(script.splitlines()) if " -m launcher fetch " in line)
    srun = next(i for i, line in enumerate(script.splitlines()) if line.startswith("srun "))
    assert fetch < srun and script.splitlines()[fetch].startswith("HF_HUB_OFFLINE=0 ")
    assert "export HF_HUB_OFFLINE=1" in script
    run_dir = tmp_path / "slurm-run"  # what that line runs on the first node: fetch RUN_DIR
    assert launcher(hub_env, "slurm", *HUB_JOB, "--run-dir", str(run_dir), cwd=tmp_path).returncode == 0
    res = launcher(hub_env, "fetch", str(run_dir), cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.splitlines()[0].endswith(f"snapshots/{COMMIT}"), res.stderr


@pytest.mark.slow
def test_lora_run_from_hub_ids_offline(hub_env, tmp_path):
    """A short LoRA run (1 CPU rank, ZeRO-0) whose model, tokenizer and data come from the cache."""
    run_dir = tmp_path / "run"
    res = launcher(hub_env, "run", *HUB_JOB, "--run-dir", str(run_dir), "train.method=lora", "data.split=train",
                   "cluster.device=cpu", "cluster.cpu_procs_per_node=1", "parallel.zero_stage=0",
                   "train.max_steps=3", "train.global_batch_size=8", "train.micro_batch_size=8",
                   "train.eval_accuracy_samples=0", "data.eval_fraction=0.05", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (run_dir / "COMPLETED").exists()
    assert "HF_HUB_OFFLINE=1" in (run_dir / "launch.sh").read_text()
    start = next(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["kind"] == "start")
    assert start["train_rows"] > 0
    adapter = json.loads((run_dir / "final" / "adapter_config.json").read_text())
    snapshot = Path(hub_env["HF_HUB_CACHE"]) / "models--tiny-org--tiny-llama" / "snapshots" / COMMIT
    assert adapter["base_model_name_or_path"] == str(snapshot)

    res = launcher(hub_env, "export", str(run_dir), "--merge", cwd=tmp_path)  # offline too: the base is cached
    assert res.returncode == 0, res.stderr[-3000:]
    card = (run_dir / "export" / "merged" / "README.md").read_text()
    assert f"base_model: {MODEL_ID}" in card and f"- {DATA_ID}" in card


def test_a_hub_data_set_split_and_config(tmp_path):
    """data.config picks one of the configurations the card declares, data.split one of its splits;
    a wrong name of either is one line listing the right ones."""
    from launcher.errors import JobError
    from launcher.hub import dataset_ref, load_split

    rows = [{"prompt": f"{i}+1=", "response": str(i + 1)} for i in range(10)]
    card = ("---\nconfigs:\n- config_name: small\n  data_files:\n  - {split: train, path: small/train.jsonl}\n"
            "- config_name: large\n  data_files:\n  - {split: train, path: large/train-*.jsonl}\n"
            "  - {split: validation, path: large/validation.jsonl}\n---\n")
    lines = lambda rs: "".join(json.dumps(r) + "\n" for r in rs).encode()  # noqa: E731
    snap = put_repo(tmp_path / "hub", DATA_ID, "dataset", {
        "README.md": card.encode(), "small/train.jsonl": lines(rows[:3]), "large/train-0.jsonl": lines(rows[:5]),
        "large/train-1.jsonl": lines(rows[5:8]), "large/validation.jsonl": lines(rows[8:])})
    ref = dataset_ref(f"hf://datasets/{DATA_ID}@main")
    assert (ref.repo_id, ref.revision) == (DATA_ID, "main")
    assert len(load_split(ref, str(snap), "small", "train")) == 3
    assert len(load_split(ref, str(snap), "large", "train")) == 8
    assert load_split(ref, str(snap), "large", "validation")[0] == rows[8]
    with pytest.raises(JobError, match=r"^data\.split: 'test' is not a split of .*; its splits: train, validation$"):
        load_split(ref, str(snap), "large", "test")
    with pytest.raises(JobError, match=r"^data\.config: 'huge' is not a configuration of .*; its configurations: "
                                       r"small, large$"):
        load_split(ref, str(snap), "huge", "train")
    with pytest.raises(JobError, match=r"^data\.path: .* is not a hub data set id"):
        dataset_ref("hf://datasets/just-a-name")
