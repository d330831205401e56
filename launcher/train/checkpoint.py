"""Checkpoints: resumable state every ``save_every_steps`` and on a stop, and the final model.

Layout of ``checkpoints/step-N/``: ``engine/`` (the strategy's own sharded format: model,
optimizer and LR scheduler state), ``rng-rank<R>.pt`` (each rank's RNG streams) and
``trainer_state.json`` (the step), written by rank 0 last. Every rank writes into a temp folder
that rank 0 renames once all are done: a checkpoint folder either is complete or does not exist
under its final name.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Optional

from launcher import rundir

ENGINE = "engine"


def _rng_file(ckpt: Path, rank: int) -> Path:
    return ckpt / f"rng-rank{rank}.pt"


def _step_of(p: Path) -> Optional[int]:
    try:
        return int(p.name[len(rundir.CHECKPOINT_PREFIX):])
    except ValueError:
        return None


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    ckpts = []
    for p in (run_dir / rundir.CHECKPOINTS).glob(f"{rundir.CHECKPOINT_PREFIX}*"):
        step = _step_of(p)
        if step is not None and (p / rundir.TRAINER_STATE).exists():
            ckpts.append((step, p))
    return max(ckpts)[1] if ckpts else None


def rng_state() -> dict:
    import numpy as np
    import torch

    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    import numpy as np
    import torch

    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def save_checkpoint(run: Path, strategy, step: int, keep_last: int, metrics) -> Path:
    """Collective: every rank saves its shard; rank 0 renames, prunes old ones, logs the record."""
    import torch
    import torch.distributed as dist

    rank = dist.get_rank()
    root = run / rundir.CHECKPOINTS
    tmp = root / f".tmp-{rundir.CHECKPOINT_PREFIX}{step}"
    final = root / f"{rundir.CHECKPOINT_PREFIX}{step}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    strategy.save(str(tmp / ENGINE))
    torch.save(rng_state(), _rng_file(tmp, rank))
    dist.barrier()
    if rank == 0:
        rundir.write_json(tmp / rundir.TRAINER_STATE, {"step": step, "time": time.time()})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        kept = sorted((p for p in root.glob(f"{rundir.CHECKPOINT_PREFIX}*") if p.is_dir() and _step_of(p) is not None),
                      key=_step_of)
        for old in kept[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        metrics.write(rundir.CheckpointRecord(step=step, path=str(final)))
    dist.barrier()
    return final


def resume(ckpt: Path, strategy, rank: int) -> int:
    """Load ``ckpt`` into the strategy and this rank's RNG streams; the step it holds."""
    import torch

    strategy.load(str(ckpt / ENGINE))
    state = json.loads((ckpt / rundir.TRAINER_STATE).read_text())
    rng = _rng_file(ckpt, rank)
    if rng.exists():
        set_rng_state(torch.load(rng, weights_only=False))
    return int(state["step"])


def save_final(run: Path, strategy, method: str, tokenizer) -> Path:
    """Hugging Face format: full weights, or the LoRA adapter (gathered under ZeRO-3/FSDP and
    checked to hold non-empty tensors). Collective."""
    import torch.distributed as dist

    sd = strategy.full_state_dict(trainable_only=method == "lora")  # collective
    final = run / rundir.FINAL
    if dist.get_rank() == 0:
        tmp = run / f".tmp-{rundir.FINAL}"
        shutil.rmtree(tmp, ignore_errors=True)
        module = strategy.unwrapped()
        module.save_pretrained(str(tmp), state_dict=sd, safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if method == "lora":
            check_adapter(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    dist.barrier()
    return final


def check_adapter(folder: Path) -> None:
    from safetensors import safe_open

    f = folder / "adapter_model.safetensors"
    if not f.exists():
        raise RuntimeError(f"{folder}: no adapter_model.safetensors written")
    with safe_open(str(f), "pt") as st:
        keys = list(st.keys())
        if not keys:
            raise RuntimeError(f"{f}: the saved LoRA adapter holds no tensors")
        empty = [k for k in keys if st.get_tensor(k).numel() == 0]
    if empty:
        raise RuntimeError(f"{f}: empty adapter tensors (ZeRO-3/FSDP not gathered?): {empty[:3]}")
