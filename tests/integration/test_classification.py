"""Classification fine-tuning (train.task=classification): real runs of torchrun on 2 CPU ranks
(gloo) and one process, on the embedded classification default (the tiny Llama given a new
head, last-token pooling; the synthetic three-topic task demo:topics).

The new head is a function of its name and the seed on every layout (launcher.train.weights.
head_init), and a classification row has one label, so FSDP2, ZeRO-3 and a single process take
the same mathematical steps: per-step losses agree to rtol 1e-4, and the eval passes (loss,
accuracy and macro F1, computed over the ranks' shards and summed) agree as well.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import launcher_ok

pytestmark = pytest.mark.slow

RTOL = 1e-4
COMMON = [
    "train.task=classification", "train.max_steps=6", "data.num_samples=400", "train.global_batch_size=8",
    "train.micro_batch_size=2", "train.eval_every_steps=3", "train.lora.dropout=0", "train.lora.r=4",
    "cluster.device=cpu",
]
LAYOUTS = {
    "single": ["cluster.cpu_procs_per_node=1", "parallel.strategy=zero", "parallel.zero_stage=0"],
    "zero3": ["cluster.cpu_procs_per_node=2", "parallel.strategy=zero", "parallel.zero_stage=3"],
    "fsdp": ["cluster.cpu_procs_per_node=2", "parallel.strategy=fsdp"],
}


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


class Runs:
    """Each layout x method trains once per module; the tests read the same runs."""

    def __init__(self, root: Path):
        self.root, self.done = root, {}

    def get(self, layout: str, method: str) -> Path:
        if (layout, method) not in self.done:
            d = self.root / f"{layout}-{method}"
            launcher_ok(self.root, "run", "--run-dir", str(d), *COMMON, *LAYOUTS[layout], f"train.method={method}")
            self.done[layout, method] = d
        return self.done[layout, method]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("classification"))


def _evals(d: Path) -> list[tuple]:
    return [(r["step"], r["eval_loss"], r["accuracy"], r["f1_macro"]) for r in records(d, "eval")]


@pytest.mark.parametrize("layout,method,ref", [("zero3", "full", "single"), ("fsdp", "full", "single"),
                                               ("fsdp", "lora", "zero3")])
def test_layouts_take_the_same_steps(runs, layout, method, ref):
    """FSDP2 and ZeRO-3 on 2 ranks against one process (full fine-tuning), and the LoRA runs, whose
    head is trained whole (modules_to_save), against each other; the eval's accuracy and macro F1 too."""
    got, want = runs.get(layout, method), runs.get(ref, method)
    a = [r["loss"] for r in records(got, "train")]
    b = [r["loss"] for r in records(want, "train")]
    assert len(a) == 6 and a == pytest.approx(b, rel=RTOL), f"{layout}/{method} diverged from {ref}"
    ea, eb = _evals(got), _evals(want)
    assert [e[0] for e in ea] == [0, 3, 6], "an eval before training, every 3 steps, and at the end"
    for x, y in zip(ea, eb):
        assert x[1] == pytest.approx(y[1], rel=RTOL) and x[2] == y[2] and x[3] == pytest.approx(y[3], rel=RTOL)
        assert 0.0 <= x[2] <= 1.0 and 0.0 <= x[3] <= 1.0
    start = records(got, "start")[0]
    assert start["labels"] == ["food", "sports", "weather"]


def _eval_rows(d: Path):
    """The run's eval split as the ranks had it (prepared data, rows with the class on the last token)."""
    from launcher.sources import job_paths
    from launcher.spec import JobSpec
    from launcher.train.data import prepare_data

    spec = JobSpec.model_validate(json.loads((d / "plan.json").read_text())["job"])
    paths = job_paths(spec)
    return prepare_data(spec, paths.tokenizer, paths.data, d / "cache").eval


def _accuracy(model, tokenizer, rows) -> float:
    """Share of ``rows`` a loaded classifier gets right, as a user would call it (padded batches)."""
    import torch

    from launcher.train.data import collate, pad_id_for
    from launcher.train.loss import class_targets

    right = 0
    with torch.no_grad():
        for i in range(0, len(rows), 8):
            b = collate(rows[i:i + 8], pad_id_for(tokenizer))
            pred = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.argmax(-1)
            right += int((pred == class_targets(b["labels"])).sum())
    return right / len(rows)


