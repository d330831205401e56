"""Batches: ``collate`` pads rows into tensors; ``packed_attention_supported`` says whether a model
keeps packed documents apart.

Packed attention (checked on transformers 5.x, see ``packed_attention_supported``): a packed
batch must be run with ``attention_mask=None``, the packed ``position_ids`` and
``use_cache=False``. transformers then finds the document boundaries in ``position_ids``
(``masking_utils.find_packed_sequence_indices``) and builds a block-diagonal causal mask for the
``eager``, ``sdpa`` and ``flex_attention`` implementations. With ``use_cache`` left at the config
default (True for Llama) the model creates a ``DynamicCache`` even in training and the packing
detection is skipped: documents silently attend to each other. ``flash_attention_2/3`` read the
boundaries from ``position_ids`` only when the batch has a single row.

torch and transformers are imported inside functions: importing this module is cheap.
"""
from __future__ import annotations

from typing import Any, Optional

from launcher.facts.packing import packing_problem
from launcher.train.data.tokenize import IGNORE_INDEX



def collate(rows: list[dict], pad_id: int, pad_to: Optional[int] = None) -> dict:
    """Right-pad ``rows`` to the longest row (or ``pad_to``) into torch tensors.

    Returns ``input_ids``, ``labels`` (-100 on padding), ``position_ids``, ``attention_mask``
    (1 real / 0 pad), all LongTensor [batch, length], and Python ints ``n_tokens`` (real
    tokens), ``n_padding``, ``n_label_tokens`` (``labels[:, 1:] != -100``, what the shifted loss
    counts), ``n_docs`` and ``packed`` (bool: some row holds more than one document).

    When ``packed`` is True, call the model with ``attention_mask=None`` (and ``use_cache=False``):
    passing the mask turns off transformers' packed-sequence detection and documents attend to
    each other.

    Padding gets ``position_ids`` 0, 1, 2, ...: a separate pseudo-document. So the batch is
    correct both with ``attention_mask`` (unpacked rows) and with ``attention_mask=None``
    (padding is then its own document that no real token attends to; eager/sdpa/flex only).
    """
    import torch

    if not rows:
        raise ValueError("collate: empty batch")
    longest = max(len(r["input_ids"]) for r in rows)
    length = longest if pad_to is None else pad_to
    if longest > length:
        raise ValueError(f"collate: a row has {longest} tokens, more than pad_to={pad_to}")
    b = len(rows)
    input_ids = torch.full((b, length), int(pad_id), dtype=torch.long)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((b, length), dtype=torch.long)
    attention_mask = torch.zeros((b, length), dtype=torch.long)
    n_tokens = 0
    n_docs = 0
    packed = False
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        n_tokens += n
        n_docs += int(r.get("n_docs", 1))
        input_ids[i, :n] = torch.tensor(r["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.tensor(r["labels"], dtype=torch.long)
        pos = r.get("position_ids")
        if pos is not None:
            position_ids[i, :n] = torch.tensor(pos, dtype=torch.long)
            packed = packed or (n > 1 and 0 in pos[1:])
        else:
            position_ids[i, :n] = torch.arange(n)
        if n < length:
            position_ids[i, n:] = torch.arange(length - n)
        attention_mask[i, :n] = 1
    n_label_tokens = int((labels[:, 1:] != IGNORE_INDEX).sum().item())
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "attention_mask": attention_mask,
        "n_tokens": n_tokens,
        "n_padding": b * length - n_tokens,
        "n_label_tokens": n_label_tokens,
        "n_docs": n_docs,
        "packed": packed,
    }


def packed_attention_supported(model: Any, micro_batch_size: int = 1) -> bool:
    """Whether ``model`` keeps packed documents apart given ``position_ids`` and
    ``attention_mask=None`` (call it with ``use_cache=False``): :func:`packing_problem` of the
    attention the model was built with. Works on PEFT / DeepSpeed wrappers (follows ``.module``,
    ``.base_model``, ``.model`` to find ``.config``). A static check: it runs no forward."""
    config = _find_config(model)
    if config is None:
        return False
    impl = getattr(config, "_attn_implementation", None) or "eager"
    return packing_problem(impl, micro_batch_size) is None


def _find_config(model: Any):
    seen = 0
    while model is not None and seen < 6:
        cfg = getattr(model, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            return cfg
        model = getattr(model, "module", None) or getattr(model, "base_model", None) \
            or getattr(model, "model", None)
        seen += 1
    return None

