"""The chunked loss: the same sum and the same gradients as one cross-entropy over the whole
[tokens x vocab] tensor, without ever holding that tensor in fp32."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from launcher.train.loss import token_loss_sum


def whole(logits, labels):
    """Today's loss, for reference: one cross-entropy over every position, in fp32."""
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                           ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_loss_and_gradients_equal_the_whole_tensor_loss(chunk, dtype):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, 101, generator=g).to(dtype)
    labels = torch.randint(0, 101, (3, 50), generator=g)
    labels[0, :10] = -100  # a prompt: no loss there
    labels[2, 30:] = -100  # padding
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    got = token_loss_sum(a, labels, chunk_tokens=chunk)
    ref = whole(b, labels)
    assert float(got) == pytest.approx(float(ref), rel=1e-5)
    got.backward()
    ref.backward()
    assert torch.allclose(a.grad.float(), b.grad.float(), rtol=1e-5, atol=1e-6)


def test_no_grad_and_all_ignored():
    logits = torch.randn(2, 5, 11)
    labels = torch.full((2, 5), -100)
    with torch.no_grad():
        assert float(token_loss_sum(logits, labels, chunk_tokens=2)) == 0.0
    one = torch.randn(1, 1, 11, requires_grad=True)  # a single position predicts nothing
    assert float(token_loss_sum(one, torch.zeros(1, 1, dtype=torch.long))) == 0.0
