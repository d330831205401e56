"""`launcher export` of real runs (the embedded tiny model, 1 CPU rank, ZeRO-0, a few steps):

* --merge: sharded safetensors whose logits equal base + adapter (peft) within 1e-4, and a model
  card that ModelCard parses, whose co2_eq_emissions.emissions is the report's kgCO2e x 1000;
* the adapter alone: what peft loads onto the base, naming --base-model;
* a full fine-tune with --dtype bf16: the final model, cast;
* the output: never half-written, never over a folder that holds something.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RUN = ["cluster.device=cpu", "cluster.cpu_procs_per_node=1", "parallel.zero_stage=0", "train.max_steps=3",
       "data.num_samples=200", "train.global_batch_size=8", "train.micro_batch_size=8",
       "train.eval_accuracy_samples=0", "train.eval_every_steps=2"]


def launcher(*args: str, cwd: Path | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, timeout=600,
                         cwd=cwd)
    if ok:
        assert out.returncode == 0, f"launcher {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("export") / "lora"
    launcher("run", "--run-dir", str(run), *RUN, "train.method=lora", "train.lr=0.05", cwd=run.parent)
    assert (run / "COMPLETED").exists()
    return run


def batch():
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(4, 90, (2, 24), generator=g)


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def base_with_adapter(run: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from launcher.demo import ensure_demo_assets

    base = AutoModelForCausalLM.from_pretrained(str(ensure_demo_assets().model_dir), dtype="float32")
    return PeftModel.from_pretrained(base, str(adapter)).eval()


def test_merged_export_equals_base_plus_adapter_and_its_card_states_the_emissions(lora_run, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    from launcher.demo import ensure_demo_assets

    out = tmp_path / "merged"
    out.mkdir()  # an empty folder is a valid --output
    res = launcher("export", str(lora_run), "--merge", "--output", str(out), "--max-shard-size", "400KB")
    assert f"exported merged (fp32): {out}" in res.stdout
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (out / "model.safetensors.index.json").exists(), shards
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "README.md"} <= {p.name for p in out.iterdir()}
    assert not list(tmp_path.glob(".tmp-*"))

    ids = batch()
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    expected = logits(base_with_adapter(lora_run, lora_run / "final"), ids)
    diff = (logits(merged, ids) - expected).abs().max().item()
    assert diff < 1e-4, diff
    base = AutoModelForCausalLM.from_pretrained(str(ensure_demo_assets().model_dir)).eval()
    assert (logits(base, ids) - expected).abs().max().item() > 1e-3, "the adapter changes nothing: a vacuous test"

    card = ModelCard.load(out / "README.md")
    report = json.loads((lora_run / "report.json").read_text())
    co2 = card.data.co2_eq_emissions
    assert co2["emissions"] == pytest.approx(report["energy"]["emissions_kg"] * 1000, rel=1e-12)
    assert co2["source"].startswith("CodeCarbon") and co2["training_type"] == "fine-tuning"
    assert co2["geographical_location"] == "USA" and co2["hardware_used"].startswith("1 x ")
    assert card.data.library_name == "transformers" and card.data.base_model is None
    for fact in ("| steps | 3 of 3 |", f"| tokens | {report['throughput']['tokens']:,} |", "| final train loss |",
                 "| final eval loss |", "tokens/s", "| energy |", "| cost |"):
        assert fact in card.text, fact


def test_adapter_export_is_what_peft_loads_and_names_the_base(lora_run, tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "adapter"
    launcher("export", str(lora_run), "--output", str(out), "--base-model", "tiny-org/tiny-llama")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-org/tiny-llama"
    ids = batch()
    got = logits(base_with_adapter(lora_run, out), ids)
    assert (got - logits(base_with_adapter(lora_run, lora_run / "final"), ids)).abs().max().item() == 0
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == "tiny-org/tiny-llama"


def test_output_is_never_half_written_nor_written_over(lora_run, tmp_path, monkeypatch):
    from launcher import export as ex
    from launcher.errors import JobError

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    res = launcher("export", str(lora_run), "--output", str(taken), ok=False)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"error: --output: {taken} already exists and is not an empty folder; choose a new one, or remove it"]
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]

    def fail(plan, final, tmp, *args):
        (tmp / "model-00001-of-00002.safetensors").write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(ex, "_write_model", fail)
    with pytest.raises(OSError):
        ex.export_run(lora_run, merge=True, output=tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    with pytest.raises(JobError, match="--max-shard-size: 'big' is not a size"):
        ex.export_run(lora_run, output=tmp_path / "out", max_shard_size="big")


def test_full_fine_tune_exports_its_final_model_cast(tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run = tmp_path / "full"
    launcher("run", "--run-dir", str(run), *RUN, "train.method=full", "train.max_steps=2", cwd=tmp_path)
    launcher("export", str(run), "--dtype", "bf16")
    out = run / "export" / "full"
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.dtype == torch.bfloat16
    final = {}
    for f in (run / "final").glob("*.safetensors"):
        final.update(load_file(str(f)))
    exported = dict(model.state_dict())
    for name, t in final.items():
        assert torch.equal(exported[name], t.to(torch.bfloat16)), name
    assert "library_name: transformers" in (out / "README.md").read_text()
