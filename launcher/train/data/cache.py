"""The prepared-data cache: ``prepare_data`` loads, tokenizes, splits and packs once, under a key
(``cache_key``) and a file lock, into a folder of flat arrays that every rank memory-maps
(``launcher.train.data.rows``).

numpy is imported inside functions: importing this module is cheap.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from launcher.errors import JobError
from launcher.rundir.artifacts import DataStats, read_model
from launcher.rundir.names import DATA_STATS as STATS_JSON
from launcher.train.data.load import check_data_path, label_names, load_rows, row_place
from launcher.train.data.pack import _unpacked, pack, split_train_eval
from launcher.train.data.rows import open_rows, write_rows
from launcher.train.data.tokenize import _tokenize, label_tokens, read_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    from launcher.spec import JobSpec

# Bump when the cached layout or any tokenization rule changes: old cache files then miss.
CACHE_VERSION = 2


@dataclass
class PreparedData:
    """Rows ready for ``collate``: each has input_ids, labels, position_ids (lists) and n_docs.

    ``train`` and ``eval`` are read-only ``Rows`` sequences over the memory-mapped cache
    (``rows[i]`` gives the row dict, slices and ``==`` work as for a list).

    stats: what tokenizing and packing made of the data (:class:`launcher.rundir.artifacts.DataStats`).
    """

    train: Sequence[dict]
    eval: Sequence[dict]
    stats: DataStats
    cache_path: Optional[str] = None
    cache_hit: bool = False
    replay: Optional[Sequence[dict]] = None  # data.replay's rows (launcher.train.data.extra)
    general: Optional[Sequence[dict]] = None  # eval.general_data's rows evaluated for forgetting


def _hash_data_source(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    special = {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    ids = {n: getattr(tokenizer, f"{n}_token_id", None) for n in ("bos", "eos", "pad", "unk")}
    h.update(json.dumps({"special": special, "ids": ids}, sort_keys=True).encode())
    tmpl = getattr(tokenizer, "chat_template", None)
    h.update(json.dumps(tmpl, sort_keys=True).encode())
    return h.hexdigest()


# Files of a model folder that no tokenizer reads: left out of the folder's fingerprint.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".npz")


def _folder_fingerprint(folder: Path, trust_remote_code: bool) -> str:
    """The tokenizer a folder holds, without loading it: every file of the folder but the weights
    (tokenizer.json, its configs, vocabularies, chat templates, remote code), by content, with
    the versions of the libraries that turn them into a tokenizer."""
    from importlib.metadata import PackageNotFoundError, version

    h = hashlib.sha256()
    for lib in ("transformers", "tokenizers", "sentencepiece"):
        try:
            h.update(f"{lib}={version(lib)}\n".encode())
        except PackageNotFoundError:
            h.update(f"{lib}=-\n".encode())
    h.update(f"trust_remote_code={bool(trust_remote_code)}\n".encode())
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or p.name.endswith(_WEIGHT_SUFFIXES) or any(x.startswith(".") for x in rel.parts):
            continue
        h.update(f"{rel.as_posix()}\0".encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def cache_key(spec: "JobSpec", tokenizer, data_path: str) -> str:
    """sha256 over the data (file content, or a folder's names/sizes/mtimes), the tokenizer,
    ``spec.data`` and ``train.seed``. The tokenizer is its folder's files (when ``tokenizer`` is a
    folder: nothing is loaded) or the loaded tokenizer's vocab, normalisation, special tokens and
    chat template."""
    if isinstance(tokenizer, (str, os.PathLike)):
        tok = {"folder": _folder_fingerprint(Path(tokenizer).expanduser(), spec.model.trust_remote_code)}
    else:
        tok = {"loaded": _tokenizer_fingerprint(tokenizer)}
    parts = {
        "version": CACHE_VERSION,
        "data_source": _hash_data_source(Path(data_path)),
        "tokenizer": tok,
        "data_spec": spec.data.model_dump(mode="json"),
        "seed": spec.train.seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _save_cache(path: Path, prepared: PreparedData) -> None:
    """Write the cache folder under a temporary name beside ``path``, then rename it into place:
    readers see all of it or nothing. A copy already at ``path`` (one ``_load_cache`` refused) is
    removed first."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        write_rows(tmp, "train", prepared.train)
        write_rows(tmp, "eval", prepared.eval)
        prepared.stats.write(tmp / STATS_JSON)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _open_cache(path: Path) -> PreparedData:
    """The cache folder at ``path``, memory-mapped; raises when it is missing, torn or foreign."""
    stats = read_model(DataStats, path / STATS_JSON)
    train, ev = open_rows(path, "train"), open_rows(path, "eval")
    if (len(train), len(ev)) != (stats.train_rows, stats.eval_rows):
        raise ValueError(f"{path}: the row counts do not match {STATS_JSON}")
    return PreparedData(train=train, eval=ev, stats=stats, cache_path=str(path), cache_hit=True)


def _load_cache(path: Path) -> Optional[PreparedData]:
    try:
        return _open_cache(path)
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a torn or foreign folder: rebuild it
        return None


