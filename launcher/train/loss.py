"""The loss the loop normalises: summed next-token cross-entropy, and the label counts it is
divided by (the label tokens of the whole global batch, so every layout takes the same step)."""
from __future__ import annotations

from typing import Any


def token_loss_sum(logits, labels):
    """Sum of next-token cross-entropy over label tokens (HF's shift: logits[t] predicts labels[t+1])."""
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=-100, reduction="sum")


def label_count(rows) -> int:
    """Tokens the loss is taken on in ``rows`` (``labels[1:] != -100``: the model shifts labels)."""
    from launcher.train.data import label_tokens

    return sum(label_tokens(r) for r in rows)


def model_inputs(batch: dict, device: Any) -> dict:
    """What the model is called with. A packed batch goes without attention_mask, so that
    transformers finds the documents in position_ids (see launcher.train.data)."""
    out = {"input_ids": batch["input_ids"].to(device), "position_ids": batch["position_ids"].to(device)}
    if not batch.get("packed", False):
        out["attention_mask"] = batch["attention_mask"].to(device)
    return out
