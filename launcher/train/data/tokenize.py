"""Tokenizing: ``tokenize_rows`` masks the loss to what the data format trains on
(``IGNORE_INDEX`` elsewhere); ``read_tokenizer`` is the one place the project loads a tokenizer.

transformers is imported inside ``read_tokenizer``: importing this module is cheap.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Optional

from launcher.errors import JobError

if TYPE_CHECKING:  # pragma: no cover
    from launcher.spec import DataSpec, JobSpec

IGNORE_INDEX = -100
_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")


def read_tokenizer(spec: "JobSpec", path: str):
    """The tokenizer at ``path`` (a folder or hub name), with the job's ``model.trust_remote_code``.
    A missing or unloadable tokenizer is one ``JobError`` naming the field, the folder and the fix."""
    from transformers import AutoTokenizer

    from launcher.sources import check_tokenizer_source

    field = "model.tokenizer" if spec.model.tokenizer else "model.path"
    check_tokenizer_source(field, path)
    fix = "give a folder with tokenizer.json (tokenizer.save_pretrained writes one) in model.tokenizer"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.model.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - transformers says "cannot" in many ways; we say it in one line
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = (lines[-1] if lines[0].endswith(":") else lines[0]) if lines else type(e).__name__
        raise JobError(f"{field}: {path}: transformers cannot load the tokenizer ({why}); {fix}") from None
    # transformers builds some tokenizers from a tokenizer_config.json alone, with no vocabulary
    if not tokenizer("Hello, world", add_special_tokens=False)["input_ids"]:
        raise JobError(f"{field}: {path}: the tokenizer encodes text to no tokens ({len(tokenizer)} in its "
                       f"vocabulary: its vocabulary files are missing); {fix}")
    return tokenizer


def _has_chat_generation_markers(tokenizer) -> bool:
    tmpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tmpl, dict):
        tmpl = tmpl.get("default") or next(iter(tmpl.values()), None)
    return bool(tmpl) and bool(_GENERATION_RE.search(tmpl))


def _encode_many(tokenizer, texts: list[str], chunk: int = 1000) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(texts), chunk):
        enc = tokenizer(texts[i:i + chunk], add_special_tokens=False)
        out.extend(list(ids) for ids in enc["input_ids"])
    return out


def _tokenize(rows: list[dict], tokenizer, data: "DataSpec", names: Optional[list[str]] = None,
              where=None) -> tuple[list[dict], dict]:
    """Examples and counts: ``truncated`` (longer than max_seq_len, cut) and ``dropped``
    (nothing left to learn after truncation: no label past position 0). ``names``: the class
    names (format classification). ``where(i)`` names the ``i``-th row for an error (data.truncate off)."""
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    examples: list[dict] = []
    if data.format == "text":
        bodies = _encode_many(tokenizer, [r[data.text_field] for r in rows])
        for ids in bodies:
            ids = ([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])
            examples.append({"input_ids": ids, "labels": list(ids)})
    elif data.format == "instruction":
        if eos is None:
            raise JobError("data.format: 'instruction' appends the tokenizer's eos token after each "
                           "response, but this tokenizer has none; set model.tokenizer to one with an "
                           "eos_token or use data.format: text")
        prompts = _encode_many(tokenizer, [r[data.prompt_field] for r in rows])
        responses = _encode_many(tokenizer, [r[data.response_field] for r in rows])
        for p, r in zip(prompts, responses):
            head = ([bos] if bos is not None else []) + p
            tail = r + [eos]
            examples.append({"input_ids": head + tail, "labels": [IGNORE_INDEX] * len(head) + tail})
    elif data.format == "classification":
        from launcher.train.data.load import label_id

        # the tokenizer's own framing ([bos] text on Llama, [CLS] text [SEP] on BERT); the class id
        # sits on the last token (the pooled one), -100 elsewhere: one label per row
        enc = tokenizer([r[data.text_field] for r in rows], add_special_tokens=True)["input_ids"]
        for r, ids in zip(rows, enc):
            ids = list(ids)
            examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (len(ids) - 1)
                             + [label_id(r[data.label_field], names or [])]})
    elif data.format == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise JobError("data.format: 'chat' needs a tokenizer with a chat template, and this one "
                           "has none; set model.tokenizer to a chat tokenizer or use data.format: instruction")
        if not _has_chat_generation_markers(tokenizer):
            raise JobError("data.format: 'chat' masks the loss to assistant tokens with the chat "
                           "template's {% generation %} markers, and this tokenizer's template has "
                           "none; use a template with them or data.format: instruction")
        for r in rows:
            enc = tokenizer.apply_chat_template(
                r[data.messages_field], tokenize=True, return_dict=True,
                return_assistant_tokens_mask=True,
            )
            ids = list(enc["input_ids"])
            mask = list(enc["assistant_masks"])
            labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
            examples.append({"input_ids": ids, "labels": labels})
    else:  # pragma: no cover - DataSpec validates the format
        raise JobError(f"data.format: unknown format {data.format!r}")

    truncated = dropped = 0
    kept: list[dict] = []
    for i, ex in enumerate(examples):
        if len(ex["input_ids"]) > data.max_seq_len:
            if not data.truncate:
                place = where(i) if where else f"row {i + 1}"
                raise JobError(f"{place}: {len(ex['input_ids'])} tokens, more than data.max_seq_len="
                               f"{data.max_seq_len}, and data.truncate is off; raise data.max_seq_len, shorten the "
                               "row, or set data.truncate=true to cut such rows")
            truncated += 1
            if data.format == "classification":  # the class stays on the last token kept
                ex = {"input_ids": ex["input_ids"][:data.max_seq_len],
                      "labels": [IGNORE_INDEX] * (data.max_seq_len - 1) + ex["labels"][-1:]}
            else:
                ex = {"input_ids": ex["input_ids"][:data.max_seq_len], "labels": ex["labels"][:data.max_seq_len]}
        if label_tokens(ex) == 0:
            dropped += 1
            continue
        kept.append(ex)
    return kept, {"truncated": truncated, "dropped": dropped}


def tokenize_rows(rows: list[dict], tokenizer, data: "DataSpec") -> list[dict]:
    """``{"input_ids", "labels"}`` per row; labels are -100 where no loss is taken.

    text: ``[bos] text [eos]`` (each when the tokenizer has it), loss on every token.
    instruction: ``[bos] prompt response eos``, loss on ``response eos`` only (prompt and
    response are encoded separately, so the boundary is exact).
    chat: ``apply_chat_template(..., return_assistant_tokens_mask=True)``, loss on the tokens
    inside the template's ``{% generation %}`` blocks only.
    Examples longer than ``data.max_seq_len`` are cut to it; examples left with no trainable
    label (e.g. a prompt longer than max_seq_len) are dropped. ``prepare_data`` reports both counts.
    """
    return _tokenize(rows, tokenizer, data)[0]


def label_tokens(row: dict) -> int:
    """Tokens this row contributes to the loss: ``labels[1:] != -100`` (the model shifts labels)."""
    return sum(1 for t in row["labels"][1:] if t != IGNORE_INDEX)


def pad_id_for(tokenizer) -> int:
    """The id collate pads with: pad_token, else eos_token, else 0 (pads carry no loss and, with
    the position_ids collate gives them, are never attended to by real tokens)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0

