"""Hugging Face Hub ids: fetched into the local Hugging Face cache once, before any rank starts,
then found there without the network.

* a model or tokenizer ``org/name`` (``model.revision``: a branch, tag or commit);
* a data set ``hf://datasets/org/name[@revision]`` (``data.config``, ``data.split``).

``fetch`` runs where the job is launched (`launcher run`, in launcher.prepare) or on Slurm's first
node before ``srun`` (`launcher fetch`, a line of job.sbatch); ``local_snapshot`` is what every
later stage uses (``launcher.sources.job_paths``): the snapshot folder in the cache, never a
download, so the ranks run with ``HF_HUB_OFFLINE=1``. The cache is huggingface_hub's own
(``HF_HUB_CACHE``, ``HF_HOME``), so a model fetched by any other tool is found too.

huggingface_hub and datasets are imported inside the functions: importing this module is cheap.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from launcher.errors import JobError

HF_DATASETS_PREFIX = "hf://datasets/"
_DATASET_ID = re.compile(r"hf://datasets/([A-Za-z0-9][\w.-]*/[\w.-]+?)(?:@([^\s@]+))?/?\Z")

# What a training run never reads: other frameworks' weights and exports. A repository with
# safetensors weights also skips its PyTorch pickles (*.bin, *.pt, *.pth), which are the same weights.
MODEL_IGNORE = ["*.onnx", "*.onnx_data", "*.gguf", "*.msgpack", "*.h5", "*.tflite", "*.ot", "*.mlmodel",
                "*.nemo", "onnx/*", "coreml/*", "openvino/*", "original/*"]
PICKLED_WEIGHTS = ["*.bin", "*.pt", "*.pth"]


@dataclass(frozen=True)
class HubRef:
    """One hub id of a job: the field naming it, the repository and the revision asked for."""

    field: str  # model.path, model.tokenizer, data.path, data.replay.path or eval.general_data
    repo_id: str
    repo_type: str  # "model" or "dataset"
    revision: Optional[str] = None

    @property
    def name(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id

    def download_command(self) -> str:
        kind = " --repo-type dataset" if self.repo_type == "dataset" else ""
        rev = f" --revision {self.revision}" if self.revision else ""
        return f"hf download{kind} {self.repo_id}{rev}"


def dataset_ref(path: str, field: str = "data.path") -> Optional[HubRef]:
    """``hf://datasets/org/name[@revision]`` (the job's ``field``) as a HubRef; None for anything else."""
    if not path.startswith(HF_DATASETS_PREFIX):
        return None
    m = _DATASET_ID.match(path)
    if not m:
        raise JobError(f"{field}: {path!r} is not a hub data set id; write hf://datasets/org/name "
                       "(optionally @revision)")
    return HubRef(field, m.group(1), "dataset", m.group(2))


def _cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _not_cached(ref: HubRef, why: str = "") -> JobError:
    why = why or (" and HF_HUB_OFFLINE=1 forbids downloading it" if _offline() else "")
    return JobError(f"{ref.field}: {ref.name} is not in the local Hugging Face cache ({_cache_dir()}){why}; "
                    f"run once with network access, or fetch it first: {ref.download_command()}")


def _fetch_error(ref: HubRef, e: Exception) -> JobError:
    """One line for whatever snapshot_download raised."""
    from huggingface_hub import errors

    kind = "data set" if ref.repo_type == "dataset" else "model"
    if isinstance(e, errors.RevisionNotFoundError):
        field = "model.revision" if ref.repo_type == "model" else ref.field
        return JobError(f"{field}: {ref.revision!r} is not a branch, tag or commit of the {kind} {ref.repo_id}")
    if isinstance(e, errors.GatedRepoError):
        return JobError(f"{ref.field}: {ref.repo_id} is gated: accept its terms on the Hub, then log in "
                        "(hf auth login, or set HF_TOKEN)")
    if isinstance(e, errors.RepositoryNotFoundError):
        local = " (nor a local folder by that name)" if ref.repo_type == "model" else ""
        return JobError(f"{ref.field}: {ref.repo_id}: no such {kind} on the Hugging Face Hub{local}, or it is "
                        "private: check the name, or log in (hf auth login, or set HF_TOKEN)")
    if isinstance(e, errors.LocalEntryNotFoundError):
        return _not_cached(ref, "" if _offline() else f" and the Hub cannot be reached ({_first_line(e.__cause__ or e)})")
    return JobError(f"{ref.field}: fetching {ref.name} into {_cache_dir()} failed: {type(e).__name__}: "
                    f"{_first_line(e)}")


