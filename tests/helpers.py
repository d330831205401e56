"""Shared test helpers: small things built locally, never fetched from the hub."""
from __future__ import annotations

import os
import string
from pathlib import Path

# A chat template in the ChatML style with {% generation %} markers around what the assistant
# says (its closing <|im_end|> included, so that the model learns to stop).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|im_start|>assistant\n"
    "{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}\n"
    "{% else %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def make_char_tokenizer(dir: str | os.PathLike | None = None, chat_template: str | None = CHAT_TEMPLATE):
    """A character-level ``PreTrainedTokenizerFast``: one token per printable ASCII character.

    Ids: <pad>=0, <unk>=1, <s>=2 (bos), </s>=3 (eos), <|im_start|>=4, <|im_end|>=5, then the
    characters. With ``dir`` the tokenizer is also saved there (``from_pretrained(dir)`` loads it).
    ``chat_template=None`` gives a tokenizer without a chat template.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable))
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    if dir is not None:
        Path(dir).mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(str(dir))
    return fast


GOLDEN = Path(__file__).resolve().parent / "golden"


def check_golden(name: str, text: str) -> None:
    """``text`` must equal tests/golden/NAME. After an intended change, regenerate every golden
    file with ``UPDATE_GOLDEN=1 python -m pytest tests/unit -q`` and review the diff."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} drifted from its golden file (UPDATE_GOLDEN=1 to accept)"
