"""Weights on every rank without a whole copy of the model on any of them.

* FSDP2: the model is built with its parameters on the meta device (buffers such as rotary
  frequencies stay real), sharded with ``fully_shard``, and only then given storage: each rank
  reads the slices of its own shards from the checkpoint files (safetensors are memory-mapped,
  so a rank reads only what it keeps) — :func:`materialize`.
* LoRA adapters get their initial values from :func:`lora_init`, a function of the parameter's
  name and the job's seed, not of the global RNG stream: FSDP2 (which creates them on the meta
  device), ZeRO and a single process all start from the same adapters, so their loss curves can
  be compared step for step.
"""
from __future__ import annotations

import json
import math
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from launcher.errors import JobError

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"
TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def torch_dtype(name: str):
    import torch

    return getattr(torch, TORCH_DTYPES.get(name, name))


@contextmanager
def params_on_meta():
    """Parameters created inside go to the meta device (no storage); buffers stay where they are
    made, so non-persistent ones (rotary ``inv_freq``) keep their computed values."""
    import torch.nn as nn

    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            p = module._parameters[name]
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def checkpoint_key(param_name: str) -> str:
    """The checkpoint's name of a parameter of the (peft-wrapped) model: a head peft trains whole
    (``modules_to_save``) and its frozen original are the same tensor of the checkpoint."""
    name = param_name
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    return name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".").replace(
        ".original_module.", ".")


HEAD_STD = 0.02  # transformers' default initializer_range


def head_init(key: str, shape, seed: int, std: float = HEAD_STD):
    """The initial value of a parameter the checkpoint does not have (a classification head:
    ``score.weight``, ``classifier.weight``/``.bias``), as transformers' ``_init_weights`` makes
    it (weights normal(0, initializer_range), biases zero), drawn from a generator seeded by the
    job's seed and the parameter's checkpoint name: the same head on every layout."""
    import torch

    full = torch.zeros(tuple(shape), dtype=torch.float32)
    if not key.endswith("bias"):
        g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(("head:" + key).encode())) % (2**63))
        full.normal_(0.0, std, generator=g)
    return full


def is_new_head(base_model_prefix: str, key: str) -> bool:
    """Whether a checkpoint name the checkpoint may lack belongs to a classifier's new parts: outside
    the base model (``score``, ``classifier``) or its pooler (BERT's MLM checkpoints have none).
    Anything else missing is a checkpoint that is not the model's."""
    return key.split(".", 1)[0] != base_model_prefix or ".pooler." in f".{key}"


def missing_problem(folder: str, keys: list[str]) -> JobError:
    return JobError(f"model.path: {folder}: the checkpoint has no tensor for {', '.join(keys[:3])}"
                    f"{' ...' if len(keys) > 3 else ''}; is it the model config.json describes?")


def init_new_params(model, keys: list[str], seed: int, *, zero3: bool = False) -> None:
    """Give the parameters ``from_pretrained`` found no tensor for (``keys``: the new head) their
    :func:`head_init`. Under ZeRO-3 they are partitioned: gathered, written by rank 0, scattered."""
    import torch

    std = float(getattr(model.config, "initializer_range", None) or HEAD_STD)
    params = dict(model.named_parameters())
    for key in keys:
        p = params.get(key)
        if p is None:  # a buffer, or a name the model does not hold: nothing to train
            continue
        if zero3:
            import deepspeed
            import torch.distributed as dist

            with deepspeed.zero.GatheredParameters([p], modifier_rank=0), torch.no_grad():
                if dist.get_rank() == 0:
                    p.copy_(head_init(key, p.shape, seed, std).to(p.dtype))
        else:
            with torch.no_grad():
                p.copy_(head_init(key, p.shape, seed, std).to(p.dtype))


def is_lora(param_name: str) -> bool:
    return ".lora_" in param_name


