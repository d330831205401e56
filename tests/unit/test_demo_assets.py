"""The demo assets: built locally, deterministic, loadable with the Auto* classes."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from launcher.demo import assets as demo_assets
from launcher.demo.assets import (
    ASSETS_VERSION,
    build_arithmetic_data,
    build_tiny_llama,
    build_tokenizer,
    ensure_demo_assets,
    exact_match_accuracy,
    resolve_data_path,
    resolve_model_path,
)
from launcher.errors import JobError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def assets(cache):
    return ensure_demo_assets(cache)


@pytest.fixture(scope="module")
def tok(assets):
    return transformers.AutoTokenizer.from_pretrained(str(assets.tokenizer_dir))


@pytest.fixture(scope="module")
def model(assets):
    return transformers.AutoModelForCausalLM.from_pretrained(str(assets.model_dir)).eval()


def test_layout(assets, cache):
    assert assets.model_dir.parent == cache / ASSETS_VERSION
    assert (assets.model_dir / "model.safetensors").is_file()
    assert (assets.model_dir / "tokenizer.json").is_file()  # the model folder is also a tokenizer folder
    assert assets.data_file.is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_model_weights_deterministic(tmp_path, assets):
    a = build_tiny_llama(tmp_path / "a", vocab_size=101, seed=0)
    b = build_tiny_llama(tmp_path / "b", vocab_size=101, seed=0)
    c = build_tiny_llama(tmp_path / "c", vocab_size=101, seed=1)
    ha = _sha256(a / "model.safetensors")
    assert ha == _sha256(b / "model.safetensors")
    assert ha != _sha256(c / "model.safetensors")
    assert ha == _sha256(assets.model_dir / "model.safetensors")


def test_build_leaves_caller_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_llama(tmp_path / "m", vocab_size=101, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer(tok, assets):
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.model_max_length == 512
    ids = tok("12+35=")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == list("12+35=")
    text = "Hello, World! rev abc= 123-45*6 (x)\t[y]\n"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.decode([tok.bos_token_id] + tok("7")["input_ids"] + [tok.eos_token_id], skip_special_tokens=True) == "7"
    same = transformers.AutoTokenizer.from_pretrained(str(assets.model_dir))
    assert same("rev abc=")["input_ids"] == tok("rev abc=")["input_ids"]


def test_tokenizer_builds_alone(tmp_path):
    out = build_tokenizer(tmp_path / "tok")
    t = transformers.AutoTokenizer.from_pretrained(str(out))
    assert len(t) == 101


def test_chat_template_assistant_mask(tok):
    messages = [
        {"role": "system", "content": "add"},
        {"role": "user", "content": "1+2="},
        {"role": "assistant", "content": "3"},
        {"role": "user", "content": "rev ab="},
        {"role": "assistant", "content": "ba"},
    ]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask) and ids[0] == tok.bos_token_id
    kept = [t for t, m in zip(tok.convert_ids_to_tokens(ids), mask) if m]
    assert kept == ["3", "</s>", "b", "a", "</s>"]
    prompt = tok.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<s>user: 1+2=\nassistant: "


def test_forward_loss(model, tok):
    assert model.dtype == torch.float32
    assert model.config.num_hidden_layers == demo_assets.TINY_LLAMA["num_hidden_layers"]
    assert model.config.hidden_size == demo_assets.TINY_LLAMA["hidden_size"]
    assert not model.config.tie_word_embeddings
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (1, 2, 0)
    ids = torch.tensor([tok("12+35=47")["input_ids"] + [tok.eos_token_id]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss)
    assert 3.0 < loss.item() < 6.0  # about ln(101) = 4.6 for random weights


def test_data(tmp_path, assets):
    rows = [json.loads(line) for line in assets.data_file.read_text().splitlines()]
    assert len(rows) == demo_assets.DEMO_ROWS
    assert all(set(r) == {"prompt", "response"} and r["prompt"].endswith("=") for r in rows)
    lengths = {len(r["prompt"]) + len(r["response"]) for r in rows}
    assert len(lengths) >= 8 and min(lengths) <= 5 and max(lengths) >= 14
    ops = {next((op for op in ("rev", "+", "-", "*") if op in r["prompt"]), None) for r in rows}
    assert ops == {"rev", "+", "-", "*"}
    for r in rows[:200]:
        p = r["prompt"][:-1]
        expected = p[4:][::-1] if p.startswith("rev ") else str(eval(p))  # noqa: S307 (our own digits)
        assert r["response"] == expected
    again = build_arithmetic_data(tmp_path / "a.jsonl", n=demo_assets.DEMO_ROWS, seed=0)
    assert again.read_bytes() == assets.data_file.read_bytes()
    other = build_arithmetic_data(tmp_path / "b.jsonl", n=demo_assets.DEMO_ROWS, seed=1)
    assert other.read_bytes() != assets.data_file.read_bytes()


def test_exact_match_accuracy(model, tok, assets):
    rows = [json.loads(line) for line in assets.data_file.read_text().splitlines()][:200]
    model.train()
    acc = exact_match_accuracy(model, tok, rows, batch_size=64)
    assert model.training  # mode restored
    model.eval()
    assert isinstance(acc, float) and 0.0 <= acc <= 0.05
    assert exact_match_accuracy(model, tok, []) == 0.0


def test_exact_match_counts_correct_answers(tok):
    """A stub model that always emits the digits of 3 then eos: right on "1+2=", wrong elsewhere."""
    answer = tok("3")["input_ids"] + [tok.eos_token_id]

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.prompt_len = None

        def forward(self, input_ids, attention_mask, **kw):
            real = attention_mask.sum(-1)
            if self.prompt_len is None:
                self.prompt_len = real
            step = (real - self.prompt_len).clamp(max=len(answer) - 1)
            logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], len(tok))
            logits[torch.arange(input_ids.shape[0]), -1, torch.tensor(answer)[step]] = 1.0
            return transformers.modeling_outputs.CausalLMOutputWithPast(logits=logits)

    rows = [{"prompt": "1+2=", "response": "3"}, {"prompt": "10+20=", "response": "30"}]
    assert exact_match_accuracy(Stub(), tok, rows) == 0.5


def test_ensure_is_idempotent(cache, assets, monkeypatch):
    mtime = (assets.model_dir / "model.safetensors").stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(demo_assets, "build_tokenizer", boom)
    assert ensure_demo_assets(cache) == assets
    assert (assets.model_dir / "model.safetensors").stat().st_mtime_ns == mtime


def test_ensure_loses_race_gracefully(tmp_path, assets, monkeypatch):
    """Another process renames a complete folder into place while we build: we reuse theirs."""
    real = demo_assets.build_arithmetic_data
    winner = assets.model_dir.parent

    def build_then_lose(path, n=demo_assets.DEMO_ROWS, seed=0):
        out = real(path, n=n, seed=seed)
        shutil.copytree(winner, tmp_path / ASSETS_VERSION)
        return out

    monkeypatch.setattr(demo_assets, "build_arithmetic_data", build_then_lose)
    got = ensure_demo_assets(tmp_path)
    assert got.model_dir == tmp_path / ASSETS_VERSION / "tiny-llama"
    assert sorted(p.name for p in tmp_path.iterdir()) == [ASSETS_VERSION]


def test_resolve_paths(cache, assets, monkeypatch):
    monkeypatch.setenv("LAUNCHER_CACHE", str(cache))
    assert resolve_model_path("demo:tiny-llama") == str(assets.model_dir)
    assert resolve_data_path("demo:arithmetic") == str(assets.data_file)
    assert resolve_model_path("/models/llama") == "/models/llama"
    assert resolve_data_path("data/train.jsonl") == "data/train.jsonl"
    with pytest.raises(JobError) as e:
        resolve_model_path("demo:xyz")
    assert len(e.value.lines) == 1
    assert "demo:tiny-llama" in e.value.lines[0] and "demo:arithmetic" in e.value.lines[0]
    with pytest.raises(JobError):
        resolve_data_path("demo:tiny-llama")
