"""What a model is without its weights: its shape from ``config.json`` and the exact parameter
counts of the model built on the meta device (no memory, no download).

This is the one parameter counter: the plan counts the meta model, the trainer counts its real
model with :func:`count_params`, and both use the same LoRA config (:func:`lora_config`), so the
plan, the start record and the report agree. torch, transformers and peft are imported when a
function runs, never at import.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

from launcher.errors import JobError

COUNT_VERSION = 2  # bump when what a ModelInfo counts changes: cached counts then miss


class ModelInfo(BaseModel):
    """What the plan knows of a model without its weights: the shape from ``config.json`` and the
    exact parameter counts of the model built on the meta device (below). The plan holds one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_params: int  # the base model's parameters (LoRA adapters not included)
    n_trainable_params: Optional[int] = None  # for the job's method (LoRA: the adapters alone)
    hidden_size: int
    n_layers: int
    vocab_size: int
    n_heads: Optional[int] = None
    n_kv_heads: Optional[int] = None
    head_dim: Optional[int] = None
    intermediate_size: Optional[int] = None
    tie_word_embeddings: bool = False
    max_position_embeddings: Optional[int] = None
    architecture: str = "unknown"
    task: str = "causal_lm"  # classification: a head of num_labels outputs instead of the LM head
    num_labels: Optional[int] = None
    # modules holding parameters of their own, adapters included (LoRA's A and B are two each): what
    # ZeRO-3 fetches one by one, twice a micro step (launcher.plan.calibration.module_fetches)
    n_param_modules: Optional[int] = None


# A classification job's classes before its data is read (data.labels unset): the plan counts a
# two-class head (hidden_size x 2 parameters: the count moves by hidden_size per extra class).
PLAN_NUM_LABELS = 2


def job_num_labels(spec: Any) -> Optional[int]:
    """The classes the plan counts for a job: None for causal LM."""
    if spec.train.task != "classification":
        return None
    if spec.data.labels:
        return len(spec.data.labels)
    from launcher.demo.assets import DEMO_CLASSIFICATION_DATA, DEMO_PREFIX, TOPIC_WORDS

    if spec.data.path == DEMO_PREFIX + DEMO_CLASSIFICATION_DATA:  # the demo's classes are known
        return len(TOPIC_WORDS)
    return PLAN_NUM_LABELS


def lora_config(lora: Any, task: str = "causal_lm"):
    """peft's ``LoraConfig`` for a job's ``train.lora`` (a LoraSpec). Classification: task type
    SEQ_CLS, so that peft trains and saves the new head whole (``modules_to_save``: score,
    classifier) and keeps adapters off it."""
    from peft import LoraConfig

    target = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=target,
                      task_type="SEQ_CLS" if task == "classification" else "CAUSAL_LM")


def _numel(p: Any) -> int:
    # ZeRO-3 partitions parameters as they are created: the full size is ds_numel. A DTensor
    # (FSDP2) reports its global size.
    return int(getattr(p, "ds_numel", 0) or p.numel())


def count_params(module: Any) -> tuple[int, int]:
    """(all parameters, trainable parameters) of a module: whole, sharded or on the meta device."""
    total = trainable = 0
    for p in module.parameters():
        n = _numel(p)
        total += n
        if p.requires_grad:
            trainable += n
    return total, trainable


def param_modules(module: Any) -> int:
    """How many of ``module``'s submodules hold parameters of their own."""
    return sum(1 for m in module.modules() if next(m.parameters(recurse=False), None) is not None)


