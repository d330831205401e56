"""Run under torchrun by test_ds_engine.py: for every case of CASES.json, build DeepSpeed's engine
from the ds_config.json that `launcher ds-config` wrote (``deepspeed.initialize``, as the trainer
does), take one optimizer step on gloo, and write one line per case to RESULTS (rank 0).

A case that DeepSpeed refuses is recorded with its error and the sweep goes on, so one run names
every refused case at once."""
from __future__ import annotations

import json
import math
import sys
import traceback
from pathlib import Path


def build_model(case: dict):
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from launcher.modelinfo import lora_config
    from launcher.spec import LoraSpec

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(case["model"])
    model = AutoModelForCausalLM.from_config(config)
    if case["method"] == "lora":
        model = get_peft_model(model, lora_config(LoraSpec(**case["lora"])))
    return model


def one_step(deepspeed, case: dict) -> dict:
    import torch

    config = json.loads(Path(case["ds_config"]).read_text())
    model = build_model(case)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=trainable, config=config,
                                           dist_init_required=False)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1 + deepspeed.comm.get_rank())
    losses = []
    for _ in range(engine.gradient_accumulation_steps()):
        ids = torch.randint(0, vocab, (engine.train_micro_batch_size_per_gpu(), 9), generator=gen)
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    assert engine.global_steps == 1, f"{engine.global_steps} optimizer steps after one accumulation"
    engine.destroy()
    return {"loss": sum(losses) / len(losses), "n_trainable": n_trainable}


def main(cases_file: str, results_file: str) -> None:
    from launcher.train.strategies.zero import import_deepspeed, init_deepspeed_comm

    deepspeed = import_deepspeed()
    init_deepspeed_comm(deepspeed, "gloo")
    rank = deepspeed.comm.get_rank()
    out = []
    for case in json.loads(Path(cases_file).read_text()):
        try:
            result = {"ok": True, **one_step(deepspeed, case)}
            result["ok"] = math.isfinite(result["loss"])
        except Exception as e:  # noqa: BLE001 - recorded, the sweep names every refused case
            result = {"ok": False, "error": f"{type(e).__name__}: {e}".strip()[:500],
                      "where": traceback.format_exc(limit=-3)[-1500:]}
        deepspeed.comm.barrier()
        out.append({"case": case["name"], **result})
    if rank == 0:
        Path(results_file).write_text("".join(json.dumps(r) + "\n" for r in out))


if __name__ == "__main__":
    main(*sys.argv[1:])
