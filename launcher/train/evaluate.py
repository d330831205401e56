"""Evaluation: the exact mean token loss over the eval split (a collective), and task accuracy
(greedy exact match of the response, instruction data, rank 0)."""
from __future__ import annotations

import math
from typing import Optional

from launcher import rundir
from launcher.train.loss import label_count, model_inputs, token_loss_sum


def eval_loss(strategy, rows, pad_id: int, plan) -> float:
    """Mean token loss over ``rows`` (the eval split), sharded over ranks, summed exactly."""
    import torch
    import torch.distributed as dist

    from launcher.train.data import collate

    rank, world = dist.get_rank(), dist.get_world_size()
    strategy.eval()
    mine = rows[rank::world]
    total = torch.zeros(2, dtype=torch.float64)
    mb = plan.micro_batch_size
    # every rank runs the same number of forwards: ZeRO-3/FSDP gather parameters collectively
    n_batches = math.ceil(math.ceil(len(rows) / world) / mb) if len(rows) else 0
    with torch.no_grad():
        for b in range(n_batches):
            chunk = list(mine[b * mb:(b + 1) * mb])
            real = bool(chunk)
            if not real:
                chunk = list(rows[:1])
            batch = collate(chunk, pad_id)
            out = strategy.forward(**model_inputs(batch, strategy.device))
            if real:
                total[0] += token_loss_sum(out.logits, batch["labels"]).double().cpu()
                total[1] += label_count(chunk)
    t = total.to(strategy.device) if plan.backend == "nccl" else total
    dist.all_reduce(t)
    strategy.train()
    return float(t[0] / max(1.0, float(t[1])))


def _eval_rows_raw(spec, data_path: str) -> list[dict]:
    from launcher.train.data import load_rows, split_train_eval

    rows = load_rows(spec.data, data_path)
    _, ev = split_train_eval(rows, spec.data.eval_fraction, spec.train.seed)
    return [{"prompt": r[spec.data.prompt_field], "response": r[spec.data.response_field]} for r in ev]


def accuracy(model, tokenizer, spec, data_path: str) -> Optional[float]:
    if spec.data.format != "instruction":
        return None
    from launcher.demo import exact_match_accuracy

    rows = _eval_rows_raw(spec, data_path)[: spec.train.eval_accuracy_samples]
    return exact_match_accuracy(model, tokenizer, rows) if rows else None


def accuracy_of_model(folder, tokenizer_folder, spec, data_path: str) -> Optional[float]:
    """Task accuracy of a saved model (the base before training, ``final/`` after), loaded on
    its own as a user would (from_pretrained, a LoRA adapter on its base), then freed. Rank 0
    only: the trained model is sharded and cannot generate on one rank."""
    import torch
    from transformers import AutoModelForCausalLM

    from launcher.train.data import read_tokenizer

    folder = str(folder)
    tok = read_tokenizer(spec, str(tokenizer_folder))
    if rundir.adapter_files(folder)[1].exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return accuracy(model, tok, spec, data_path)
