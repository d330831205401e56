"""Building the model a rank trains: transformers weights, LoRA adapters, activation
checkpointing. The strategy (FSDP2 or ZeRO) then wraps it."""
from __future__ import annotations

from launcher.errors import JobError


def build_model(spec, model_path: str):
    """transformers model (fp32 master weights; the strategy applies the compute dtype), with
    LoRA adapters and activation checkpointing as the job asks."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.float32, trust_remote_code=spec.model.trust_remote_code,
        attn_implementation="sdpa",
    )
    model.config.use_cache = False
    if spec.train.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.train.method == "lora":
        from peft import get_peft_model

        from launcher.modelinfo import lora_config

        model = get_peft_model(model, lora_config(spec.train.lora))
        if spec.train.activation_checkpointing:
            model.enable_input_require_grads()
    return model


def check_packing(model, micro_batch_size: int, packed: bool) -> None:
    """A packed run must keep its documents apart: refuse attention that cannot."""
    if not packed:
        return
    from launcher.train.data import packed_attention_supported

    if not packed_attention_supported(model, micro_batch_size):
        raise JobError(f"data.packing: this model's attention ({model.config._attn_implementation}) cannot keep "
                       f"packed documents apart at micro batch {micro_batch_size}; set data.packing=false")


def decoder_layers(model) -> list:
    """The transformer blocks to shard one by one: the classes HF lists in _no_split_modules."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise RuntimeError(f"{type(base).__name__}: no decoder layers found (_no_split_modules={sorted(names)})")
    return layers
