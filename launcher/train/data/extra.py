"""General text beside the task's data: the rows mixed back into training (``data.replay``) and
the rows whose perplexity measures forgetting (``eval.general_data``). Both are plain text,
tokenized like ``data.format: text`` and packed as the task's data is, through the same cache.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # pragma: no cover
    from launcher.spec import JobSpec
    from launcher.train.data.cache import PreparedData


def text_job(spec: "JobSpec", field: str, text_field: str) -> "JobSpec":
    """``spec`` with its data section describing the general text of ``field``: text format, every row
    kept for training (no eval split), the task's sequence length and packing."""
    from launcher.spec import DataSpec

    path = spec.data.replay.path if field == "data.replay.path" else spec.eval.general_data
    data = DataSpec(path=path, format="text", text_field=text_field, max_seq_len=spec.data.max_seq_len,
                    packing=spec.data.packing, eval_fraction=0.0, truncate=True)
    return spec.model_copy(update={"data": data})


def _prepare_text(spec: "JobSpec", field: str, text_field: str, tokenizer, path: str, cache_dir: Path,
                  store: Optional[Path]):
    from launcher.errors import JobError
    from launcher.train.data.cache import prepare_data

    option = "data.replay.text_field" if field == "data.replay.path" else "eval.general_text_field"
    try:
        return prepare_data(text_job(spec, field, text_field), tokenizer, path, cache_dir, store=store).train
    except JobError as e:  # the task's messages name data.*: say which file and key this is
        lines = (ln.replace("data.path:", f"{field}:", 1) if ln.startswith("data.") else f"{field}: {ln}"
                 for ln in e.lines)
        raise JobError(*(ln.replace("data.text_field", option) for ln in lines)) from None


class ConcatRows:
    """The task's rows, then the replay rows, as one sequence indexed as ``BatchSchedule`` indexes
    them (``len`` is the task's: an epoch is a pass over the task's rows)."""

    def __init__(self, task, replay):
        self.task, self.replay = task, replay

    def __len__(self) -> int:
        return len(self.task)

    def __getitem__(self, i: int) -> dict:
        n = len(self.task)
        return self.task[i] if i < n else self.replay[i - n]


def general_prefix(rows, max_tokens: int) -> list[dict]:
    """The first rows of ``rows`` holding at most ``max_tokens`` tokens (the first row at least)."""
    out, n = [], 0
    for i in range(len(rows)):
        r = rows[i]
        n += len(r["input_ids"])
        if out and n > max_tokens:
            break
        out.append(r)
    return out


def prepare_job_data(spec: "JobSpec", paths, tokenizer, cache_dir: Path, *,
                     store: Optional[Path] = None) -> "PreparedData":
    """The task's rows (``prepare_data``) with, where the job asks for them, ``replay`` (every row of
    data.replay.path) and ``general`` (eval.general_data's first eval.general_max_tokens tokens)."""
    from launcher.train.data.cache import prepare_data

    prepared = prepare_data(spec, tokenizer, paths.data, cache_dir, store=store)
    if isinstance(tokenizer, (str, os.PathLike)) and (spec.data.replay or spec.eval.general_data):
        from launcher.train.data.tokenize import read_tokenizer

        tokenizer = read_tokenizer(spec, str(tokenizer))  # once for both
    if spec.data.replay:
        prepared.replay = _prepare_text(spec, "data.replay.path", spec.data.replay.text_field, tokenizer,
                                        paths.replay, cache_dir, store)
    if spec.eval.general_data:
        rows = _prepare_text(spec, "eval.general_data", spec.eval.general_text_field, tokenizer, paths.general,
                             cache_dir, store)
        prepared.general = general_prefix(rows, spec.eval.general_max_tokens)
    return prepared
