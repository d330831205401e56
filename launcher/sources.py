"""Where a job's model, tokenizer and data come from: local paths, ``demo:`` assets built here,
or Hugging Face Hub ids found in the local Hub cache. The one resolver every stage uses."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from launcher.errors import JobError

DEMO_PREFIX = "demo:"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+\Z")


@dataclass(frozen=True)
class JobPaths:
    """What the ranks open: folders and files (demo assets built, hub ids as given)."""

    model: str
    tokenizer: str
    data: str
    replay: Optional[str] = None  # data.replay.path
    general: Optional[str] = None  # eval.general_data


def _absolute(p: Optional[str]) -> Optional[str]:
    if p is None or p.startswith(DEMO_PREFIX):
        return p
    q = Path(p).expanduser()
    return str(q.resolve()) if q.exists() else p


def absolute_paths(spec):
    """The job with model, tokenizer, data, NVMe and intensity-forecast paths that exist here made
    absolute, so the run directory means the same thing from any working directory (and on every
    node of a shared filesystem). Hub ids and demo: names are left as they are."""
    model = spec.model.model_copy(update={"path": _absolute(spec.model.path),
                                          "tokenizer": _absolute(spec.model.tokenizer)})
    replay = spec.data.replay.model_copy(update={"path": _absolute(spec.data.replay.path)}) if spec.data.replay else None
    data = spec.data.model_copy(update={"path": _absolute(spec.data.path), "replay": replay})
    ev = spec.eval.model_copy(update={"general_data": _absolute(spec.eval.general_data)})
    parallel = spec.parallel.model_copy(update={"nvme_path": _absolute(spec.parallel.nvme_path)})
    report = spec.report.model_copy(update={"intensity_forecast": _absolute(spec.report.intensity_forecast)})
    return spec.model_copy(update={"model": model, "data": data, "parallel": parallel, "report": report, "eval": ev,
                                   "output_dir": str(Path(spec.output_dir).expanduser().resolve())})


def job_paths(spec) -> JobPaths:
    """demo: names resolved to the assets (built on first use); hub ids to their snapshot folders
    in the local Hugging Face cache (never downloaded here: launcher.hub.fetch did that before any
    rank started); other paths unchanged."""
    from launcher.demo import resolve_data_path, resolve_model_path
    from launcher.hub import local_snapshot

    hub = {ref.field: local_snapshot(ref) for ref in hub_refs(spec)}
    model = hub.get("model.path") or resolve_model_path(spec.model.path)
    tok = spec.model.tokenizer
    tok = model if tok in (None, spec.model.path) else hub.get("model.tokenizer") or resolve_model_path(tok)
    replay, general = spec.data.replay.path if spec.data.replay else None, spec.eval.general_data
    return JobPaths(model=model, tokenizer=tok, data=hub.get("data.path") or resolve_data_path(spec.data.path),
                    replay=hub.get("data.replay.path") or (resolve_data_path(replay) if replay else None),
                    general=hub.get("eval.general_data") or (resolve_data_path(general) if general else None))


def hub_refs(spec) -> list:
    """The job's hub ids (launcher.hub.HubRef): model.path and model.tokenizer when they name one
    (org/name, with model.revision for the model) and the data sets named hf://datasets/org/name[@revision]
    (data.path, data.replay.path, eval.general_data)."""
    from launcher.hub import HubRef, dataset_ref

    refs = [HubRef("model.path", spec.model.path, "model", spec.model.revision)] if is_hub_id(spec.model.path) else []
    tok = spec.model.tokenizer
    if tok and tok != spec.model.path and is_hub_id(tok):
        refs.append(HubRef("model.tokenizer", tok, "model"))
    for field, path in (("data.path", spec.data.path),
                        ("data.replay.path", spec.data.replay.path if spec.data.replay else None),
                        ("eval.general_data", spec.eval.general_data)):
        ref = dataset_ref(path, field) if path else None
        if ref is not None:
            refs.append(ref)
    return refs


def is_hub_id(path: str) -> bool:
    return bool(_HUB_ID.match(path)) and not Path(path).expanduser().exists()


def cached_hub_folder(repo_id: str, filename: str = "config.json", revision: Optional[str] = None) -> Optional[Path]:
    """The snapshot folder of ``repo_id`` (at ``revision``: a branch, tag or commit; default main)
    in the local Hub cache holding ``filename``, or None. Nothing is downloaded."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return Path(found).parent if isinstance(found, str) else None


def model_config_source(spec) -> Union[dict, Path, None]:
    """Where the plan reads the model's shape: the demo model's config (a dict), a folder holding
    config.json (local, or a hub id in the local cache), or None when nothing here knows it."""
    path = spec.model.path
    if path.startswith(DEMO_PREFIX):
        from launcher.demo import demo_model_config, resolve_model_path

        resolve_model_path(path)  # an unknown demo name is an error here, not later
        return demo_model_config()
    folder = Path(path).expanduser()
    if folder.is_dir():
        cfg = folder / "config.json"
        if not cfg.is_file():
            raise JobError(f"model.path: {folder}: no config.json in the folder; give the folder a model's "
                           "save_pretrained wrote (config.json, weights, tokenizer)")
        try:
            json.loads(cfg.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            line = getattr(e, "lineno", None)
            raise JobError(f"{cfg}{f':{line}' if line else ''}: not valid JSON "
                           f"({getattr(e, 'msg', str(e))}); fix or replace the model's config.json") from None
        return folder
    if folder.exists():
        raise JobError(f"model.path: {folder}: a file, not a model folder; give the folder holding config.json")
    if is_hub_id(path):
        return cached_hub_folder(path, revision=spec.model.revision)
    return None  # not here: the plan goes on without the model's shape (a run stops at require_model_folder)


def require_model_folder(spec) -> None:
    """Before any rank starts (`launcher run`, `plan --with-data`): a local model.path is a model
    folder on this machine. demo: names are built here, hub ids fetched by launcher.hub."""
    path = spec.model.path
    if path.startswith(DEMO_PREFIX) or is_hub_id(path):
        return
    if model_config_source(spec) is None:
        raise JobError(f"model.path: {path}: no such folder; give a model folder (config.json and weights), a hub "
                       "id (ORG/NAME), or demo:tiny-llama")


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json",
                    "vocab.txt", "tokenizer.tiktoken")


def check_tokenizer_source(field: str, path: str) -> None:
    """The tokenizer at ``path`` (``field`` names where the job set it) is a folder with tokenizer
    files, or a hub id (launcher.hub says when it is not in the local cache). One line otherwise."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        if not any((folder / n).is_file() for n in _TOKENIZER_FILES):
            raise JobError(f"{field}: {folder}: no tokenizer files (tokenizer.json, tokenizer_config.json, "
                           "tokenizer.model); save the tokenizer into it (tokenizer.save_pretrained) or set "
                           "model.tokenizer to a folder that has one")
        return
    if folder.exists():
        raise JobError(f"{field}: {folder}: a file, not a tokenizer folder; give the folder holding tokenizer.json")
    if not is_hub_id(path):
        raise JobError(f"{field}: {path}: no such folder; give a tokenizer folder, a hub id (ORG/NAME), or "
                       "demo:tiny-llama")


def model_info(spec) -> Any:
    """The job's ModelInfo (exact counts for its method), or None when the model is unknown here."""
    from launcher.modelinfo import job_model_info

    return job_model_info(spec, model_config_source(spec))
