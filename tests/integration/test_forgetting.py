"""Forgetting, measured (eval.general_data) and countered (data.replay), on real runs.

The tiny demo model is first trained on "general" text (lowercase sentences of a small word list:
its pre-training here), then fine-tuned on another distribution (sums of 3-digit numbers). The
fine-tune's report gives the general text's perplexity before and after: it rises; the same
fine-tune with 20% of every global batch replayed from the general text rises far less.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.helpers import launcher_ok

pytestmark = pytest.mark.slow

COMMON = ["cluster.device=cpu", "data.max_seq_len=64", "train.micro_batch_size=8", "train.global_batch_size=16",
          "train.eval_accuracy_samples=0", "train.save_every_steps=1000", "train.eval_every_steps=1000"]
ONE = ["cluster.cpu_procs_per_node=1", "parallel.zero_stage=0"]


def general_evals(d: Path) -> dict:
    recs = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    return {r["phase"]: r for r in recs if r["kind"] == "general_eval"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The data files, and the model pre-trained on the general text."""
    from launcher.demo.assets import TOPIC_WORDS, _FILLER

    root = tmp_path_factory.mktemp("forgetting")
    rng = random.Random(0)
    words = _FILLER + [w for ws in TOPIC_WORDS.values() for w in ws]

    def sentences(name: str, n: int) -> None:
        (root / name).write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(
            rng.randint(4, 9)))}) + "\n" for _ in range(n)))

    sentences("general.jsonl", 1500)
    sentences("general_eval.jsonl", 200)
    (root / "task.jsonl").write_text("".join(
        json.dumps({"prompt": f"{a}+{b}=", "response": str(a + b)}) + "\n"
        for a, b in ((rng.randint(0, 999), rng.randint(0, 999)) for _ in range(1500))))
    # on 2 ranks of one thread each: one rank of two threads waits at every operation for a core
    # that the suite's other worker holds (80 s for these 80 steps beside it; on 2 ranks alone, 4.5 s)
    launcher_ok(root, "run", "--run-dir", str(root / "pretrained"), *COMMON, "cluster.cpu_procs_per_node=2",
             "parallel.zero_stage=0", "data.path=general.jsonl", "data.format=text", "train.max_steps=80",
             "train.lr=3e-3")
    return root


def fine_tune(world: Path, name: str, *extra: str) -> Path:
    d = world / name
    launcher_ok(world, "run", "--run-dir", str(d), *COMMON, f"model.path={world / 'pretrained' / 'final'}",
             "data.path=task.jsonl", "data.format=instruction", "train.lr=3e-3", "eval.general_data=general_eval.jsonl",
             "eval.general_max_tokens=4000", *extra)
    return d


def test_fine_tuning_raises_general_perplexity_and_replay_counters_it(world):
    plain = fine_tune(world, "plain", *ONE, "train.max_steps=40")
    replayed = fine_tune(world, "replay", *ONE, "train.max_steps=40", "data.replay.path=general.jsonl",
                         "data.replay.fraction=0.2")
    reports = {k: json.loads((d / "report.json").read_text()) for k, d in (("plain", plain), ("replay", replayed))}
    a, b = reports["plain"]["forgetting"], reports["replay"]["forgetting"]
    assert a["before_ppl"] == pytest.approx(b["before_ppl"], rel=1e-9), "the same model before either fine-tune"
    assert a["after_ppl"] > 2 * a["before_ppl"], a  # forgetting, measured
    assert a["change"] == pytest.approx(a["after_ppl"] / a["before_ppl"] - 1)
    assert b["change"] < a["change"] / 10, (a, b)  # and countered by replay
    assert 0 < a["tokens"] <= 4000
    # the report states the share, and the model card the figures
    job = reports["replay"]["job"]
    assert job["replay_rows_per_step"] == 3 and job["replay_path"].endswith("general.jsonl")
    md = (replayed / "report.md").read_text()
    assert "3 of 16 rows per step (18.8%) of general text" in md and "general-domain perplexity" in md
    plan = json.loads((replayed / "plan.json").read_text())
    assert any("replay rows per step = round(global_batch_size 16 x data.replay.fraction 0.2) = 3" in x
               for x in plan["derivations"])
    assert plan["forecast"]["general_eval_s"] > 0


def test_lora_measures_before_with_its_adapters_off(world):
    """No second copy of the model: LoRA's "before" is the trained model with its adapters off,
    under ZeRO-3 on 2 ranks; it equals the base model's perplexity a full fine-tune measured at
    step 0 in one process."""
    full = general_evals(world / "plain") if (world / "plain").exists() else general_evals(
        fine_tune(world, "plain", *ONE, "train.max_steps=40"))
    lora = general_evals(fine_tune(world, "lora", "train.method=lora", "parallel.zero_stage=3", "train.max_steps=10"))
    assert lora["before"]["adapters_off"] and lora["before"]["step"] == 10
    assert lora["before"]["perplexity"] == pytest.approx(full["before"]["perplexity"], rel=1e-5)
    assert lora["after"]["perplexity"] > lora["before"]["perplexity"]
