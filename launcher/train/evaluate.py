"""Evaluation: the exact mean loss over the eval split (a collective) with, for classification,
accuracy and macro F1 in the same pass; and task accuracy of generation (greedy exact match of
the response, instruction data, rank 0)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from launcher import rundir
from launcher.train.loss import class_targets, label_count, loss_sum, model_inputs


@dataclass(frozen=True)
class EvalScores:
    loss: float
    accuracy: Optional[float] = None  # classification: share of rows whose argmax is their class
    f1_macro: Optional[float] = None  # classification: mean F1 over the classes seen or predicted


def f1_macro(tp, fp, fn) -> Optional[float]:
    """Macro F1 from per-class counts, over the classes that occur or are predicted (as
    scikit-learn's f1_score(average="macro") with its default labels)."""
    scores = [2 * t / (2 * t + p + n) for t, p, n in zip(tp, fp, fn) if t + p + n > 0]
    return sum(scores) / len(scores) if scores else None


def eval_loss(strategy, rows, pad_id: int, plan, num_labels: int = 0) -> EvalScores:
    """Mean loss over ``rows`` (the eval split), sharded over ranks, summed exactly; for a
    classification job (``num_labels``), accuracy and macro F1 from the same forwards."""
    import torch
    import torch.distributed as dist

    from launcher.train.data import collate

    task = plan.job.train.task
    rank, world = dist.get_rank(), dist.get_world_size()
    strategy.eval()
    mine = rows[rank::world]
    # loss sum, labels, correct rows, then true positives, false positives, false negatives per class
    total = torch.zeros(3 + 3 * num_labels, dtype=torch.float64)
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
                total[0] += loss_sum(out.logits, batch["labels"], task).double().cpu()
                total[1] += label_count(chunk)
                if num_labels:
                    pred = out.logits.argmax(dim=-1).cpu()
                    gold = class_targets(batch["labels"])
                    total[2] += float((pred == gold).sum())
                    c = num_labels
                    total[3:3 + c] += torch.bincount(gold[pred == gold], minlength=c)[:c].double()
                    total[3 + c:3 + 2 * c] += torch.bincount(pred[pred != gold], minlength=c)[:c].double()
                    total[3 + 2 * c:3 + 3 * c] += torch.bincount(gold[pred != gold], minlength=c)[:c].double()
    t = total.to(strategy.device) if plan.backend == "nccl" else total
    dist.all_reduce(t)
    t = t.cpu()
    strategy.train()
    n = max(1.0, float(t[1]))
    if not num_labels:
        return EvalScores(loss=float(t[0] / n))
    c = num_labels
    return EvalScores(loss=float(t[0] / n), accuracy=float(t[2] / n),
                      f1_macro=f1_macro(t[3:3 + c].tolist(), t[3 + c:3 + 2 * c].tolist(), t[3 + 2 * c:].tolist()))


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
