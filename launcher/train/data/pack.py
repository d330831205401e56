"""Splitting and packing: ``split_train_eval`` (deterministic, seeded) and ``pack`` (greedy, into
rows of ``max_seq_len`` tokens, documents kept apart by ``position_ids``; see ``collate`` for how
a packed batch must be run).
"""
from __future__ import annotations

import random

from launcher.train.data.tokenize import IGNORE_INDEX


def split_train_eval(examples: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic split: ``round(n * eval_fraction)`` examples go to eval (at least 1 when the
    fraction is > 0 and n >= 2; never all of them). Which ones is decided by ``random.Random(seed)``;
    both parts keep the input order."""
    n = len(examples)
    k = round(n * eval_fraction) if eval_fraction > 0 else 0
    if eval_fraction > 0 and n >= 2:
        k = max(1, k)
    k = min(k, max(n - 1, 0))
    if k == 0:
        return list(examples), []
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    eval_idx = set(idx[:k])
    train = [ex for i, ex in enumerate(examples) if i not in eval_idx]
    ev = [ex for i, ex in enumerate(examples) if i in eval_idx]
    return train, ev


def pack(examples: list[dict], max_seq_len: int) -> list[dict]:
    """Greedy packing, in order, into rows of exactly ``max_seq_len`` tokens (the last row may be
    shorter; ``collate`` pads it). Every token appears exactly once.

    * ``position_ids`` restart at 0 at each document start, so transformers can find the
      boundaries (see the module docstring).
    * A document that does not fit in the space left is split: its first piece ends the row, the
      rest starts the next row with ``position_ids`` starting again at 0 (flash-attention needs
      every row to start at 0; for RoPE models only relative positions matter). The first token
      of the continuation is not trained (it would be ``labels[0]``, which the model's shift
      drops); its later tokens are trained without the earlier piece as context.
    * ``labels`` at every document start are -100: the last token of one document is never
      trained to predict the first token of the next.
    * ``n_docs``: documents that *start* in the row (so the sum over rows counts each once).
    """
    if max_seq_len < 1:
        raise ValueError("max_seq_len must be >= 1")
    rows: list[dict] = []
    cur: dict = {"input_ids": [], "labels": [], "position_ids": [], "n_docs": 0}

    def flush() -> None:
        nonlocal cur
        if cur["input_ids"]:
            rows.append(cur)
        cur = {"input_ids": [], "labels": [], "position_ids": [], "n_docs": 0}

    for ex in examples:
        ids, labels = ex["input_ids"], ex["labels"]
        if not ids:
            continue
        start = 0
        first = True
        while start < len(ids):
            space = max_seq_len - len(cur["input_ids"])
            if space == 0:
                flush()
                space = max_seq_len
            piece = ids[start:start + space]
            plab = list(labels[start:start + space])
            if first:
                plab[0] = IGNORE_INDEX
                cur["n_docs"] += 1
                first = False
            cur["input_ids"].extend(piece)
            cur["labels"].extend(plab)
            cur["position_ids"].extend(range(len(piece)))
            start += len(piece)
    flush()
    return rows


def _unpacked(examples: list[dict]) -> list[dict]:
    return [{"input_ids": ex["input_ids"], "labels": ex["labels"],
             "position_ids": list(range(len(ex["input_ids"]))), "n_docs": 1} for ex in examples]
