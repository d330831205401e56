"""The baseline users would run instead of `launcher run`: Hugging Face ``Trainer`` under
``torchrun --nproc-per-node N``, padded batches from ``DataCollatorForSeq2Seq``, AdamW, the same
model, data, lr, micro batch, accumulation and strategy (DeepSpeed ZeRO from the ds_config.json
that launcher writes, or FSDP through ``TrainingArguments(fsdp=..., fsdp_config=...)``).

Each rank appends records to ``--out/rank<R>.jsonl``: ``setup`` (what accelerate and the
Trainer actually set up: distributed type, number of processes, the model's wrapper), one
``step`` per optimizer step (time, non-padding tokens and samples this rank fed, loss), ``end``.

``--dist-setup`` picks how the distributed state is made on CPU:

* ``plain``: exactly what the docs show (``TrainingArguments(deepspeed=...)`` or ``fsdp=...``).
* ``use_cpu``: plus ``use_cpu=True`` (what the docs suggest for CPU training).
* ``configured``: a ``PartialState(backend="gloo")`` made first (with ``ACCELERATE_USE_DEEPSPEED``
  for DeepSpeed) and handed to the Trainer with ``accelerator_config={"use_configured_state": True}``.

Run by bench/throughput.py; standalone: ``torchrun --nproc-per-node 2 bench/hf_trainer_baseline.py --help``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model folder (also holds the tokenizer)")
    ap.add_argument("--data", required=True, help="instruction jsonl: prompt, response")
    ap.add_argument("--out", required=True, help="folder for rank<R>.jsonl records")
    ap.add_argument("--strategy", choices=["zero", "fsdp", "ddp"], required=True)
    ap.add_argument("--ds-config", default=None, help="DeepSpeed config (strategy zero)")
    ap.add_argument("--dist-setup", choices=["plain", "use_cpu", "configured"], default="plain")
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-steps", type=int, default=20)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--method", choices=["full", "lora"], default="full")
    ap.add_argument("--packing", action="store_true",
                    help="Trainer's own padding-free batching (DataCollatorWithFlattening) instead of padding")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--rows", default=None,
                    help="a launcher run's tokenized data (RUN_DIR/cache/data-<key>): train on exactly its rows "
                         "(input_ids, labels, position_ids; packed or not), batched by launcher's own collate "
                         "(a packed batch without attention_mask, as launcher runs it): identical work")
    ap.add_argument("--same-batches", action="store_true",
                    help="with --rows: every rank's micro batches are the rows launcher's own schedule gives it "
                         "(launcher.train.data.BatchSchedule, seed --seed, one epoch), in launcher's order, instead "
                         "of the Trainer's sampler: padded runs then pad the same rows together on both sides")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    t_proc = time.time()
    a = parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    rank_env = int(os.environ.get("RANK", "0"))
    rec_path = os.path.join(a.out, f"rank{rank_env}.jsonl")

    def record(obj):
        obj.setdefault("time", time.time())
        with open(rec_path, "a") as f:
            f.write(json.dumps(obj, sort_keys=True, default=str) + "\n")

    import torch
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainerCallback, TrainingArguments)

    extra = {}
    if a.dist_setup == "use_cpu":
        extra["use_cpu"] = True
    elif a.dist_setup == "configured":
        from accelerate import PartialState

        if a.strategy == "zero":
            os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo" if not torch.cuda.is_available() else "nccl")
        extra["accelerator_config"] = {"use_configured_state": True}

    if a.rows:
        extra["remove_unused_columns"] = False  # n_docs tells collate a packed row from a padded one
    if a.strategy == "zero":
        extra["deepspeed"] = a.ds_config
    elif a.strategy == "fsdp":
        extra["fsdp"] = "full_shard auto_wrap"
        extra["fsdp_config"] = {"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                                "reshard_after_forward": True}

    args = TrainingArguments(
        output_dir=os.path.join(a.out, "trainer"),
        per_device_train_batch_size=a.micro_batch,
        gradient_accumulation_steps=a.grad_accum,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_grad_norm=a.max_grad_norm,
        optim="adamw_torch",
        max_steps=a.max_steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=a.seed,
        data_seed=a.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        bf16=a.dtype == "bf16",
        gradient_checkpointing=a.gradient_checkpointing,
        **extra,
    )

    # as transformers' examples/pytorch/language-modeling/run_clm.py does before loading the model;
    # reading args.device sets up torch.distributed, which ZeRO-3's zero.Init in from_pretrained needs
    print(f"Process rank: {args.process_index}, device: {args.device}, n_gpu: {args.n_gpu}, "
          f"distributed training: {args.parallel_mode.value == 'distributed'}", flush=True)
    tok = AutoTokenizer.from_pretrained(a.model)
    import datasets

    datasets.disable_progress_bars()
    if a.rows:
        ds, rows_collator = _launcher_rows(a.rows, tok.pad_token_id, a if a.same_batches else None)
    else:
        ds = datasets.load_dataset("json", data_files=a.data, split="train")
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []

    def encode(row):
        p = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        r = tok(row["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = (bos + p + r)[: a.max_seq_len]
        labels = ([-100] * (len(bos) + len(p)) + r)[: a.max_seq_len]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    if not a.rows:
        ds = ds.map(encode, remove_columns=ds.column_names)

    counts = {"tokens": 0, "samples": 0, "padded": 0}
    if a.rows:
        base_collator = rows_collator
    elif a.packing:
        from transformers import DataCollatorWithFlattening

        base_collator = DataCollatorWithFlattening(return_position_ids=True)
    else:
        base_collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)

    collator = base_collator

    model = AutoModelForCausalLM.from_pretrained(
        a.model, dtype=torch.bfloat16 if a.dtype == "bf16" and a.strategy != "zero" else torch.float32,
        attn_implementation="sdpa")
    model.config.use_cache = False
    if a.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))

    def count_forward(module, args_, kwargs):
        # counted at the forward (not in the collator: accelerate's loader fetches one batch ahead)
        if not module.training:
            return
        ids = kwargs.get("input_ids")
        mask = kwargs.get("attention_mask")
        if ids is None:
            return
        counts["padded"] += int(ids.numel())
        if mask is not None:
            counts["tokens"] += int(mask.sum())
            counts["samples"] += int(ids.shape[0])
        elif a.rows:  # launcher's packed rows, padded to the longest with pad ids (never inside a document)
            counts["tokens"] += int((ids != tok.pad_token_id).sum())
            counts["samples"] += int(ids.shape[0])
        else:
            pos = kwargs.get("position_ids")
            counts["tokens"] += int(ids.numel())
            counts["samples"] += int((pos == 0).sum()) if pos is not None else int(ids.shape[0])

    model.register_forward_pre_hook(count_forward, with_kwargs=True)
    holder = {}

    class Probe(TrainerCallback):
        def __init__(self):
            self.t_last = None
            self.pending = None

        def on_train_begin(self, args_, state, control, **kw):
            self.t_last = time.time()

        def on_step_end(self, args_, state, control, **kw):
            now = time.time()
            tr = holder["trainer"]
            if state.global_step == 1:
                import torch.distributed as dist

                acc = tr.accelerator
                wrapped = tr.model_wrapped
                record({
                    "kind": "setup", "t_process_start": t_proc,
                    "accelerate_distributed_type": str(acc.distributed_type),
                    "accelerate_num_processes": acc.num_processes,
                    "args_world_size": args_.world_size,
                    "torch_dist_world_size": dist.get_world_size() if dist.is_initialized() else None,
                    "env_world_size": os.environ.get("WORLD_SIZE"),
                    "model_wrapped": type(wrapped).__module__ + "." + type(wrapped).__name__,
                    "model_class": type(tr.model).__module__ + "." + type(tr.model).__name__,
                    "is_deepspeed": bool(getattr(tr, "is_deepspeed_enabled", False)),
                    "is_fsdp": bool(getattr(tr, "is_fsdp_enabled", False)),
                    "fsdp_version": getattr(getattr(acc.state, "fsdp_plugin", None), "fsdp_version", None),
                    "fully_sharded_params": _count_dtensors(tr.model),
                    "threads": torch.get_num_threads(),
                    "zero_stage": wrapped.zero_optimization_stage()
                    if hasattr(wrapped, "zero_optimization_stage") else None,
                    "ds_world_size": getattr(wrapped, "world_size", None) if hasattr(wrapped, "zero_optimization_stage") else None,
                    "ds_train_batch_size": wrapped.train_batch_size() if hasattr(wrapped, "train_batch_size") else None,
                })
            self.pending = {"kind": "step", "step": state.global_step, "step_time_s": now - self.t_last,
                            "tokens": counts["tokens"], "samples": counts["samples"],
                            "padded_tokens": counts["padded"], "time": now}
            counts.update(tokens=0, samples=0, padded=0)
            self.t_last = now

        def on_log(self, args_, state, control, logs=None, **kw):
            if self.pending is not None:
                if logs and "loss" in logs:
                    self.pending["loss"] = logs["loss"]
                    self.pending["grad_norm"] = logs.get("grad_norm")
                record(self.pending)
                self.pending = None

    trainer_cls = Trainer
    if a.rows and a.same_batches:
        from torch.utils.data import SequentialSampler

        class InLauncherOrder(Trainer):
            """The dataset is already in launcher's order: accelerate deals consecutive batches
            of the sequential sampler to the ranks in turn (batch i to rank i % world)."""

            def _get_train_sampler(self, *args_, **kw):
                return SequentialSampler(self.train_dataset)

        trainer_cls = InLauncherOrder
    trainer = trainer_cls(model=model, args=args, train_dataset=ds, data_collator=collator,
                          processing_class=tok, callbacks=[Probe()])
    holder["trainer"] = trainer
    trainer.train()
    record({"kind": "end", "peak_rss_mib_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cuda_peak_gib": (torch.cuda.max_memory_allocated() / 2**30) if torch.cuda.is_available() else None})
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


def _launcher_rows(folder: str, pad_id: int, same_batches=None):
    """(dataset, collator): the rows of a launcher run's data cache, batched by launcher's collate.
    ``same_batches`` (the parsed arguments): the rows laid out in the order launcher's schedule
    feeds them, step by step, micro batch by micro batch, rank by rank."""
    import datasets

    from launcher.train.data.cache import _open_cache
    from launcher.train.data.collate import collate

    rows = _open_cache(__import__("pathlib").Path(folder)).train
    order = range(len(rows))
    if same_batches is not None:
        from launcher.train.data import BatchSchedule

        a, world = same_batches, int(os.environ.get("WORLD_SIZE", "1"))
        sched = BatchSchedule(len(rows), world, a.micro_batch, a.grad_accum, 1, a.seed)
        order = [i for step in range(a.max_steps) for micro in range(a.grad_accum) for rank in range(world)
                 for i in sched.rows_for(step, micro, rank)]
    ds = datasets.Dataset.from_list([{"input_ids": list(map(int, rows[i]["input_ids"])),
                                      "labels": list(map(int, rows[i]["labels"])),
                                      "position_ids": list(map(int, rows[i]["position_ids"])),
                                      "n_docs": int(rows[i]["n_docs"])} for i in order])

    def collator(features):
        b = collate(features, pad_id)
        out = {"input_ids": b["input_ids"], "labels": b["labels"], "position_ids": b["position_ids"]}
        if not b["packed"]:
            out["attention_mask"] = b["attention_mask"]
        return out

    return ds, collator


def _count_dtensors(model) -> int:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return 0
    return sum(1 for p in model.parameters() if isinstance(p, DTensor))


if __name__ == "__main__":
    sys.exit(main())