def _from_config_object(cfg: Any, method: str, lora: Any, trust_remote_code: bool,
                        num_labels: Optional[int] = None) -> ModelInfo:
    import torch

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from launcher.quiet import libraries_quiet

    task = "classification" if num_labels else "causal_lm"
    auto = AutoModelForSequenceClassification if num_labels else AutoModelForCausalLM
    if num_labels:
        cfg.num_labels = num_labels

    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # transformers' model code imports DeepSpeed where it is installed, whose logger prints
            # to stdout (its accelerator detection): not into `plan --json`
            with torch.device("meta"), libraries_quiet():
                model = auto.from_config(cfg, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - an unknown or broken config, said in one line
        kind = "a sequence classifier" if num_labels else "a causal LM"
        raise JobError(f"model config: transformers cannot build {kind} from it "
                       f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    n_params, _ = count_params(model)
    n_trainable = n_params
    counted = model
    if method == "lora" and lora is not None:
        from peft import get_peft_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            counted = get_peft_model(model, lora_config(lora, task))
        _, n_trainable = count_params(counted)  # n_params stays the base model's

    def get(name: str, default: Any = None) -> Any:
        v = getattr(text, name, None)
        return default if v is None else v

    hidden = int(get("hidden_size"))
    heads = get("num_attention_heads")
    arch = type(model).__name__ if num_labels else (getattr(cfg, "architectures", None) or [type(model).__name__])[0]
    return ModelInfo(
        n_params=n_params, n_trainable_params=n_trainable, hidden_size=hidden,
        n_layers=int(get("num_hidden_layers")), vocab_size=int(get("vocab_size")),
        n_heads=heads, n_kv_heads=get("num_key_value_heads", heads),
        head_dim=get("head_dim") or (hidden // heads if heads else None),
        intermediate_size=get("intermediate_size"),
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        max_position_embeddings=get("max_position_embeddings"), architecture=arch,
        task=task, num_labels=num_labels, n_param_modules=param_modules(counted),
    )


def read_model_info(config: dict, method: str = "full", lora: Any = None, source: str = "model config",
                    num_labels: Optional[int] = None) -> ModelInfo:
    """ModelInfo from a config.json's content (a dict with ``model_type``)."""
    from transformers import AutoConfig

    cfg = dict(config)
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise JobError(f"{source}: no model_type; is this a causal LM's config.json?")
    for key in ("transformers_version", "architectures", "auto_map"):
        cfg.pop(key, None)
    try:
        obj = AutoConfig.for_model(model_type, **cfg)
    except Exception as e:  # noqa: BLE001
        raise JobError(f"{source}: transformers does not know model_type {model_type!r} "
                       f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if config.get("architectures"):
        obj.architectures = list(config["architectures"])
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        if getattr(obj.get_text_config() if hasattr(obj, "get_text_config") else obj, key, None) is None:
            raise JobError(f"{source}: missing field {key!r}; is this a causal LM's config.json?")
    return _from_config_object(obj, method, lora, trust_remote_code=False, num_labels=num_labels)


def read_model_info_from_folder(folder: str, method: str = "full", lora: Any = None,
                                trust_remote_code: bool = False, num_labels: Optional[int] = None) -> ModelInfo:
    """ModelInfo from a model folder (its config.json; remote code allowed when the job allows it)."""
    from transformers import AutoConfig

    try:
        obj = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise JobError(f"{folder}/config.json: cannot be read as a model config "
                       f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return _from_config_object(obj, method, lora, trust_remote_code, num_labels)


def _cache_path(spec: Any, config: dict) -> Optional[Path]:
    """Where a counted ModelInfo is kept: counting builds the model on the meta device (seconds,
    and torch imported), so `launcher plan` counts each config once. Not for remote code."""
    if spec.model.trust_remote_code:
        return None
    try:
        from importlib.metadata import version

        versions = [version("transformers"), version("peft")]
    except Exception:  # noqa: BLE001
        return None
    from launcher.fs import user_cache_dir

    key = json.dumps({"config": config, "method": spec.train.method,
                      "lora": spec.train.lora.model_dump(mode="json"), "versions": versions,
                      "num_labels": job_num_labels(spec),
                      "schema": sorted(ModelInfo.model_fields), "count_version": COUNT_VERSION}, sort_keys=True)
    return user_cache_dir() / "modelinfo" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def job_model_info(spec: Any, config_source: Optional[Any]) -> Optional[ModelInfo]:
    """ModelInfo of a job's model, counted for its method: ``config_source`` is a config dict
    (demo model) or a folder holding config.json; None (unknown) gives None."""
    if config_source is None:
        return None
    config = config_source if isinstance(config_source, dict) else \
        json.loads((Path(config_source) / "config.json").read_text())
    cache = _cache_path(spec, config)
    if cache is not None and cache.is_file():
        try:
            return ModelInfo.model_validate_json(cache.read_text())
        except ValueError:
            pass  # a damaged or foreign file: count again
    if isinstance(config_source, dict):
        info = read_model_info(config_source, spec.train.method, spec.train.lora,
                               num_labels=job_num_labels(spec))
    else:
        info = read_model_info_from_folder(str(config_source), spec.train.method, spec.train.lora,
                                           spec.model.trust_remote_code, job_num_labels(spec))
    if cache is not None:
        from launcher.fs import write_atomic

        try:
            write_atomic(cache, info.model_dump_json())
        except OSError:
            pass  # a read-only cache only costs the next plan a recount
    return info
