"""Building the model a rank trains: transformers weights, LoRA adapters, activation
checkpointing. The strategy (FSDP2 or ZeRO) then wraps it."""
from __future__ import annotations

from typing import Optional

from launcher.errors import JobError


def model_class(task: str):
    """The transformers auto class of a ``train.task``."""
    if task == "classification":
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def classification_config(labels: list[str], pad_id: Optional[int]) -> dict:
    """What a classification model's config gets: the classes, and the pad id its last-token
    pooling looks for (decoder models)."""
    kw = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
              label2id={n: i for i, n in enumerate(labels)}, problem_type="single_label_classification")
    if pad_id is not None:
        kw["pad_token_id"] = int(pad_id)
    return kw


def build_model(plan, model_path: str, labels: Optional[list[str]] = None, pad_id: Optional[int] = None):
    """The model this rank trains, never whole in fp32 on a rank:

    * FSDP2: built on the meta device (``weights.params_on_meta``); the strategy shards it, then
      ``weights.materialize`` fills each rank's shards from the checkpoint files;
    * ZeRO-3: partitioned as it is created (transformers' ``HfDeepSpeedConfig`` turns on
      ``deepspeed.zero.Init`` inside ``from_pretrained``);
    * ZeRO 0-2: one replicated copy in the compute dtype; DeepSpeed keeps the fp32 master
      weights of what trains, in the optimizer.

    Full fine-tuning under FSDP2 keeps fp32 shards (the mixed-precision policy casts for
    compute). LoRA: frozen base weights in the compute dtype, adapters initialised in fp32 by
    ``weights.init_lora`` (the same on every layout); FSDP2 keeps them fp32, DeepSpeed holds them in
    the compute dtype with fp32 masters in its optimizer. Activation checkpointing as the job asks.

    ``train.task: classification``: ``AutoModelForSequenceClassification`` on the same folder,
    with ``labels`` (the class names in id order) and ``pad_id`` in its config; its new head
    gets :func:`weights.head_init` (a function of its name and the seed) on every layout, and
    LoRA trains and saves it (peft's ``modules_to_save``, task type SEQ_CLS)."""
    import torch
    from transformers import AutoConfig

    from launcher.train import weights

    spec = plan.job
    compute = weights.torch_dtype(spec.model.dtype)
    kw = dict(trust_remote_code=spec.model.trust_remote_code, attn_implementation=spec.model.attn_implementation)
    classify = spec.train.task == "classification"
    if classify:
        if not labels:
            raise RuntimeError("build_model: a classification job needs its labels (PreparedData.stats.labels)")
        kw.update(classification_config(labels, pad_id))
    auto = model_class(spec.train.task)
    lora = spec.train.method == "lora"
    if plan.strategy == "fsdp":
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=spec.model.trust_remote_code,
                                            **{k: v for k, v in kw.items() if k not in ("trust_remote_code",
                                                                                       "attn_implementation")})
        with weights.params_on_meta():
            model = auto.from_config(config, dtype=torch.float32, trust_remote_code=spec.model.trust_remote_code,
                                     attn_implementation=spec.model.attn_implementation)
    else:
        if plan.zero_stage == 3:
            from transformers.integrations import HfDeepSpeedConfig

            from launcher.train.strategies.zero import import_deepspeed, init_deepspeed_comm

            init_deepspeed_comm(import_deepspeed(), plan.backend)

            # transformers holds it by weak reference: it must live while from_pretrained runs
            ds_config = HfDeepSpeedConfig(dict(plan.ds_config))
        model, loading = auto.from_pretrained(model_path, dtype=compute, output_loading_info=True, **kw)
        if plan.zero_stage == 3:
            model._launcher_hf_ds_config = ds_config  # and while the engine wraps the model
        missing = sorted(loading["missing_keys"])
        new = [k for k in missing if classify and weights.is_new_head(model.base_model_prefix, k)]
        if len(new) < len(missing):
            raise weights.missing_problem(model_path, [k for k in missing if k not in new])
        if new:
            weights.init_new_params(model, new, spec.train.seed, zero3=plan.zero_stage == 3)
    model.config.use_cache = False
    if spec.train.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        from peft import get_peft_model

        from launcher.modelinfo import lora_config

        model = get_peft_model(model, lora_config(spec.train.lora, spec.train.task), autocast_adapter_dtype=True)
        if spec.train.activation_checkpointing:
            model.enable_input_require_grads()
        if plan.strategy == "fsdp":
            for p in model.parameters():
                if not p.requires_grad:
                    p.data = p.data.to(compute)  # frozen base: compute dtype (still on meta here)
        weights.init_lora(model, spec.train.seed)
        if plan.strategy == "zero":
            # DeepSpeed's module holds the compute dtype and its optimizer the fp32 masters. For
            # ZeRO 0-2 its engine casts the adapters itself; under ZeRO-3 (a zero.Init model) it
            # casts nothing, and fp32 adapters would make peft upcast each adapted layer's input
            # to fp32 and keep that copy for the backward pass.
            for p in model.parameters():
                if p.requires_grad and p.dtype != compute:
                    p.data = p.data.to(compute)
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
    """The transformer blocks to shard one by one: the classes HF lists in _no_split_modules, else
    (models that list none, such as BERT's) the blocks of the longest ModuleList of same-class
    modules (``encoder.layer``)."""
    import torch.nn as nn

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        stacks = [list(m) for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 1
                  and len({type(x) for x in m}) == 1]
        layers = max(stacks, key=len) if stacks else []
    if not layers:
        raise RuntimeError(f"{type(base).__name__}: no decoder layers found (_no_split_modules={sorted(names)})")
    return layers
