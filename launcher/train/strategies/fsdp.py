"""PyTorch FSDP2: fully_shard per decoder layer, then the root; parameters filled shard by shard."""
from __future__ import annotations

from typing import Any, Optional


def _config_of(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config


def _untied_embeddings(model) -> list:
    """The input embedding and the LM head as units of their own (vocab x hidden each: gathered
    with the root they would double its all-gather), unless they share one weight. A
    classification model has no LM head: its embedding alone."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inp, out = base.get_input_embeddings(), base.get_output_embeddings()
    if inp is None:
        return []
    if out is None:
        return [inp]
    if getattr(inp, "weight", None) is getattr(out, "weight", None):
        return []
    return [inp, out]


class FSDP2Strategy:
    name = "fsdp"

    def __init__(self, plan, model, lr_lambda, model_path: str):
        import torch
        import torch.distributed as dist
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        from launcher.train.memory import StateCounter
        from launcher.train.model import decoder_layers
        from launcher.train.strategies.comm import fsdp_in_place_all_gather, gather_in_place
        from launcher.train.weights import materialize

        self.plan = plan
        settings = plan.fsdp
        param_dtype = getattr(torch, settings.param_dtype)
        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=getattr(torch, settings.reduce_dtype))
        kw: dict[str, Any] = {"mp_policy": mp, "reshard_after_forward": settings.reshard_after_forward}
        if settings.cpu_offload:
            kw["offload_policy"] = CPUOffloadPolicy()
        self.device = torch.device("cuda", torch.cuda.current_device()) if plan.device == "cuda" else torch.device("cpu")
        units = list({id(u): u for u in decoder_layers(model) + _untied_embeddings(model)}.values())
        # a unit inside another (BERT's word embedding inside BertEmbeddings, a _no_split_module) is
        # sharded first: fully_shard cannot take a parameter another unit already made a DTensor
        units.sort(key=lambda u: sum(1 for _ in u.modules()))
        for unit in units:
            fully_shard(unit, **kw)
        fully_shard(model, **kw)
        if gather_in_place(plan.backend):  # gloo's own all_gather_into_tensor holds a second copy
            for unit in [*units, model]:
                if hasattr(unit, "set_custom_all_gather"):  # torch >= 2.8
                    unit.set_custom_all_gather(fsdp_in_place_all_gather())
        if any(p.is_meta for p in model.parameters()):  # built on the meta device: storage for our shards only
            head_std, prefix = None, ""
            if plan.job.train.task == "classification":  # the new head: not in the checkpoint
                from launcher.train.weights import HEAD_STD

                head_std = float(getattr(_config_of(model), "initializer_range", None) or HEAD_STD)
                base = model.get_base_model() if hasattr(model, "get_base_model") else model
                prefix = getattr(base, "base_model_prefix", "")
            materialize(model, model_path, plan.job.train.seed,
                        torch.device("cpu") if settings.cpu_offload else self.device, head_std, prefix)
        self.model = model
        t = plan.job.train
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=t.lr, betas=tuple(t.adam_betas), eps=t.adam_eps, weight_decay=t.weight_decay, foreach=True,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)
        self.max_grad_norm = float(t.max_grad_norm)
        # FSDP2 averages gradients over ranks (reduce-scatter with avg); accumulation sums
        self.loss_scale = float(dist.get_world_size())
        self.states = StateCounter(model.parameters, self.optimizer)

    def forward(self, **batch: Any):
        return self.model(**batch)

    def backward(self, loss, *, last_micro: bool) -> None:
        # skip the reduce-scatter until the last micro batch of the accumulation
        self.model.set_requires_gradient_sync(last_micro)
        loss.backward()

    def step(self):
        import torch

        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        self._lr = float(self.scheduler.get_last_lr()[0])  # the lr this step applies
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()  # a tensor: the loop brings it to the host with the step's other figures

    def lr(self) -> float:
        return getattr(self, "_lr", None) or float(self.scheduler.get_last_lr()[0])

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()

    def _state(self):
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(self.model, self.optimizer)
        return {"model": msd, "optim": osd}

    def save(self, path: str) -> None:
        import os

        import torch
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(), checkpoint_id=path)
        if dist.get_rank() == 0:
            torch.save(self.scheduler.state_dict(), os.path.join(path, "lr_scheduler.pt"))

    def load(self, path: str) -> None:
        """DCP reshards: a checkpoint written by another number of ranks loads into this one."""
        import os

        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self._state()
        dcp.load(state, checkpoint_id=path)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        self.scheduler.load_state_dict(torch.load(os.path.join(path, "lr_scheduler.pt"), weights_only=False))

    def full_state_dict(self, trainable_only: bool = False) -> Optional[dict]:
        import torch.distributed as dist

        if trainable_only:
            from launcher.train.weights import gather_trainable

            return gather_trainable(self.model)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if dist.get_rank() == 0 else None

    def unwrapped(self):
        return self.model
