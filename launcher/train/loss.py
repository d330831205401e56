"""The loss the loop normalises: summed next-token cross-entropy (or, for classification, one
cross-entropy per row), and the label counts it is divided by (the label tokens of the whole
global batch, so every layout takes the same step; a classification row has one label)."""
from __future__ import annotations

from typing import Any


from launcher.plan.activations import LOSS_CHUNK_TOKENS as CHUNK_TOKENS  # the plan counts one fp32 piece


def _pieces(shape, chunk: int):
    """(row, first position, last position + 1) of each piece; position t predicts label t+1."""
    length = shape[1] - 1
    for b in range(shape[0]):
        for t0 in range(0, length, chunk):
            yield b, t0, min(t0 + chunk, length)


def _chunked_cross_entropy():
    import torch
    import torch.nn.functional as F

    class ChunkedCrossEntropy(torch.autograd.Function):
        """Summed next-token cross-entropy, one piece of the logits in fp32 at a time, forward and
        backward; the gradient is written into one tensor of the logits' size and dtype."""

        @staticmethod
        def forward(ctx, logits, labels, chunk: int):
            total = torch.zeros((), dtype=torch.float32, device=logits.device)
            for b, t0, t1 in _pieces(logits.shape, chunk):
                total += F.cross_entropy(logits[b, t0:t1].float(), labels[b, t0 + 1:t1 + 1], ignore_index=-100,
                                         reduction="sum")
            ctx.save_for_backward(logits, labels)
            ctx.chunk = chunk
            return total

        @staticmethod
        def backward(ctx, grad_out):
            logits, labels = ctx.saved_tensors
            grad = torch.zeros_like(logits)
            for b, t0, t1 in _pieces(logits.shape, ctx.chunk):
                g = torch.softmax(logits[b, t0:t1].float(), dim=-1)  # d(sum CE)/d logits = softmax - one-hot
                target = labels[b, t0 + 1:t1 + 1]
                keep = target != -100
                rows = torch.arange(g.size(0), device=g.device)[keep]
                g[rows, target[keep]] -= 1.0
                g[~keep] = 0.0
                grad[b, t0:t1] = (g * grad_out).to(grad.dtype)
            return grad, None, None

    return ChunkedCrossEntropy


_CE = None


def token_loss_sum(logits, labels, chunk_tokens: int = CHUNK_TOKENS):
    """Sum of next-token cross-entropy over label tokens (HF's shift: logits[t] predicts labels[t+1]).

    Computed in pieces of ``chunk_tokens`` positions of one row, forward and backward: the fp32
    copy of the logits (and the softmax the backward needs) exists for one piece at a time, never
    for the whole [tokens x vocab] tensor (vocab 128k x 4096 tokens would be 2 GiB per micro-batch
    in fp32), and the backward writes one gradient of the logits' size. The sum equals the
    whole-tensor loss up to the order of floating-point additions (tests/unit/test_loss.py)."""
    global _CE
    if _CE is None:
        _CE = _chunked_cross_entropy()
    return _CE.apply(logits, labels.to(logits.device), chunk_tokens)


def class_targets(labels):
    """The class of each row of a classification batch: the one label that is not -100 (on the
    row's last token)."""
    return labels.max(dim=1).values


def class_loss_sum(logits, labels):
    """Summed cross-entropy of the pooled class logits ``[batch, num_labels]`` (fp32)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.float(), class_targets(labels).to(logits.device), reduction="sum")


def loss_sum(logits, labels, task: str = "causal_lm"):
    """The summed loss the loop normalises by the label count: next-token cross-entropy over
    the label tokens (causal_lm), or one cross-entropy per row (classification: one label each)."""
    if task == "classification":
        return class_loss_sum(logits, labels)
    return token_loss_sum(logits, labels)


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
