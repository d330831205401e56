"""The embedded default job's assets, built locally and deterministically (nothing is downloaded).

* a character-level tokenizer (``tokenizers`` WordLevel, one token per character) with a chat
  template that marks assistant turns for ``return_assistant_tokens_mask``;
* a tiny ``LlamaForCausalLM`` (2 layers, hidden 64) initialised from a seed, saved in fp32;
* a synthetic jsonl task of short arithmetic and string-reversal rows of varying length.

``ensure_demo_assets`` builds all three once under ``$LAUNCHER_CACHE/<ASSETS_VERSION>`` (default
``~/.cache/launcher/<ASSETS_VERSION>``); ``resolve_model_path``/``resolve_data_path`` map the job file's
``demo:tiny-llama`` and ``demo:arithmetic`` to those folders. torch, transformers and tokenizers
are imported inside the functions only: importing this module stays cheap.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import string
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from launcher.errors import JobError

ASSETS_VERSION = "demo-v3"
DEMO_ROWS = 8000  # rows of the synthetic task: enough that the tiny model generalises in a few minutes
DEMO_PREFIX = "demo:"
DEMO_MODEL = "tiny-llama"
DEMO_DATA = "arithmetic"
DEMO_CLASSIFICATION_DATA = "topics"  # the classification default's data (built beside the assets on first use)
TOPICS_ROWS = 2000

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0, 1, 2, 3
# Every printable ASCII character (digits, letters, punctuation, space) plus tab and newline.
CHARACTERS = ["\t", "\n"] + [chr(c) for c in range(32, 127)]
MODEL_MAX_LENGTH = 512

# Roles user/system/assistant; the assistant's content and its eos are inside {% generation %}
# so that apply_chat_template(..., return_assistant_tokens_mask=True) marks them.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ 'assistant: ' }}{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}{{ '\\n' }}"
    "{% elif message['role'] in ['user', 'system'] %}"
    "{{ message['role'] + ': ' + message['content'] + '\\n' }}"
    "{% else %}"
    "{{ raise_exception('unknown role ' + message['role'] + ': use user, assistant or system') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)

TINY_LLAMA = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=MODEL_MAX_LENGTH,
    tie_word_embeddings=False,
)

MODEL_DIR, TOKENIZER_DIR, DATA_FILE, MARKER = "tiny-llama", "tokenizer", "arithmetic.jsonl", "assets.json"

# torch.manual_seed is process-wide: threads building at once would interleave their draws.
_BUILD_LOCK = threading.RLock()


@dataclass(frozen=True)
class DemoAssets:
    model_dir: Path
    tokenizer_dir: Path
    data_file: Path


# --------------------------------------------------------------------------- tokenizer


def build_tokenizer(out_dir: Path) -> Path:
    """Save a character-level fast tokenizer to ``out_dir``; returns ``out_dir``.

    Ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3, then tab, newline and printable ASCII.
    Encoding adds no special tokens (no bos): ``"12+35="`` is exactly six tokens.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character on its own ("[\s\S]" also matches newlines); Fuse joins them back on decode.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL_TOKENS)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return out_dir


# --------------------------------------------------------------------------- model