def _build(spec: "JobSpec", tokenizer, data_path: str) -> PreparedData:
    data = spec.data
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = read_tokenizer(spec, str(tokenizer))
    rows = load_rows(data, data_path)
    names = label_names(rows, data) if data.format == "classification" else None
    # Split the raw rows (not the tokenized examples): load_rows + split_train_eval then gives the
    # same eval rows as here, whatever tokenizing drops.
    train_idx, eval_idx = split_train_eval(list(range(len(rows))), data.eval_fraction, spec.train.seed)
    train_raw, eval_raw = [rows[i] for i in train_idx], [rows[i] for i in eval_idx]
    train_ex, c_train = _tokenize(train_raw, tokenizer, data, names, lambda i: row_place(data_path, train_idx[i]))
    eval_ex, c_eval = _tokenize(eval_raw, tokenizer, data, names, lambda i: row_place(data_path, eval_idx[i])) \
        if eval_raw else ([], {"truncated": 0, "dropped": 0})
    counts = {k: c_train[k] + c_eval[k] for k in c_train}
    if not train_ex:
        raise JobError(f"data.path: {data_path}: no training example has a token to train on after "
                       f"truncation to data.max_seq_len={data.max_seq_len} "
                       f"({counts['dropped']} dropped); raise data.max_seq_len")
    if data.packing:
        train, ev = pack(train_ex, data.max_seq_len), pack(eval_ex, data.max_seq_len)
    else:
        train, ev = _unpacked(train_ex), _unpacked(eval_ex)
    stats = DataStats(
        documents=len(train_ex) + len(eval_ex),
        train_documents=len(train_ex),
        eval_documents=len(eval_ex),
        train_rows=len(train),
        eval_rows=len(ev),
        train_tokens=sum(len(r["input_ids"]) for r in train),
        train_label_tokens=sum(label_tokens(r) for r in train),
        eval_tokens=sum(len(r["input_ids"]) for r in ev),
        truncated=counts["truncated"],
        dropped=counts["dropped"],
        packed=bool(data.packing),
        max_seq_len=data.max_seq_len,
        labels=names,
    )
    return PreparedData(train=train, eval=ev, stats=stats)


def _link_tree(src: Path, dst: Path) -> None:
    """A copy of the cache folder ``src`` at ``dst`` (absent), its files hard-linked where the file
    system allows (cache files are never written in place), copied otherwise; written under a
    temporary name, then renamed."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        for f in src.iterdir():
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _share(path: Path, store: Optional[Path]) -> None:
    """Put the cache folder ``path`` into ``store`` under its name, unless one is there. Best effort:
    a store that cannot be written costs the next run a tokenization, nothing else."""
    if store is None or (store / path.name).exists():
        return
    try:
        store.mkdir(parents=True, exist_ok=True)
        _link_tree(path, store / path.name)
    except OSError:
        pass


def _from_store(path: Path, store: Optional[Path]) -> Optional[PreparedData]:
    """The store's copy of the cache folder ``path``, linked into place at ``path``; None when the
    store has no sound copy."""
    if store is None or _load_cache(store / path.name) is None:
        return None
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        _link_tree(store / path.name, path)
    except OSError:
        return None
    return _load_cache(path)


def prepare_data(spec: "JobSpec", tokenizer, data_path: str, cache_dir: Path, *,
                 store: Optional[Path] = None) -> PreparedData:
    """Load, tokenize, split and (with ``data.packing``) pack, cached in ``cache_dir``.

    ``tokenizer`` is a loaded tokenizer, or the folder holding one: then the cache's key is the
    folder's files and the tokenizer is loaded only when the cache misses (a hit imports neither
    transformers nor datasets).

    The cache is the folder ``cache_dir/data-<key>`` (``cache_key``; layout in
    ``launcher.train.data.rows``), and the returned rows are read from it memory-mapped, by the
    process that built it too. ``store`` (the machine-wide ``<LAUNCHER_CACHE>/data``) keeps a
    copy of every folder built, and one found there is hard-linked into ``cache_dir`` instead of
    being built again: the same data, tokenizer and ``data`` settings are tokenized once per
    machine, not once per run.

    Safe to call from every rank at once: the first process to take
    the ``fcntl`` lock beside the folder builds it (temp folder, then rename); the others block
    on the lock, then map the folder. A torn or unreadable folder is rebuilt. No
    torch.distributed call is made. (On a shared file system the lock needs working POSIX/flock
    locking, as NFSv4 and Lustre with ``flock`` have; a node-local cache_dir avoids the question.)
    """
    import fcntl

    check_data_path(data_path)  # before the cache folder is made: a missing file leaves nothing behind
    if isinstance(tokenizer, (str, os.PathLike)) and not Path(tokenizer).expanduser().is_dir():
        tokenizer = read_tokenizer(spec, str(tokenizer))  # a hub name: its one line when it cannot load
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(spec, tokenizer, data_path)[:32]
    path = cache_dir / f"data-{key}"
    if path.exists():
        hit = _load_cache(path)
        if hit is not None:
            return hit
    lock_path = cache_dir / f"data-{key}.lock"
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if path.exists():
                hit = _load_cache(path)
                if hit is not None:
                    return hit
            hit = _from_store(path, store)
            if hit is not None:
                return hit
            _save_cache(path, _build(spec, tokenizer, data_path))
            try:
                prepared = _open_cache(path)
            except Exception as e:  # noqa: BLE001 - e.g. a file system that cannot mmap
                raise JobError(f"data cache: {path}: cannot read it back after writing it "
                               f"({type(e).__name__}: {e})") from None
            prepared.cache_hit = False
            _share(path, store)
            return prepared
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