def test_lora_saves_an_adapter_and_head_that_load_and_predict(runs):
    """final/ holds the adapter, the trained head (peft's modules_to_save) and the classes
    (config.json); loaded as the model card says, the classifier scores the eval split as the
    run's last evaluation did."""
    import torch
    from peft import PeftConfig, PeftModel
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    d = runs.get("zero3", "lora")
    final = d / "final"
    with safe_open(str(final / "adapter_model.safetensors"), "pt") as st:
        heads = [k for k in st.keys() if k.endswith("score.weight")]
        assert heads and tuple(st.get_tensor(heads[0]).shape) == (3, 128), heads
    config = AutoConfig.from_pretrained(str(final))
    assert config.id2label == {0: "food", 1: "sports", 2: "weather"}
    base = AutoModelForSequenceClassification.from_pretrained(
        PeftConfig.from_pretrained(str(final)).base_model_name_or_path, config=config, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(final)).eval()
    acc = _accuracy(model, AutoTokenizer.from_pretrained(str(final)), _eval_rows(d))
    assert acc == pytest.approx(records(d, "eval")[-1]["accuracy"], abs=1e-9)


@pytest.mark.parametrize("layout,method,merge", [("fsdp", "full", False), ("zero3", "lora", True)])
def test_exported_classifier_loads_with_the_auto_class(runs, tmp_path, layout, method, merge):
    """launcher export writes a model AutoModelForSequenceClassification loads (a LoRA run merged
    into its base, head included), with the classes and a text-classification model card, that
    predicts as the run's last evaluation did."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    d = runs.get(layout, method)
    out = tmp_path / "export"
    launcher_ok(tmp_path, "export", str(d), "--output", str(out), *(["--merge"] if merge else []))
    model = AutoModelForSequenceClassification.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.config.id2label == {0: "food", 1: "sports", 2: "weather"}
    acc = _accuracy(model, AutoTokenizer.from_pretrained(str(out)), _eval_rows(d))
    assert acc == pytest.approx(records(d, "eval")[-1]["accuracy"], abs=1e-9)
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "sequence classification: food, sports, weather" in card
    assert "| eval accuracy |" in card and 'pipeline("text-classification"' in card


def test_embedded_classification_default_learns(tmp_path):
    """`launcher run train.task=classification`, no job file: the tiny classifier on the synthetic
    three-topic task ends at least 1.5x chance, and the report shows accuracy and macro F1
    before and after."""
    out = launcher_ok(tmp_path, "run", "train.task=classification")
    d = next((tmp_path / "runs").iterdir())
    ev = records(d, "eval")
    assert ev[0]["step"] == 0 and ev[-1]["step"] == records(d, "end")[0]["steps"] == 60
    chance = 1 / 3
    assert ev[-1]["accuracy"] >= 1.5 * chance, ev[-1]
    assert ev[-1]["f1_macro"] > ev[0]["f1_macro"], (ev[0], ev[-1])
    report = json.loads((d / "report.json").read_text())
    assert report["job"]["task"] == "classification" and report["job"]["labels"] == ["food", "sports", "weather"]
    assert report["loss"]["first_accuracy"] == ev[0]["accuracy"] and report["loss"]["last_f1_macro"] == ev[-1]["f1_macro"]
    assert "Accuracy (first -> last eval)" in (d / "report.md").read_text()
    assert "task accuracy" in out.stdout and "macro F1" in out.stdout
    # the plan counted the model that ran: three classes on the head, no LM head
    plan = json.loads((d / "plan.json").read_text())
    start = records(d, "start")[0]
    assert plan["model"]["architecture"] == "LlamaForSequenceClassification"
    assert plan["model"]["n_params"] == start["n_params"]


def _tiny_bert(folder: Path) -> None:
    """An encoder model folder as BERT's checkpoints come (BertForMaskedLM weights, a WordPiece
    tokenizer that frames each text with [CLS] ... [SEP]), built here: no download."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    from launcher.demo.assets import TOPIC_WORDS, _FILLER

    words = sorted({w for ws in TOPIC_WORDS.values() for w in ws} | set(_FILLER))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(str(folder))
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=128, max_position_embeddings=64, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)).save_pretrained(str(folder))


def test_an_encoder_classifier_under_fsdp2_matches_a_single_process(tmp_path):
    """BERT-family: [CLS] pooling, a head with a bias, BertEmbeddings listed as a block of its own
    (FSDP2 shards the word embedding inside it first), a checkpoint of another head (MLM)."""
    _tiny_bert(tmp_path / "bert")
    common = [*COMMON, f"model.path={tmp_path / 'bert'}", "train.method=full"]
    got = {}
    for layout in ("single", "fsdp"):
        d = tmp_path / layout
        launcher_ok(tmp_path, "run", "--run-dir", str(d), *common, *LAYOUTS[layout])
        got[layout] = d
    a, b = ([r["loss"] for r in records(got[k], "train")] for k in ("fsdp", "single"))
    assert len(a) == 6 and a == pytest.approx(b, rel=RTOL)
    assert _evals(got["fsdp"])[-1][2] == _evals(got["single"])[-1][2]
    assert json.loads((got["fsdp"] / "plan.json").read_text())["model"]["architecture"] == "BertForSequenceClassification"