def lora_init(param_name: str, shape, seed: int):
    """The initial value of a LoRA adapter, as peft makes it (A: Kaiming-uniform with a=sqrt(5),
    B: zeros), drawn from a generator seeded by the job's seed and the parameter's name."""
    import torch
    import torch.nn as nn

    full = torch.zeros(tuple(shape), dtype=torch.float32)
    if ".lora_A." in param_name or ".lora_embedding_B." in param_name:
        g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(param_name.encode())) % (2**63))
        if ".lora_A." in param_name:
            nn.init.kaiming_uniform_(full, a=math.sqrt(5), generator=g)
        else:
            nn.init.normal_(full, generator=g)
    return full


def init_lora(model, seed: int) -> None:
    """Give every LoRA adapter of a model with real (unsharded) parameters its :func:`lora_init`."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_lora(name) and p.device.type != "meta":
                p.copy_(lora_init(name, p.shape, seed).to(p.dtype))


class CheckpointReader:
    """Slices of the tensors of a Hugging Face model folder: model.safetensors, its sharded
    index, or pytorch_model.bin (memory-mapped by torch.load). Nothing is read whole."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self._files: dict[str, Any] = {}
        self._where: dict[str, str] = {}
        index = self.folder / SAFETENSORS_INDEX
        if index.is_file():
            self._where = dict(json.loads(index.read_text())["weight_map"])
        elif (self.folder / SAFETENSORS).is_file():
            self._where = {k: SAFETENSORS for k in self._open(SAFETENSORS).keys()}
        elif (self.folder / TORCH_BIN).is_file():
            self._where = {k: TORCH_BIN for k in self._open(TORCH_BIN).keys()}
        else:
            raise JobError(f"model.path: {self.folder} has no {SAFETENSORS}, {SAFETENSORS_INDEX} or {TORCH_BIN}")

    def _open(self, name: str):
        if name not in self._files:
            path = str(self.folder / name)
            if name.endswith(".bin"):
                import torch

                self._files[name] = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            else:
                from safetensors import safe_open

                self._files[name] = safe_open(path, framework="pt")
        return self._files[name]

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def read(self, key: str, index: tuple):
        f = self._open(self._where[key])
        if isinstance(f, dict):
            return f[key][index].clone()
        return f.get_slice(key)[index]


def _local_slices(param) -> tuple[Any, tuple]:
    """(the tensor this rank holds, its index into the full parameter)."""
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
        return param.to_local(), tuple(slice(o, o + s) for o, s in zip(offset, shape))
    return param, tuple(slice(0, s) for s in param.shape)


def materialize(model, folder: str, seed: int, device, new_head_std: Optional[float] = None,
                base_model_prefix: str = "") -> None:
    """Storage for a model sharded on the meta device, filled with this rank's slices of the
    checkpoint (base weights) and of :func:`lora_init` (adapters). With ``new_head_std`` (a
    classification model), what the checkpoint lacks is a new head: :func:`head_init`.
    Collective-free."""
    import torch

    buffers = {n: b.detach().clone() for n, b in model.named_buffers() if b.device.type != "meta"}
    model.to_empty(device=device)
    reader = CheckpointReader(folder)
    missing = []
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name in buffers:
                b.copy_(buffers[name])
            elif checkpoint_key(name) in reader:
                local, index = _local_slices(b)
                local.copy_(reader.read(checkpoint_key(name), index).to(local.dtype))
        for name, p in model.named_parameters():
            local, index = _local_slices(p)
            if is_lora(name):
                local.copy_(lora_init(name, p.shape, seed)[index].to(local.dtype))
            elif checkpoint_key(name) in reader:
                local.copy_(reader.read(checkpoint_key(name), index).to(local.dtype))
            elif new_head_std is not None and is_new_head(base_model_prefix, checkpoint_key(name)):
                local.copy_(head_init(checkpoint_key(name), p.shape, seed, new_head_std)[index].to(local.dtype))
            else:
                missing.append(checkpoint_key(name))
    if missing:
        raise missing_problem(folder, missing)


def gather_trainable(model) -> Optional[dict]:
    """The trainable parameters, whole, on global rank 0 (None elsewhere). Collective: every
    rank gathers its shards (FSDP2 DTensors) one parameter at a time."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            full = p.full_tensor() if isinstance(p, DTensor) else p
            if dist.get_rank() == 0:
                out[name] = full.detach().cpu().clone()
    return out if dist.get_rank() == 0 else None
