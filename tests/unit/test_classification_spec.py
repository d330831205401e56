"""Classification without training: the spec's rules, the labels, the rows the ranks get, the
metrics, the starter job and what the plan counts."""
from __future__ import annotations

import pytest

from launcher.errors import JobError
from launcher.spec import load_job


def test_the_task_sets_its_data_defaults_and_refuses_mismatches():
    spec = load_job(None, ["train.task=classification"])
    assert spec.data.format == "classification" and spec.data.packing is False and spec.data.path == "demo:topics"
    causal = load_job(None, [])
    assert causal.train.task == "causal_lm" and causal.data.path == "demo:arithmetic"
    with pytest.raises(JobError, match="needs train.task: classification"):
        load_job(None, ["data.format=classification"])


def test_label_names_and_ids():
    from launcher.spec import DataSpec
    from launcher.train.data.load import _label_problem, label_id, label_names

    d = DataSpec(format="classification")
    assert label_names([{"label": "b"}, {"label": "a"}, {"label": "b"}], d) == ["a", "b"]  # sorted set seen
    assert label_names([{"label": 2}, {"label": 0}], d) == ["0", "1", "2"]  # ids 0..max
    fixed = DataSpec(format="classification", labels=["neg", "pos"])
    assert label_names([{"label": "pos"}], fixed) == ["neg", "pos"]  # data.labels fixes the order
    assert label_id("pos", ["neg", "pos"]) == 1 and label_id(0, ["neg", "pos"]) == 0
    assert _label_problem("meh", fixed) and _label_problem(2, fixed) and _label_problem(True, d)
    assert _label_problem("pos", fixed) is None and _label_problem(1, fixed) is None
    with pytest.raises(JobError, match="mixes class names and integer ids"):
        label_names([{"label": "a"}, {"label": 1}], d)


def test_a_row_carries_its_class_on_its_last_token_even_when_cut():
    from launcher.demo import ensure_demo_assets
    from launcher.spec import DataSpec
    from launcher.train.data.tokenize import IGNORE_INDEX, _tokenize, label_tokens
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ensure_demo_assets().tokenizer_dir))
    d = DataSpec(format="classification", max_seq_len=8)
    rows = [{"text": "rain", "label": "weather"}, {"text": "the pizza was big", "label": "food"}]
    ex, counts = _tokenize(rows, tok, d, ["food", "weather"])
    assert counts == {"truncated": 1, "dropped": 0}
    assert ex[0]["labels"] == [IGNORE_INDEX] * (len(ex[0]["input_ids"]) - 1) + [1]
    assert len(ex[1]["input_ids"]) == 8 and ex[1]["labels"][-1] == 0 and label_tokens(ex[1]) == 1
    with pytest.raises(JobError, match="row 2: 17 tokens, more than data.max_seq_len=8"):
        _tokenize(rows, tok, DataSpec(format="classification", max_seq_len=8, truncate=False), ["food", "weather"])


def test_loss_and_macro_f1():
    import torch
    import torch.nn.functional as F

    from launcher.train.evaluate import f1_macro
    from launcher.train.loss import class_loss_sum, class_targets

    labels = torch.tensor([[-100, -100, 2, -100], [-100, 0, -100, -100]])  # padded after the class token
    assert class_targets(labels).tolist() == [2, 0]
    logits = torch.randn(2, 3)
    assert float(class_loss_sum(logits, labels)) == pytest.approx(
        float(F.cross_entropy(logits, torch.tensor([2, 0]), reduction="sum")))
    # gold [0, 0, 1, 2], predicted [0, 1, 1, 1]: F1 2/3, 1/2, 0 -> macro 7/18 (scikit-learn's value)
    assert f1_macro([1, 1, 0], [0, 2, 0], [1, 0, 1]) == pytest.approx(7 / 18)
    assert f1_macro([0, 0], [0, 0], [0, 0]) is None


def test_init_writes_a_classification_starter_that_plans(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from launcher.cli import cli

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["init", "c.yaml", "--task", "classification"])
    assert res.exit_code == 0, res.output
    spec = load_job(tmp_path / "c.yaml")
    assert spec.train.task == "classification" and spec.train.method == "lora" and spec.data.packing is False


def test_the_plan_counts_the_head_and_no_lm_head():
    """The classifier's parameters (the embedding, the layers, a head of num_labels outputs) and its
    logits memory (a few scores per token, not the vocabulary)."""
    from launcher.plan import plan_job
    from launcher.sources import model_info

    def plan(spec):
        return plan_job(spec, device="cpu", model_info=model_info(spec), cpu_count=2)

    cls = plan(load_job(None, ["train.task=classification"]))
    lm = plan(load_job(None, ["train.task=classification", "train.task=causal_lm", "data.format=instruction",
                              "data.path=demo:arithmetic"]))
    h, v = cls.model.hidden_size, cls.model.vocab_size
    assert cls.model.architecture == "LlamaForSequenceClassification" and cls.model.num_labels == 3
    assert cls.model.n_params == lm.model.n_params - v * h + 3 * h
    assert cls.memory.per_device_bytes.logits < lm.memory.per_device_bytes.logits / 20


def test_only_a_classifiers_new_parts_may_be_missing_from_the_checkpoint():
    """The head (outside the base model) and BERT's pooler (MLM checkpoints have none) get their
    seeded values; a missing layer weight is a checkpoint that is not the model's."""
    from launcher.train.weights import is_new_head, missing_problem

    assert is_new_head("model", "score.weight") and is_new_head("bert", "classifier.bias")
    assert is_new_head("bert", "bert.pooler.dense.weight")
    assert not is_new_head("model", "model.layers.0.mlp.up_proj.weight")
    assert not is_new_head("bert", "bert.encoder.layer.0.output.dense.weight")
    assert "is it the model config.json describes?" in str(missing_problem("m", ["model.norm.weight"]))
