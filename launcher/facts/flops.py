"""Model FLOPs per trained token: the numerator of MFU. Pure arithmetic, no torch.

Convention (stated once, used everywhere in the report)
------------------------------------------------------
*Model* FLOPs, as in MFU (PaLM, Chowdhery et al. 2022, appendix B; Megatron-LM, Narayanan et al.
2021): the FLOPs the model needs per token, whatever the implementation actually executes.
Activation checkpointing recompute, padding, and optimizer math are *not* counted (counting
recompute gives HFU, not MFU). One multiply-add = 2 FLOPs.

* ``N`` = the parameters that take part in a matmul per token: every parameter **except the
  input embedding table**, because the embedding lookup is a gather, not a matmul. When the
  input embedding is tied to the LM head (``tie_word_embeddings``), the shared matrix *is* used
  in a matmul (the head), so it stays in ``N``. Norm weights and biases are kept (they are a
  rounding error and the usual formulas keep them). Learned absolute position tables (GPT-2
  style) are not subtracted either; the Llama-family models this tool targets use rotary.

* Dense matmuls, full fine-tuning: forward ``2N``, backward ``4N`` (``2N`` for the gradients of
  the activations, ``2N`` for those of the weights) -> ``6N`` per token.

* Attention scores and the weighted sum (``QK^T`` and ``AV``), which have no parameters:
  forward ``2 * 2 * n_layers * hidden * seq_len`` per token, times 3 with the backward ->
  ``12 * n_layers * hidden * seq_len``. This is PaLM's ``12 L H Q T`` term **without halving
  for the causal mask** (the kernels compute, or at least pay for, the full square in most
  implementations, and PaLM/Megatron/nanoGPT all quote it this way). So our MFU is comparable
  with theirs; it is up to ~2x generous on the attention part versus a "useful causal FLOPs"
  count, which matters only when ``seq_len`` is large relative to ``6N / (12 L h)``.

* LoRA (``method="lora"``): the frozen base still runs its forward (``2 N_frozen``) and must
  propagate activation gradients through every layer down to the first adapter
  (``2 N_frozen``), but computes no weight gradients for itself. The adapters are trained as
  usual (``6 n_trainable``). Attention still needs its forward and both backward matmuls
  (activation gradients flow through it): the same ``12 L h s``. With
  ``N_frozen = N - n_trainable``:

      flops/token = 4 * (N - n_trainable) + 6 * n_trainable + 12 * L * h * s

  (``N`` counts the adapter weights too, as ``model.parameters()`` of a PEFT model does.)
"""
from __future__ import annotations

from typing import Any, Mapping, Optional


def attention_flops_per_token(n_layers: int, hidden: int, seq_len: int) -> float:
    """Forward + backward FLOPs of ``QK^T`` and ``AV`` per token: ``12 * L * h * s`` (no causal halving)."""
    return 12.0 * n_layers * hidden * seq_len


def model_flops_per_token(
    n_params: int,
    n_layers: int,
    hidden: int,
    seq_len: int,
    n_trainable: Optional[int] = None,
    method: str = "full",
) -> float:
    """Training FLOPs per token (see the module docstring for the convention).

    ``n_params`` is ``N``: the matmul parameters, i.e. all parameters less the input embedding
    table (use :func:`flops_per_token_from_config` to get it from a total count).
    ``n_trainable`` is needed for ``method="lora"``: the adapter parameters.

    full: ``6 N + 12 L h s``;  lora: ``4 (N - n_trainable) + 6 n_trainable + 12 L h s``.
    """
    if n_params < 0 or n_layers < 0 or hidden < 0 or seq_len < 0:
        raise ValueError("n_params, n_layers, hidden and seq_len must be >= 0")
    attn = attention_flops_per_token(n_layers, hidden, seq_len)
    if method == "full":
        return 6.0 * n_params + attn
    if method == "lora":
        if n_trainable is None:
            raise ValueError("method='lora' needs n_trainable (the adapter parameter count)")
        if not 0 <= n_trainable <= n_params:
            raise ValueError(f"n_trainable must be in [0, n_params={n_params}], got {n_trainable}")
        frozen = n_params - n_trainable
        return 4.0 * frozen + 6.0 * n_trainable + attn
    raise ValueError(f"method must be 'full' or 'lora', got {method!r}")


def _cfg(config: Mapping[str, Any], *names: str) -> Any:
    """First present key among ``names``, looking into ``text_config`` too (multimodal configs)."""
    for src in (config, config.get("text_config") or {}):
        for n in names:
            if src.get(n) is not None:
                return src[n]
    return None


def matmul_params(config: Mapping[str, Any], n_params: int) -> int:
    """``N`` from a total parameter count: less the input embedding table unless it is tied
    to the LM head (then the head matmul uses it)."""
    vocab = _cfg(config, "vocab_size")
    hidden = _cfg(config, "hidden_size", "n_embd", "d_model")
    # config.to_dict() always carries the key; for a hand-made dict without it we assume
    # untied (Llama's default), i.e. the table is subtracted.
    tied = bool(_cfg(config, "tie_word_embeddings"))
    if vocab and hidden and not tied:
        return max(int(n_params) - int(vocab) * int(hidden), 0)
    return int(n_params)


def flops_per_token_from_config(
    config_dict: Mapping[str, Any],
    seq_len: int,
    n_params: int,
    n_trainable: Optional[int] = None,
    method: str = "full",
) -> float:
    """Training FLOPs per token for a Hugging Face config dict (``model.config.to_dict()``).

    ``n_params`` is the *total* parameter count (``sum(p.numel() for p in model.parameters())``,
    adapters included for LoRA); the input embedding table (``vocab_size * hidden_size``) is
    subtracted here unless the embeddings are tied. Layers and width come from
    ``num_hidden_layers``/``hidden_size`` (GPT-2 style ``n_layer``/``n_embd`` also accepted).
    """
    n_layers = _cfg(config_dict, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _cfg(config_dict, "hidden_size", "n_embd", "d_model")
    if n_layers is None or hidden is None:
        raise ValueError("config needs num_hidden_layers and hidden_size")
    n = matmul_params(config_dict, n_params)
    if method == "lora" and n_trainable is not None:
        n_trainable = min(int(n_trainable), n)
    return model_flops_per_token(n, int(n_layers), int(hidden), int(seq_len), n_trainable, method)