def local_snapshot(ref: HubRef) -> str:
    """The snapshot folder of ``ref`` in the local cache (nothing is downloaded), or one line saying
    it is not there and how to get it."""
    from huggingface_hub import snapshot_download

    try:
        # allow_patterns=[]: where the cache keeps the repository's file list (recent huggingface_hub),
        # check none of it: a fetch skips files on purpose (MODEL_IGNORE), and the loaders say what is missing
        return snapshot_download(ref.repo_id, repo_type=ref.repo_type, revision=ref.revision,
                                 local_files_only=True, allow_patterns=[])
    except Exception as e:  # noqa: BLE001 - every failure here is "not in the cache"
        from huggingface_hub import errors

        if isinstance(e, errors.LocalEntryNotFoundError):
            raise _not_cached(ref) from None
        raise _fetch_error(ref, e) from None


def _ignore_patterns(ref: HubRef) -> Optional[list[str]]:
    if ref.repo_type != "model":
        return None
    from huggingface_hub import HfApi

    try:
        files = HfApi().list_repo_files(ref.repo_id, revision=ref.revision)
    except Exception:  # noqa: BLE001 - snapshot_download reports the same problem, in its words
        return MODEL_IGNORE
    return MODEL_IGNORE + PICKLED_WEIGHTS if any(f.endswith(".safetensors") for f in files) else MODEL_IGNORE


def fetch(refs: list[HubRef], echo: Optional[Callable[[str], None]] = None) -> dict[str, str]:
    """Download every ref into the local cache (files already there are not fetched again) and
    return {field: snapshot folder}. With HF_HUB_OFFLINE=1 this only checks the cache."""
    from huggingface_hub import snapshot_download

    out = {}
    for ref in refs:
        if _offline():
            out[ref.field] = local_snapshot(ref)
            continue
        if echo:
            echo(f"fetching {ref.repo_type} {ref.name} into the Hugging Face cache ({_cache_dir()})")
        try:
            out[ref.field] = snapshot_download(ref.repo_id, repo_type=ref.repo_type, revision=ref.revision,
                                               ignore_patterns=_ignore_patterns(ref))
        except Exception as e:  # noqa: BLE001 - turned into one line
            raise _fetch_error(ref, e) from None
    return out


def load_split(ref: HubRef, folder: str, config: Optional[str], split: str):
    """The ``split`` of a data set snapshot (``config``: one of the configurations its card
    declares), read by datasets from the cached files: parquet, jsonl, json, csv... Any problem
    is one line naming the field."""
    import datasets

    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # we report errors ourselves
    try:
        try:
            builder = datasets.load_dataset_builder(folder, name=config)
        except Exception as e:  # noqa: BLE001
            m = re.search(r"Available: \[(.*)\]", str(e)) if config else None
            if m:
                raise JobError(f"data.config: {config!r} is not a configuration of {ref.name}; its configurations: "
                               f"{m.group(1).replace(chr(39), '')}") from None
            raise JobError(f"data.path: {ref.name}: {_first_line(e)}") from None
        splits = sorted(str(s) for s in (builder.config.data_files or {}))
        if splits and split not in splits:
            raise JobError(f"data.split: {split!r} is not a split of {ref.name}"
                           f"{f' ({config})' if config else ''}; its splits: {', '.join(splits)}")
        try:
            return datasets.load_dataset(folder, name=config, split=split)
        except Exception as e:  # noqa: BLE001
            raise JobError(f"data.path: {ref.name}: cannot read split {split!r}: {_first_line(e)}") from None
    finally:
        datasets.logging.set_verbosity(level)
