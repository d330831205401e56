"""Checkpoint manifests: every file's size and sha256, written last. A checkpoint is trusted only
when its manifest verifies; the ranks share the hashing (each hashes every world-th file) and
agree on the verdict in one collective."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Optional

from launcher import rundir
from launcher.rundir.artifacts import DamagedFile, FileHash, Manifest, read_model

CHUNK = 1 << 20


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.name != rundir.MANIFEST)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path, step: int) -> None:
    """Collective: the ranks hash (and fsync) a share of the files each; rank 0 writes the
    manifest, then syncs the folder. Call after every rank has written its files."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    names = _files(folder)
    mine = {}
    for name in names[rank::world]:
        p = folder / name
        _fsync(p)
        mine[name] = FileHash(bytes=p.stat().st_size, sha256=sha256_of(p))
    parts: list = [None] * world
    dist.all_gather_object(parts, mine)
    if rank == 0:
        files = {k: v for part in parts for k, v in part.items()}
        Manifest(step=step, world_size=world, time=time.time(), files=dict(sorted(files.items()))).write(
            rundir.manifest_file(folder))
        _fsync(folder)


def check_manifest(folder: Path, rank: int = 0, world: int = 1) -> Optional[str]:
    """Why ``folder`` is not the checkpoint its manifest describes (this rank's share of the
    files), or None when it is."""
    try:
        files = read_model(Manifest, rundir.manifest_file(folder)).files
    except DamagedFile:
        return f"no readable {rundir.MANIFEST} (the save did not finish)"
    for name in sorted(files)[rank::world]:
        p = folder / name
        want = files[name]
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != want.bytes:
            return f"{name} has {p.stat().st_size} bytes, the manifest says {want.bytes}"
        if sha256_of(p) != want.sha256:
            return f"{name} does not match its sha256"
    return None


def verify(folder: Path) -> Optional[str]:
    """Collective: None when every rank found its share of the files intact, else the first
    problem any rank found."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    problem = check_manifest(folder, rank, world)
    found: list = [None] * world
    dist.all_gather_object(found, problem)
    return next((p for p in found if p), None)
