"""Training data: load, tokenize, split, pack, cache, collate and schedule.

Pipeline (``prepare_data`` runs the first four steps once and caches the result)::

    load_rows -> tokenize_rows -> split_train_eval -> pack (data.packing) -> collate
                                                   \\-> BatchSchedule picks the rows of every step

    load.py      load_rows: read the file or saved data set, check every row
    tokenize.py  tokenize_rows, label_tokens, pad_id_for, read_tokenizer
    pack.py      split_train_eval, pack
    collate.py   collate, packed_attention_supported (how a packed batch must be run)
    schedule.py  BatchSchedule (steps from launcher.plan.schedule)
    cache.py     prepare_data, cache_key, PreparedData: the locked build-once cache
    extra.py     prepare_job_data: the task's rows with data.replay's and eval.general_data's
    rows.py      Rows: the cached rows, memory-mapped and read a row at a time

Row dicts hold plain Python lists: ``input_ids``, ``labels`` (-100 = no loss) and, after
``prepare_data``, ``position_ids`` and ``n_docs``. Labels are *not* shifted: like Hugging Face
causal LMs, the loss compares ``logits[..., :-1]`` with ``labels[..., 1:]``, so ``labels[0]`` of a
row never counts. ``prepare_data`` returns its rows as ``Rows`` sequences over the memory-mapped
cache: indexing gives the same row dicts, and no rank holds the whole data set as lists.

torch, transformers, datasets and numpy are imported inside functions: importing this package
is cheap.
"""
from __future__ import annotations

from launcher.train.data.cache import CACHE_VERSION, PreparedData, cache_key, prepare_data
from launcher.facts.packing import PACKED_ATTN_IMPLEMENTATIONS, packing_problem
from launcher.train.data.collate import collate, packed_attention_supported
from launcher.train.data.extra import prepare_job_data
from launcher.train.data.load import SUPPORTED, load_rows
from launcher.train.data.pack import pack, split_train_eval
from launcher.train.data.rows import Rows
from launcher.train.data.schedule import BatchSchedule
from launcher.train.data.tokenize import IGNORE_INDEX, label_tokens, pad_id_for, read_tokenizer, tokenize_rows

__all__ = [
    "BatchSchedule", "CACHE_VERSION", "IGNORE_INDEX", "PACKED_ATTN_IMPLEMENTATIONS", "PreparedData", "Rows",
    "SUPPORTED", "cache_key", "collate", "label_tokens", "load_rows", "pack", "packed_attention_supported",
    "packing_problem", "pad_id_for", "prepare_data", "prepare_job_data", "read_tokenizer", "split_train_eval",
    "tokenize_rows",
]
