"""Activation and logits memory of one micro batch on one rank: pure arithmetic on the model's
shape (docs/memory.md gives the derivation and its sources).

Method: Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
section 4) count, per layer and token, the bytes of every tensor autograd keeps for the backward
pass (their GPT layer: ``34 h + 5 a s`` bytes in 16-bit, no tensor parallelism). We apply the same
count to the Hugging Face Llama layer as it runs under launcher (RMSNorm upcast to fp32, rotary
embeddings, SwiGLU MLP, grouped-query attention through SDPA or FlashAttention, no dropout):

* RMSNorm: ``x.float()`` (4 h) kept by ``pow`` and the multiply, ``rsqrt`` (4), and the normalised
  ``y`` in the compute dtype (b h) kept for the weight's gradient when the weight trains.
* The norm's output ``z`` (b h) kept by the projections that read it, once (full fine-tuning)
  or by each LoRA-targeted projection's dropout (b h output + h mask bytes each; one shared copy
  when LoRA dropout is 0). A frozen, untargeted projection keeps nothing (its weight needs no
  gradient, so autograd saves no input), except under DeepSpeed ZeRO-3, whose linear
  (``LinearFunctionForZeroStage3``, ``memory_efficient_linear``) saves every input: there each
  projection's input is kept once more for the frozen base layer.
* Attention: q after rotary (b a d), k and v (b kv d each; repeated to ``a`` heads when the
  kernel gets a mask, as transformers' ``repeat_kv`` does), the output (b a d) and the
  log-sum-exp (4 a); ``o_proj`` reads a contiguous copy of the output (kept like ``z``). ``eager`` attention also keeps the fp32 softmax and its cast (6 a s).
  The block-diagonal (packed) or padding mask, ``micro x s x s`` bools, is one tensor per forward.
* SwiGLU MLP: gate output g, ``silu(g)``, up output u and their product (b I each; the product
  through a LoRA dropout when ``down_proj`` is targeted).

With activation checkpointing (one checkpoint per decoder layer, as
``gradient_checkpointing_enable`` does) a layer keeps only its input (b h per token) and the
backward recomputes one layer at a time. Both ways we add one layer's worth for the gradients of
the layer being back-propagated.

Logits: the LM head writes ``tokens x vocab`` in the compute dtype. The loss
(``launcher/train/loss.py``) is taken in pieces of ``LOSS_CHUNK_TOKENS`` positions of one row
by one autograd function, so fp32 exists for one piece at a time, forward and backward: its
upcast and softmax (2 x 4 bytes x vocab x piece). The backward writes the logits' gradient into
one tensor of their size and dtype: two logits-sized tensors in the compute dtype at the peak.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from launcher.plan.types import ModelInfo

LOSS_CHUNK_TOKENS = 256  # tokens per fp32 cross-entropy piece (the trainer's): 128 MiB at vocab 128k
_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ActivationInputs:
    bytes_per_value: int  # the compute dtype: 2 (bf16, fp16) or 4 (fp32)
    micro_batch_size: int
    seq_len: int
    checkpointing: bool
    attn: str  # sdpa | eager | flash_attention_2
    packed: bool
    full: bool  # full fine-tuning (every weight trains) or LoRA
    lora_targets: tuple[str, ...] = ()  # the Llama projections LoRA targets
    lora_dropout: float = 0.0
    lora_r: int = 0
    # every projection keeps its input, frozen or not: DeepSpeed ZeRO-3 replaces
    # ``torch.nn.functional.linear`` with ``LinearFunctionForZeroStage3`` (``memory_efficient_linear``,
    # on by default), whose ``save_for_backward`` saves the input whatever needs a gradient
    frozen_keep_input: bool = False


def lora_targets(target_modules) -> tuple[str, ...]:
    """The Llama projections a LoRA ``target_modules`` setting reaches ("all-linear": all seven;
    peft leaves the LM head out)."""
    if target_modules == "all-linear":
        return _LINEARS
    return tuple(n for n in _LINEARS if n in set(target_modules))


def _heads(info: ModelInfo) -> tuple[int, int, int]:
    a = info.n_heads or max(1, info.hidden_size // 64)
    d = info.head_dim or info.hidden_size // a
    kv = info.n_kv_heads or a
    return a, kv, d


def _kept_input(x: ActivationInputs, in_dim: int, readers: tuple[str, ...]) -> tuple[int, str]:
    """Bytes per token kept of a tensor that ``readers`` (projections) take as input."""
    b = x.bytes_per_value
    if x.full:
        return b * in_dim, f"{b}x{in_dim}"
    hit = [r for r in readers if r in x.lora_targets]
    base = b * in_dim if x.frozen_keep_input else 0  # the frozen base layer's copy (ZeRO-3 linear)
    base_s = f"{b}x{in_dim} (ZeRO-3 linear)"
    if not hit:
        return base, base_s if base else "0"
    if x.lora_dropout > 0:  # each targeted projection has its own dropout: output + bool mask
        dropout_s = f"{len(hit)}x({b}+1)x{in_dim}"
        return base + len(hit) * (b + 1) * in_dim, f"{base_s} + {dropout_s}" if base else dropout_s
    return b * in_dim, f"{b}x{in_dim}"  # the dropout-free adapters read the base layer's input


def layer_bytes_per_token(info: ModelInfo, x: ActivationInputs) -> tuple[int, str]:
    """Bytes kept for the backward by one decoder layer per token, and the sum written out."""
    h, b, s = info.hidden_size, x.bytes_per_value, x.seq_len
    inter = info.intermediate_size or 4 * h
    a, kv, d = _heads(info)
    masked = x.attn != "flash_attention_2"  # sdpa and eager get a padding or block-diagonal mask
    kv_kept = a if (masked and kv != a) else kv
    norm = 4 * h + 4 + (b * h if x.full else 0)
    z_attn, z_attn_s = _kept_input(x, h, ("q_proj", "k_proj", "v_proj"))
    attn = b * a * d + 2 * b * kv_kept * d + b * a * d + 4 * a
    # o_proj reads a contiguous copy of the attention output (transpose + contiguous), not the
    # tensor SDPA keeps
    o_extra, o_extra_s = _kept_input(x, a * d, ("o_proj",))
    if x.attn == "eager":
        attn += 6 * a * s
    z_mlp, z_mlp_s = _kept_input(x, h, ("gate_proj", "up_proj"))
    mlp = 3 * b * inter  # g, silu(g), u
    p_in, p_in_s = _kept_input(x, inter, ("down_proj",))
    lora_a = 0
    if not x.full and x.lora_r:
        lora_a = b * x.lora_r * len(x.lora_targets)  # each lora_A output, kept by lora_B
    total = 2 * norm + z_attn + attn + o_extra + z_mlp + mlp + p_in + lora_a
    eager = f" + 6x{a}x{s} (eager softmax)" if x.attn == "eager" else ""
    text = (f"2 norms x ({'4x' + str(h) + ' + 4' + (f' + {b}x{h}' if x.full else '')}) + q/k/v input {z_attn_s} "
            f"+ attention {b}x({a}x{d} + 2x{kv_kept}x{d} + {a}x{d}) + 4x{a}{eager} + o_proj input {o_extra_s} "
            f"+ gate/up input {z_mlp_s} + MLP 3x{b}x{inter} + down input {p_in_s}"
            + (f" + lora_A outputs {b}x{x.lora_r}x{len(x.lora_targets)}" if lora_a else "") + f" = {total}")
    return total, text


@dataclass(frozen=True)
class ActivationEstimate:
    activations: int
    logits: int
    per_layer_per_token: int
    formulas: tuple[str, ...]


def estimate_activations(info: ModelInfo, x: ActivationInputs, chunk_tokens: Optional[int] = None) -> ActivationEstimate:
    """Activation and logits bytes of one micro batch (``micro x seq_len`` tokens) on one rank."""
    tokens = x.micro_batch_size * x.seq_len
    h, b, L, V = info.hidden_size, x.bytes_per_value, info.n_layers, info.vocab_size
    per_layer, layer_text = layer_bytes_per_token(info, x)
    final_norm = 4 * h + 4 + (b * h if x.full else 0) + (b * h if x.full else 0)  # + the LM head's input
    rope = 2 * b * (info.head_dim or h // (info.n_heads or 1))  # cos and sin, shared by the layers
    mask = x.micro_batch_size * x.seq_len * x.seq_len if x.attn != "flash_attention_2" else 0
    if x.checkpointing:
        kept = L * b * h * tokens + 2 * per_layer * tokens
        how = (f"checkpointing: {L} layer inputs x {b}x{h} x {tokens} tokens + 2 layers (the one recomputed "
               f"and the gradients of its activations) x {per_layer} x {tokens}")
    else:
        kept = (L + 1) * per_layer * tokens
        how = f"({L} layers + 1 for the gradients of the layer in backward) x {per_layer} x {tokens} tokens"
    activations = kept + (final_norm + rope) * tokens + mask
    chunk = min(x.seq_len, chunk_tokens or LOSS_CHUNK_TOKENS)
    if info.task == "classification":  # the head scores every token, then one row's pooled logits are kept
        C = info.num_labels or 2
        logits = 2 * b * C * tokens
        logits_text = (f"logits = 2 (the head's scores and their gradient) x {b} x {C} labels x {tokens} tokens "
                       f"(no LM head) = {logits:,} bytes")
    else:
        logits = 2 * b * V * tokens + 2 * 4 * V * chunk
        logits_text = (f"logits = 2 (the logits and their gradient) x {b} x vocab {V} x {tokens} tokens "
                       f"+ 2 x 4 x {V} x {chunk} (one fp32 loss piece: upcast, softmax) = {logits:,} bytes")
    formulas = (
        f"activations per layer per token: {layer_text} bytes",
        f"activations = {how} + final norm and rotary {final_norm + rope} x {tokens}"
        + (f" + mask {x.micro_batch_size}x{x.seq_len}x{x.seq_len}" if mask else "") + f" = {activations:,} bytes",
        logits_text,
    )
    return ActivationEstimate(activations=activations, logits=logits, per_layer_per_token=per_layer,
                              formulas=formulas)
