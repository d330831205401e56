"""Checkpoints: resumable state every ``save_every_steps`` and on a stop, and the final model.

Layout of ``checkpoints/step-N/``: ``engine/`` (the strategy's own sharded format: model,
optimizer and LR scheduler state), ``rng-rank<R>.pt`` (each rank's RNG streams),
``trainer_state.json`` (the step) and ``manifest.json`` (every file's size and sha256, written
last, after the files were synced). Every rank writes into a temp folder that rank 0 renames once
the manifest is written: a checkpoint folder either is complete or does not exist under its final
name. A resume trusts only a checkpoint whose manifest verifies (:func:`choose_checkpoint`), and
pruning never removes the newest verified one.
"""
from __future__ import annotations

import errno
import os
import random
import shutil
import time
from pathlib import Path
from typing import Optional

from launcher import rundir
from launcher.errors import JobError
from launcher.rundir.artifacts import RunningTotals, TrainerState, read_model
from launcher.train import manifest

def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint with a manifest, newest first."""
    return sorted(((step, p) for step, p in rundir.RunDir(run_dir).checkpoint_dirs()
                   if rundir.manifest_file(p).is_file()), reverse=True)


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest checkpoint that finished its save (has a manifest); not yet verified."""
    found = checkpoints(run_dir)
    return found[0][1] if found else None


def choose_checkpoint(run_dir: Path, log) -> Optional[Path]:
    """Collective: the newest checkpoint whose manifest verifies on every rank. A newer one that
    does not (a truncated file, a crash mid-save) is passed over with one line saying so."""
    for step, folder in checkpoints(run_dir):
        problem = manifest.verify(folder)
        if problem is None:
            return folder
        log(f"checkpoint {folder.name} is incomplete or corrupt ({problem}); trying an older one")
    return None


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


def _space_problem(root: Path, strategy, step: int) -> Optional[str]:
    """Collective: why the checkpoint would not fit (all ranks' model states, +10%, against the
    free space where it goes), or None."""
    import torch
    import torch.distributed as dist

    counts = strategy.states.counts or {}
    need = torch.tensor([float(counts.get("params_bytes", 0) + counts.get("optimizer_bytes", 0)) * 1.1])
    dist.all_reduce(need)
    free = shutil.disk_usage(root).free
    if need.item() > free:
        return (f"checkpoint at step {step}: it needs about {need.item() / 2**20:,.0f} MiB in {root} and the "
                f"filesystem has {free / 2**20:,.0f} MiB free")
    return None


def _no_space(root: Path, step: int, detail: str) -> JobError:
    prev = latest_checkpoint(root.parent)
    return JobError(f"{detail}; free space there (or set train.save_every_steps higher); "
                    + (f"the previous checkpoint {prev.name} is intact and the job resumes from it"
                       if prev else "no earlier checkpoint exists"))


def save_checkpoint(run: Path, strategy, step: int, keep_last: int, metrics, totals: RunningTotals) -> Path:
    """Collective: every rank saves its shard into a temp folder; the ranks hash and sync the
    files, rank 0 writes the manifest, renames, prunes and logs the record. A full disk is one
    clear error and the previous checkpoint stays as it was."""
    import torch
    import torch.distributed as dist

    rank = dist.get_rank()
    rd = rundir.RunDir(run)
    root, tmp, final = rd.checkpoints, rd.tmp_checkpoint(step), rd.checkpoint(step)
    failed = torch.zeros(1)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
        except OSError as e:
            if not _is_enospc(e):
                raise
            failed += 1
    dist.all_reduce(failed)  # the folder exists for every rank, or none saves
    problem = _space_problem(root, strategy, step) if failed.item() == 0 else None
    if problem is None and failed.item() == 0:
        try:
            strategy.save(str(rundir.engine_dir(tmp)))
            torch.save(rng_state(), rundir.rng_state(tmp, rank))
        # DCP's CheckpointException (a write that failed on any rank, raised on every rank) is a
        # BaseException: `except Exception` let a disk that filled during the write through
        except BaseException as e:  # noqa: BLE001 - agreed on below; a full disk is said in one line
            if isinstance(e, (KeyboardInterrupt, SystemExit)) or not _is_enospc(e):
                raise
            failed += 1
    dist.all_reduce(failed)
    if problem is not None or failed.item() > 0:
        dist.barrier()
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _no_space(root, step, problem or f"checkpoint at step {step}: no space left on the device of {root}")
    dist.barrier()
    if rank == 0:
        TrainerState(step=step, time=time.time(), totals=totals).write(rundir.trainer_state_file(tmp))
    dist.barrier()
    manifest.write_manifest(tmp, step)
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune(root, keep_last)
        metrics.write(rundir.CheckpointRecord(step=step, path=str(final)))
    dist.barrier()
    return final


def _is_enospc(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(e):  # DCP and DeepSpeed wrap the OSError
            return True
        e = e.__cause__ or e.__context__
    return False


def prune(root: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` checkpoints with a manifest (at least the newest one), and
    drop unfinished folders older than it; never the only checkpoint a resume can use."""
    done = checkpoints(root.parent)
    for _, old in done[max(1, keep_last):]:
        shutil.rmtree(old, ignore_errors=True)
    if done:
        newest = done[0][0]
        for step, p in rundir.RunDir(root.parent).checkpoint_dirs():
            if step < newest and not rundir.manifest_file(p).is_file():
                shutil.rmtree(p, ignore_errors=True)


def resume(ckpt: Path, strategy, rank: int) -> TrainerState:
    """Load ``ckpt`` into the strategy and this rank's RNG streams; the step it holds and the
    running totals at that step."""
    import torch

    strategy.load(str(rundir.engine_dir(ckpt)))
    state = read_model(TrainerState, rundir.trainer_state_file(ckpt))
    rng = rundir.rng_state(ckpt, rank)
    if rng.exists():
        set_rng_state(torch.load(rng, weights_only=False))
    return state


def save_final(run: Path, strategy, method: str, tokenizer) -> Path:
    """Hugging Face format: full weights, or the LoRA adapter (gathered under ZeRO-3/FSDP and
    checked to hold non-empty tensors). Collective."""
    import torch.distributed as dist

    sd = strategy.full_state_dict(trainable_only=method == "lora")  # collective
    final, tmp = rundir.RunDir(run).final, rundir.RunDir(run).tmp_final
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        module = strategy.unwrapped()
        module.save_pretrained(str(tmp), state_dict=sd, safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if method == "lora":
            check_adapter(tmp)
            base = module.get_base_model()
            if getattr(base.config, "id2label", None) and type(base).__name__.endswith("ForSequenceClassification"):
                # the classes beside the adapter: its head is only usable with their number and names
                base.config.save_pretrained(str(tmp))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    dist.barrier()
    return final


def check_adapter(folder: Path) -> None:
    from safetensors import safe_open

    f, _ = rundir.adapter_files(folder)
    if not f.exists():
        raise RuntimeError(f"{folder}: no {f.name} written")
    with safe_open(str(f), "pt") as st:
        keys = list(st.keys())
        if not keys:
            raise RuntimeError(f"{f}: the saved LoRA adapter holds no tensors")
        empty = [k for k in keys if st.get_tensor(k).numel() == 0]
    if empty:
        raise RuntimeError(f"{f}: empty adapter tensors (ZeRO-3/FSDP not gathered?): {empty[:3]}")