def build_tiny_llama(
    out_dir: Path,
    vocab_size: int,
    seed: int = 0,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    pad_token_id: int = 0,
) -> Path:
    """Save a tiny fp32 ``LlamaForCausalLM`` initialised from ``seed`` (safetensors); returns ``out_dir``.

    The special ids default to :func:`build_tokenizer`'s. The same seed gives byte-identical
    ``model.safetensors`` with the same torch version.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    config = LlamaConfig(
        vocab_size=vocab_size,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        **TINY_LLAMA,
    )
    prev_dtype = torch.get_default_dtype()
    # fork_rng: seeding here leaves the caller's RNG stream (e.g. a training seed) untouched.
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.set_default_dtype(torch.float32)
        try:
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(prev_dtype)
    model = model.to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


# --------------------------------------------------------------------------- data

_LETTERS = string.ascii_lowercase


def _arithmetic_row(rng: random.Random) -> dict[str, str]:
    kind = rng.choices(["add", "sub", "mul", "rev"], weights=[4, 3, 1, 2])[0]

    def operand(max_digits: int) -> int:
        digits = rng.randint(1, max_digits)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    if kind == "add":
        a, b = operand(2), operand(2)
        return {"prompt": f"{a}+{b}=", "response": str(a + b)}
    if kind == "sub":
        a, b = sorted((operand(2), operand(2)), reverse=True)
        return {"prompt": f"{a}-{b}=", "response": str(a - b)}
    if kind == "mul":
        a, b = operand(1), operand(1)
        return {"prompt": f"{a}*{b}=", "response": str(a * b)}
    word = "".join(rng.choice(_LETTERS) for _ in range(rng.randint(2, 6)))
    return {"prompt": f"rev {word}=", "response": word[::-1]}


def build_arithmetic_data(path: Path, n: int = 2000, seed: int = 0) -> Path:
    """Write ``n`` rows ``{"prompt": "23+58=", "response": "81"}`` of a synthetic task to ``path``.

    A mix of a+b and a-b (1-2 digit operands, a >= b), a*b (1 digit each) and ``rev abc=`` -> ``cba``,
    so row lengths vary (from 4 to about 20 characters). Deterministic from ``seed``.
    """
    from launcher.fs import write_atomic

    rng = random.Random(seed)
    lines = [json.dumps(_arithmetic_row(rng)) for _ in range(n)]
    return write_atomic(Path(path), "\n".join(lines) + "\n")


# The classification task: a short sentence of filler words around one or two words of a topic.
# A character-level model must find the topic word in the sentence: learnable in tens of steps.
TOPIC_WORDS = {
    "food": ["pizza", "soup", "bread", "salad", "cheese", "pasta", "apple", "rice"],
    "sports": ["goal", "team", "match", "coach", "ball", "score", "race", "league"],
    "weather": ["rain", "storm", "cloud", "sunny", "wind", "snow", "frost", "fog"],
}
_FILLER = ["the", "a", "we", "saw", "today", "very", "and", "then", "it", "was", "big", "some", "new", "old",
           "my", "our", "this", "that", "again", "so"]


def _topic_row(rng: random.Random) -> dict[str, str]:
    label = rng.choice(sorted(TOPIC_WORDS))
    words = [rng.choice(_FILLER) for _ in range(rng.randint(3, 7))]
    for _ in range(rng.randint(1, 2)):
        words.insert(rng.randint(0, len(words)), rng.choice(TOPIC_WORDS[label]))
    return {"text": " ".join(words), "label": label}


def build_topics_data(path: Path, n: int = TOPICS_ROWS, seed: int = 0) -> Path:
    """Write ``n`` rows ``{"text": "we saw the storm today", "label": "weather"}`` (three balanced
    topics, 4 to 9 words) to ``path``. Deterministic from ``seed``."""
    from launcher.fs import write_atomic

    rng = random.Random(seed)
    lines = [json.dumps(_topic_row(rng)) for _ in range(n)]
    return write_atomic(Path(path), "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- cache


def _assets_at(root: Path) -> DemoAssets:
    return DemoAssets(model_dir=root / MODEL_DIR, tokenizer_dir=root / TOKENIZER_DIR, data_file=root / DATA_FILE)


def ensure_demo_assets(cache_dir: Optional[Path] = None) -> DemoAssets:
    """Build the demo assets once under ``<cache_dir>/<ASSETS_VERSION>`` and return their paths.

    ``cache_dir`` defaults to ``$LAUNCHER_CACHE`` or ``~/.cache/launcher``. Everything is built
    in a temp folder beside the target and renamed into place, so concurrent callers (several
    ranks, several jobs) never see a half-built folder: the first rename wins, the others reuse it.
    """
    from launcher.fs import user_cache_dir

    root = Path(cache_dir).expanduser() if cache_dir is not None else user_cache_dir()
    target = root / ASSETS_VERSION
    if (target / MARKER).is_file():
        return _assets_at(target)
    root.mkdir(parents=True, exist_ok=True)
    if target.exists():
        # A folder without the marker was not made by us (or was damaged): move it aside.
        aside = Path(tempfile.mkdtemp(prefix=f".{ASSETS_VERSION}.broken-", dir=root))
        try:
            os.replace(target, aside / ASSETS_VERSION)
        except OSError:
            pass  # someone else moved or replaced it meanwhile
        shutil.rmtree(aside, ignore_errors=True)
        if (target / MARKER).is_file():
            return _assets_at(target)

    tmp = Path(tempfile.mkdtemp(prefix=f".{ASSETS_VERSION}.tmp-", dir=root))
    try:
        built = _assets_at(tmp)
        build_tokenizer(built.tokenizer_dir)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(built.tokenizer_dir))
        # transformers' save imports DeepSpeed where it is installed, whose logger prints to stdout,
        # and draws a progress bar: neither reaches `launcher plan --json` or a one-line error
        from launcher.quiet import libraries_quiet

        with libraries_quiet():
            build_tiny_llama(
                built.model_dir,
                vocab_size=len(tok),
                seed=0,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        for f in built.tokenizer_dir.iterdir():  # the model folder also loads as a tokenizer
            if f.is_file():
                shutil.copy2(f, built.model_dir / f.name)
        build_arithmetic_data(built.data_file, n=DEMO_ROWS, seed=0)
        (tmp / MARKER).write_text(json.dumps({"version": ASSETS_VERSION, "vocab_size": len(tok)}) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / MARKER).is_file():  # lost the race to a folder that is not complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _assets_at(target)


def _demo_name(path: str) -> Optional[str]:
    return path[len(DEMO_PREFIX):] if isinstance(path, str) and path.startswith(DEMO_PREFIX) else None


def _unknown_demo(path: str) -> JobError:
    return JobError(f"{path}: unknown demo asset (valid: {DEMO_PREFIX}{DEMO_MODEL}, {DEMO_PREFIX}{DEMO_DATA}, "
                    f"{DEMO_PREFIX}{DEMO_CLASSIFICATION_DATA})")


def resolve_model_path(path: str) -> str:
    """``demo:tiny-llama`` -> the cached model folder (built on first use); other paths unchanged."""
    name = _demo_name(path)
    if name is None:
        return path
    if name != DEMO_MODEL:
        raise _unknown_demo(path)
    return str(ensure_demo_assets().model_dir)


def resolve_data_path(path: str) -> str:
    """``demo:arithmetic`` (``demo:topics``) -> the cached jsonl file (built on first use); other paths
    unchanged."""
    name = _demo_name(path)
    if name is None:
        return path
    if name == DEMO_CLASSIFICATION_DATA:
        target = ensure_demo_assets().data_file.parent / f"{DEMO_CLASSIFICATION_DATA}.jsonl"
        if not target.is_file():  # written whole under a temporary name, then renamed: racing writers agree
            build_topics_data(target)
        return str(target)
    if name != DEMO_DATA:
        raise _unknown_demo(path)
    return str(ensure_demo_assets().data_file)


# --------------------------------------------------------------------------- evaluation


def exact_match_accuracy(
    model: Any,
    tokenizer: Any,
    rows: list[dict],
    max_new_tokens: int = 8,
    batch_size: int = 64,
    prompt_field: str = "prompt",
    response_field: str = "response",
) -> float:
    """Share of ``rows`` whose greedy continuation of the prompt equals the response.

    The prompt is encoded as ``tokenizer(prompt)`` (special tokens as that tokenizer adds them),
    decoded greedily with left padding; the generated text up to the first eos, stripped,
    is compared with ``str(row[response_field]).strip()``. The model's train/eval mode is restored.
    """
    import torch

    if not rows:
        return 0.0
    device = next(model.parameters()).device
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_id or 0)
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = rows[start:start + batch_size]
                prompts = [tokenizer(str(r[prompt_field]))["input_ids"] for r in batch]
                width = max(len(p) for p in prompts)
                ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
                generated = []
                done = torch.zeros(len(batch), dtype=torch.bool, device=device)
                for _ in range(max_new_tokens):
                    # The whole sequence each step, no KV cache: prompts are short, and the cache's
                    # argument name differs across transformers versions (past_key_values, cache).
                    pos = (mask.cumsum(-1) - 1).clamp(min=0)
                    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
                    nxt = logits[:, -1, :].argmax(-1)
                    nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
                    generated.append(nxt)
                    if eos_id is not None:
                        done |= nxt == eos_id
                    if bool(done.all()):
                        break
                    ids = torch.cat([ids, nxt[:, None]], dim=1)
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                gen = torch.stack(generated, dim=1).tolist()
                for row, toks in zip(batch, gen):
                    if eos_id is not None and eos_id in toks:
                        toks = toks[: toks.index(eos_id)]
                    text = tokenizer.decode(toks, skip_special_tokens=True).strip()
                    correct += text == str(row[response_field]).strip()
    finally:
        model.train(was_training)
    return correct / len(rows)


def demo_model_config() -> dict:
    """The tiny model's config.json fields, without building it (for `launcher plan`)."""
    return dict(TINY_LLAMA, vocab_size=len(SPECIAL_TOKENS) + len(CHARACTERS), tie_word_embeddings=False,
                model_type="llama", architectures=["LlamaForCausalLM"])
