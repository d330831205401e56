"""Training data: load, tokenize, split, pack, cache, collate and schedule.

Pipeline (``prepare_data`` runs the first four steps once and caches the result)::

    load_rows -> tokenize_rows -> split_train_eval -> pack (data.packing) -> collate
                                                   \\-> BatchSchedule picks the rows of every step

Row dicts hold plain Python lists: ``input_ids``, ``labels`` (-100 = no loss) and, after
``prepare_data``, ``position_ids`` and ``n_docs``. Labels are *not* shifted: like Hugging Face
causal LMs, the loss compares ``logits[..., :-1]`` with ``labels[..., 1:]``, so ``labels[0]`` of a
row never counts.

Packed attention (checked on transformers 5.x, see ``packed_attention_supported``): a packed
batch must be run with ``attention_mask=None``, the packed ``position_ids`` and
``use_cache=False``. transformers then finds the document boundaries in ``position_ids``
(``masking_utils.find_packed_sequence_indices``) and builds a block-diagonal causal mask for the
``eager``, ``sdpa`` and ``flex_attention`` implementations. With ``use_cache`` left at the config
default (True for Llama) the model creates a ``DynamicCache`` even in training and the packing
detection is skipped: documents silently attend to each other. ``flash_attention_2/3`` read the
boundaries from ``position_ids`` only when the batch has a single row.

torch, transformers and datasets are imported inside functions: importing this module is cheap.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from launcher.errors import JobError

if TYPE_CHECKING:  # pragma: no cover
    from launcher.spec import DataSpec, JobSpec

IGNORE_INDEX = -100
# Bump when the cached layout or any tokenization rule changes: old cache files then miss.
CACHE_VERSION = 1
SUPPORTED = (".jsonl", ".json", ".parquet", ".csv")
PACKED_ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention")
_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")


# --------------------------------------------------------------------------- loading


def _required_fields(data: "DataSpec") -> list[tuple[str, str]]:
    """(field name in the rows, DataSpec option naming it) for the data format."""
    if data.format == "text":
        return [(data.text_field, "text_field")]
    if data.format == "instruction":
        return [(data.prompt_field, "prompt_field"), (data.response_field, "response_field")]
    return [(data.messages_field, "messages_field")]


def _jsonl_line_of(path: Path, row_index: int) -> Optional[int]:
    """1-based line number of the ``row_index``-th (0-based) non-blank line of a jsonl file."""
    seen = -1
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                seen += 1
                if seen == row_index:
                    return lineno
    return None


def _first_bad_json_line(path: Path) -> Optional[tuple[int, str]]:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                return lineno, str(e).split("\n")[0]
            if not isinstance(obj, dict):
                return lineno, f"expected a JSON object, got {type(obj).__name__}"
    return None


def _has_content(path: Path) -> bool:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            if chunk.strip():
                return True
    return False


def _where(path: Path, kind: str, index: int) -> str:
    """``file:line N`` for jsonl (1-based file line), ``file: row N`` (1-based) for the rest."""
    if kind == "jsonl":
        line = _jsonl_line_of(path, index)
        if line is not None:
            return f"{path}:{line}"
    return f"{path}: row {index + 1}"


def _check_row(row: dict, data: "DataSpec") -> Optional[str]:
    """Why ``row`` cannot be used for ``data.format`` (None when it can)."""
    for name, option in _required_fields(data):
        value = row.get(name)
        if value is None:
            have = ", ".join(sorted(k for k, v in row.items() if v is not None)) or "none"
            return (f"missing field {name!r} needed by data.format {data.format!r} "
                    f"(fields present: {have}); rename it in the data or set data.{option}")
        if data.format in ("text", "instruction"):
            if not isinstance(value, str):
                return f"field {name!r} must be a string, got {type(value).__name__}"
        else:
            if not isinstance(value, list) or not value:
                return f"field {name!r} must be a non-empty list of {{role, content}} messages"
            for i, m in enumerate(value):
                if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                        or not isinstance(m.get("content"), str):
                    return (f"field {name!r}: message {i + 1} must have string 'role' and "
                            f"'content', got {m!r:.80}")
            if not any(m["role"] == "assistant" for m in value):
                return f"field {name!r}: no assistant message, so nothing to train on"
    return None


def load_rows(data: "DataSpec", data_path: str) -> list[dict]:
    """Rows of the data set at ``data_path`` (already resolved: no ``demo:`` names here).

    Accepts .jsonl / .json (JSON lines or one JSON array), .parquet, .csv, or a folder written
    by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (its "train" split). Keeps the
    first ``data.num_samples`` rows, then checks that every row has the fields that
    ``data.format`` needs. Every problem is a one-line ``JobError`` naming the file and line
    (jsonl) or row (other formats).
    """
    import datasets

    datasets.disable_progress_bars()
    path = Path(data_path)
    if not path.exists():
        raise JobError(f"data.path: {path} not found")
    if path.is_dir():
        kind = "folder"
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - anything here means "not a saved data set"
            raise JobError(f"data.path: {path}: not a folder written by Dataset.save_to_disk "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise JobError(f"data.path: {path}: saved DatasetDict has no 'train' split "
                               f"(splits: {', '.join(loaded)})")
            loaded = loaded["train"]
        ds = loaded
    else:
        ext = path.suffix.lower()
        if ext not in SUPPORTED:
            raise JobError(f"data.path: {path}: unsupported file type {ext or '(none)'!r}; use "
                           ".jsonl, .json, .parquet, .csv or a folder saved with Dataset.save_to_disk")
        if path.stat().st_size == 0:
            raise JobError(f"data.path: {path}: the file is empty")
        kind = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}[ext]
        builder = "json" if kind in ("jsonl", "json") else kind
        level = datasets.logging.get_verbosity()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # we report errors ourselves
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as e:  # noqa: BLE001
            if kind == "jsonl":
                bad = _first_bad_json_line(path)
                if bad is not None:
                    raise JobError(f"{path}:{bad[0]}: not valid JSON ({bad[1]}); "
                                   "each line must be one JSON object") from None
            if "corresponds to no data" in str(e) or isinstance(e, StopIteration) \
                    or not _has_content(path):
                raise JobError(f"data.path: {path}: the data set is empty (0 rows)") from None
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            cause = e.__cause__ or e.__context__
            if cause is not None and str(cause).strip():
                msg = f"{msg}: {str(cause).strip().splitlines()[0]}"
            raise JobError(f"{path}: cannot read as {kind}: {msg}") from None
        finally:
            datasets.logging.set_verbosity(level)
    if data.num_samples is not None and len(ds) > data.num_samples:
        ds = ds.select(range(data.num_samples))
    rows = ds.to_list()
    if not rows:
        raise JobError(f"data.path: {path}: the data set is empty (0 rows)")
    for i, row in enumerate(rows):
        problem = _check_row(row, data)
        if problem is not None:
            bad = _first_bad_json_line(path) if kind == "jsonl" else None
            if bad is not None:
                raise JobError(f"{path}:{bad[0]}: not valid JSON ({bad[1]}); "
                               "each line must be one JSON object")
            raise JobError(f"{_where(path, kind, i)}: {problem}")
    return rows


# --------------------------------------------------------------------------- tokenizing


def _has_chat_generation_markers(tokenizer) -> bool:
    tmpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tmpl, dict):
        tmpl = tmpl.get("default") or next(iter(tmpl.values()), None)
    return bool(tmpl) and bool(_GENERATION_RE.search(tmpl))


def _encode_many(tokenizer, texts: list[str], chunk: int = 1000) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(texts), chunk):
        enc = tokenizer(texts[i:i + chunk], add_special_tokens=False)
        out.extend(list(ids) for ids in enc["input_ids"])
    return out


def _tokenize(rows: list[dict], tokenizer, data: "DataSpec") -> tuple[list[dict], dict]:
    """Examples and counts: ``truncated`` (longer than max_seq_len, cut) and ``dropped``
    (nothing left to learn after truncation: no label past position 0)."""
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    examples: list[dict] = []
    if data.format == "text":
        bodies = _encode_many(tokenizer, [r[data.text_field] for r in rows])
        for ids in bodies:
            ids = ([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])
            examples.append({"input_ids": ids, "labels": list(ids)})
    elif data.format == "instruction":
        if eos is None:
            raise JobError("data.format: 'instruction' appends the tokenizer's eos token after each "
                           "response, but this tokenizer has none; set model.tokenizer to one with an "
                           "eos_token or use data.format: text")
        prompts = _encode_many(tokenizer, [r[data.prompt_field] for r in rows])
        responses = _encode_many(tokenizer, [r[data.response_field] for r in rows])
        for p, r in zip(prompts, responses):
            head = ([bos] if bos is not None else []) + p
            tail = r + [eos]
            examples.append({"input_ids": head + tail, "labels": [IGNORE_INDEX] * len(head) + tail})
    elif data.format == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise JobError("data.format: 'chat' needs a tokenizer with a chat template, and this one "
                           "has none; set model.tokenizer to a chat tokenizer or use data.format: instruction")
        if not _has_chat_generation_markers(tokenizer):
            raise JobError("data.format: 'chat' masks the loss to assistant tokens with the chat "
                           "template's {% generation %} markers, and this tokenizer's template has "
                           "none; use a template with them or data.format: instruction")
        for r in rows:
            enc = tokenizer.apply_chat_template(
                r[data.messages_field], tokenize=True, return_dict=True,
                return_assistant_tokens_mask=True,
            )
            ids = list(enc["input_ids"])
            mask = list(enc["assistant_masks"])
            labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
            examples.append({"input_ids": ids, "labels": labels})
    else:  # pragma: no cover - DataSpec validates the format
        raise JobError(f"data.format: unknown format {data.format!r}")

    truncated = dropped = 0
    kept: list[dict] = []
    for ex in examples:
        if len(ex["input_ids"]) > data.max_seq_len:
            truncated += 1
            ex = {"input_ids": ex["input_ids"][:data.max_seq_len], "labels": ex["labels"][:data.max_seq_len]}
        if label_tokens(ex) == 0:
            dropped += 1
            continue
        kept.append(ex)
    return kept, {"truncated": truncated, "dropped": dropped}


def tokenize_rows(rows: list[dict], tokenizer, data: "DataSpec") -> list[dict]:
    """``{"input_ids", "labels"}`` per row; labels are -100 where no loss is taken.

    text: ``[bos] text [eos]`` (each when the tokenizer has it), loss on every token.
    instruction: ``[bos] prompt response eos``, loss on ``response eos`` only (prompt and
    response are encoded separately, so the boundary is exact).
    chat: ``apply_chat_template(..., return_assistant_tokens_mask=True)``, loss on the tokens
    inside the template's ``{% generation %}`` blocks only.
    Examples longer than ``data.max_seq_len`` are cut to it; examples left with no trainable
    label (e.g. a prompt longer than max_seq_len) are dropped. ``prepare_data`` reports both counts.
    """
    return _tokenize(rows, tokenizer, data)[0]


def label_tokens(row: dict) -> int:
    """Tokens this row contributes to the loss: ``labels[1:] != -100`` (the model shifts labels)."""
    return sum(1 for t in row["labels"][1:] if t != IGNORE_INDEX)


# --------------------------------------------------------------------------- split and pack


def split_train_eval(examples: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic split: ``round(n * eval_fraction)`` examples go to eval (at least 1 when the
    fraction is > 0 and n >= 2; never all of them). Which ones is decided by ``random.Random(seed)``;
    both parts keep the input order."""
    n = len(examples)
    k = round(n * eval_fraction) if eval_fraction > 0 else 0
    if eval_fraction > 0 and n >= 2:
        k = max(1, k)
    k = min(k, max(n - 1, 0))
    if k == 0:
        return list(examples), []
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    eval_idx = set(idx[:k])
    train = [ex for i, ex in enumerate(examples) if i not in eval_idx]
    ev = [ex for i, ex in enumerate(examples) if i in eval_idx]
    return train, ev


def pack(examples: list[dict], max_seq_len: int) -> list[dict]:
    """Greedy packing, in order, into rows of exactly ``max_seq_len`` tokens (the last row may be
    shorter; ``collate`` pads it). Every token appears exactly once.

    * ``position_ids`` restart at 0 at each document start, so transformers can find the
      boundaries (see the module docstring).
    * A document that does not fit in the space left is split: its first piece ends the row, the
      rest starts the next row with ``position_ids`` starting again at 0 (flash-attention needs
      every row to start at 0; for RoPE models only relative positions matter). The first token
      of the continuation is not trained (it would be ``labels[0]``, which the model's shift
      drops); its later tokens are trained without the earlier piece as context.
    * ``labels`` at every document start are -100: the last token of one document is never
      trained to predict the first token of the next.
    * ``n_docs``: documents that *start* in the row (so the sum over rows counts each once).
    """
    if max_seq_len < 1:
        raise ValueError("max_seq_len must be >= 1")
    rows: list[dict] = []
    cur: dict = {"input_ids": [], "labels": [], "position_ids": [], "n_docs": 0}

    def flush() -> None:
        nonlocal cur
        if cur["input_ids"]:
            rows.append(cur)
        cur = {"input_ids": [], "labels": [], "position_ids": [], "n_docs": 0}

    for ex in examples:
        ids, labels = ex["input_ids"], ex["labels"]
        if not ids:
            continue
        start = 0
        first = True
        while start < len(ids):
            space = max_seq_len - len(cur["input_ids"])
            if space == 0:
                flush()
                space = max_seq_len
            piece = ids[start:start + space]
            plab = list(labels[start:start + space])
            if first:
                plab[0] = IGNORE_INDEX
                cur["n_docs"] += 1
                first = False
            cur["input_ids"].extend(piece)
            cur["labels"].extend(plab)
            cur["position_ids"].extend(range(len(piece)))
            start += len(piece)
    flush()
    return rows


def _unpacked(examples: list[dict]) -> list[dict]:
    return [{"input_ids": ex["input_ids"], "labels": ex["labels"],
             "position_ids": list(range(len(ex["input_ids"]))), "n_docs": 1} for ex in examples]


# --------------------------------------------------------------------------- batches


def pad_id_for(tokenizer) -> int:
    """The id collate pads with: pad_token, else eos_token, else 0 (pads carry no loss and, with
    the position_ids collate gives them, are never attended to by real tokens)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def collate(rows: list[dict], pad_id: int, pad_to: Optional[int] = None) -> dict:
    """Right-pad ``rows`` to the longest row (or ``pad_to``) into torch tensors.

    Returns ``input_ids``, ``labels`` (-100 on padding), ``position_ids``, ``attention_mask``
    (1 real / 0 pad), all LongTensor [batch, length], and Python ints ``n_tokens`` (real
    tokens), ``n_padding``, ``n_label_tokens`` (``labels[:, 1:] != -100``, what the shifted loss
    counts), ``n_docs`` and ``packed`` (bool: some row holds more than one document).

    When ``packed`` is True, call the model with ``attention_mask=None`` (and ``use_cache=False``):
    passing the mask turns off transformers' packed-sequence detection and documents attend to
    each other.

    Padding gets ``position_ids`` 0, 1, 2, ...: a separate pseudo-document. So the batch is
    correct both with ``attention_mask`` (unpacked rows) and with ``attention_mask=None``
    (padding is then its own document that no real token attends to; eager/sdpa/flex only).
    """
    import torch

    if not rows:
        raise ValueError("collate: empty batch")
    longest = max(len(r["input_ids"]) for r in rows)
    length = longest if pad_to is None else pad_to
    if longest > length:
        raise ValueError(f"collate: a row has {longest} tokens, more than pad_to={pad_to}")
    b = len(rows)
    input_ids = torch.full((b, length), int(pad_id), dtype=torch.long)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((b, length), dtype=torch.long)
    attention_mask = torch.zeros((b, length), dtype=torch.long)
    n_tokens = 0
    n_docs = 0
    packed = False
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        n_tokens += n
        n_docs += int(r.get("n_docs", 1))
        input_ids[i, :n] = torch.tensor(r["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.tensor(r["labels"], dtype=torch.long)
        pos = r.get("position_ids")
        if pos is not None:
            position_ids[i, :n] = torch.tensor(pos, dtype=torch.long)
            packed = packed or (n > 1 and 0 in pos[1:])
        else:
            position_ids[i, :n] = torch.arange(n)
        if n < length:
            position_ids[i, n:] = torch.arange(length - n)
        attention_mask[i, :n] = 1
    n_label_tokens = int((labels[:, 1:] != IGNORE_INDEX).sum().item())
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "attention_mask": attention_mask,
        "n_tokens": n_tokens,
        "n_padding": b * length - n_tokens,
        "n_label_tokens": n_label_tokens,
        "n_docs": n_docs,
        "packed": packed,
    }


def packed_attention_supported(model: Any, micro_batch_size: int = 1) -> bool:
    """Whether ``model`` keeps packed documents apart given ``position_ids`` and
    ``attention_mask=None`` (call it with ``use_cache=False``).

    True for ``eager``, ``sdpa`` and ``flex_attention`` on transformers versions whose mask
    creation detects packing (``masking_utils.find_packed_sequence_indices``, transformers >= 4.5x
    / 5.x); for ``flash_attention_*`` only when ``micro_batch_size == 1`` (transformers reads
    boundaries from position_ids only for a single-row batch). False otherwise (e.g. an older
    transformers, or remote-code models that build their own masks): then train with
    ``data.packing: false``. Works on PEFT / DeepSpeed wrappers (follows ``.module``,
    ``.base_model``, ``.model`` to find ``.config``). A static check: it runs no forward.
    """
    try:
        from transformers import masking_utils
    except ImportError:
        return False
    if not hasattr(masking_utils, "find_packed_sequence_indices"):
        return False
    config = _find_config(model)
    if config is None:
        return False
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl in PACKED_ATTN_IMPLEMENTATIONS:
        return True
    if impl.startswith("flash_attention"):
        return micro_batch_size == 1
    return False


def _find_config(model: Any):
    seen = 0
    while model is not None and seen < 6:
        cfg = getattr(model, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            return cfg
        model = getattr(model, "module", None) or getattr(model, "base_model", None) \
            or getattr(model, "model", None)
        seen += 1
    return None


class BatchSchedule:
    """Which rows every rank uses in every micro-step. Pure Python, identical on every rank.

    Epoch ``e`` visits the rows in the order of a permutation from ``random.Random(seed + e)``.
    A global batch is ``micro_batch_size * grad_accum_steps * world_size`` rows: consecutive
    slices of that permutation, so the *set* of rows in optimizer step ``s`` depends only on the
    global batch size, not on how it is split over ranks and micro-steps.
    ``steps_per_epoch = n_rows // global_batch``: the last partial global batch of each epoch is
    dropped (a different row falls off in each epoch, as the permutation changes).
    Steps count from 0 across epochs; steps past ``epochs`` keep going into later epochs, so
    ``rows_for`` is defined for any step.
    """

    def __init__(self, n_rows: int, world_size: int, micro_batch_size: int, grad_accum_steps: int,
                 epochs: int, seed: int):
        for name, v, lo in (("n_rows", n_rows, 0), ("world_size", world_size, 1),
                            ("micro_batch_size", micro_batch_size, 1),
                            ("grad_accum_steps", grad_accum_steps, 1), ("epochs", epochs, 1)):
            if v < lo:
                raise ValueError(f"BatchSchedule: {name} must be >= {lo}, got {v}")
        self.n_rows = n_rows
        self.world_size = world_size
        self.micro_batch_size = micro_batch_size
        self.grad_accum_steps = grad_accum_steps
        self.epochs = epochs
        self.seed = seed
        self.global_batch = micro_batch_size * grad_accum_steps * world_size
        self.steps_per_epoch = n_rows // self.global_batch
        if self.steps_per_epoch == 0:
            raise JobError(
                f"data: the training set has {n_rows} rows but one global batch needs "
                f"{self.global_batch} (train.micro_batch_size {micro_batch_size} x "
                f"train.grad_accum_steps {grad_accum_steps} x {world_size} processes); use more data "
                "(data.num_samples, a lower data.eval_fraction, or data.packing: false, which gives "
                "one row per document), a smaller train.global_batch_size / micro_batch_size / "
                "grad_accum_steps, or fewer processes")
        self._perm_cache: dict[int, list[int]] = {}

    def total_steps(self, max_steps: Optional[int] = None) -> int:
        """``steps_per_epoch * epochs``, capped at ``max_steps`` when given."""
        total = self.steps_per_epoch * self.epochs
        return min(total, max_steps) if max_steps is not None else total

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def epoch_float(self, steps_done: int) -> float:
        """Epochs completed after ``steps_done`` optimizer steps (for the metrics' "epoch")."""
        return steps_done / self.steps_per_epoch

    def _perm(self, epoch: int) -> list[int]:
        p = self._perm_cache.get(epoch)
        if p is None:
            p = list(range(self.n_rows))
            random.Random(self.seed + epoch).shuffle(p)
            if len(self._perm_cache) > 2:
                self._perm_cache.clear()
            self._perm_cache[epoch] = p
        return p

    def global_rows(self, step: int) -> list[int]:
        """All row indices of optimizer step ``step`` (every rank, every micro-step)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        k = step % self.steps_per_epoch
        perm = self._perm(self.epoch_of(step))
        return perm[k * self.global_batch:(k + 1) * self.global_batch]

    def rows_for(self, step: int, micro: int, rank: int) -> list[int]:
        """Row indices rank ``rank`` uses in micro-step ``micro`` (0..grad_accum_steps-1) of
        optimizer step ``step``."""
        if not 0 <= micro < self.grad_accum_steps:
            raise ValueError(f"micro must be in [0, {self.grad_accum_steps}), got {micro}")
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {rank}")
        rows = self.global_rows(step)
        start = (micro * self.world_size + rank) * self.micro_batch_size
        return rows[start:start + self.micro_batch_size]


# --------------------------------------------------------------------------- prepare + cache


@dataclass
class PreparedData:
    """Rows ready for ``collate``: each has input_ids, labels, position_ids (lists) and n_docs.

    stats: documents (examples kept after tokenizing), train_documents, eval_documents,
    train_rows, eval_rows, train_tokens (real tokens in train rows), train_label_tokens
    (``label_tokens`` summed over train rows), eval_tokens, truncated (examples cut to
    max_seq_len), dropped (examples with nothing to train on after the cut), packed, max_seq_len.
    """

    train: list[dict]
    eval: list[dict]
    stats: dict = field(default_factory=dict)
    cache_path: Optional[str] = None
    cache_hit: bool = False


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


def cache_key(spec: "JobSpec", tokenizer, data_path: str) -> str:
    """sha256 over the data (file content, or a folder's names/sizes/mtimes), the tokenizer
    (vocab, normalisation, special tokens, chat template), ``spec.data`` and ``train.seed``."""
    parts = {
        "version": CACHE_VERSION,
        "data_source": _hash_data_source(Path(data_path)),
        "tokenizer": _tokenizer_fingerprint(tokenizer),
        "data_spec": spec.data.model_dump(mode="json"),
        "seed": spec.train.seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _rows_to_arrays(prefix: str, rows: list[dict]) -> dict:
    import numpy as np

    lens = np.fromiter((len(r["input_ids"]) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    total = int(offsets[-1])

    def flat(key: str):
        out = np.empty(total, dtype=np.int64)
        for r, a, b in zip(rows, offsets[:-1], offsets[1:]):
            out[a:b] = r[key]
        return out

    return {
        f"{prefix}_input_ids": flat("input_ids"),
        f"{prefix}_labels": flat("labels"),
        f"{prefix}_position_ids": flat("position_ids"),
        f"{prefix}_offsets": offsets,
        f"{prefix}_n_docs": np.fromiter((r["n_docs"] for r in rows), dtype=np.int64, count=len(rows)),
    }


def _arrays_to_rows(prefix: str, z) -> list[dict]:
    ids = z[f"{prefix}_input_ids"].tolist()
    labels = z[f"{prefix}_labels"].tolist()
    pos = z[f"{prefix}_position_ids"].tolist()
    off = z[f"{prefix}_offsets"].tolist()
    n_docs = z[f"{prefix}_n_docs"].tolist()
    return [{"input_ids": ids[a:b], "labels": labels[a:b], "position_ids": pos[a:b], "n_docs": n}
            for a, b, n in zip(off[:-1], off[1:], n_docs)]


def _save_cache(path: Path, prepared: PreparedData) -> None:
    import numpy as np

    arrays = {**_rows_to_arrays("train", prepared.train), **_rows_to_arrays("eval", prepared.eval)}
    arrays["stats_json"] = np.array(json.dumps(prepared.stats, sort_keys=True))
    import io

    from launcher.rundir import write_atomic

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue())


def _load_cache(path: Path) -> Optional[PreparedData]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            stats = json.loads(str(z["stats_json"]))
            return PreparedData(train=_arrays_to_rows("train", z), eval=_arrays_to_rows("eval", z),
                                stats=stats, cache_path=str(path), cache_hit=True)
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a torn or foreign file: rebuild it
        return None


def _build(spec: "JobSpec", tokenizer, data_path: str) -> PreparedData:
    data = spec.data
    rows = load_rows(data, data_path)
    # Split the raw rows (not the tokenized examples): load_rows + split_train_eval then gives the
    # same eval rows as here, whatever tokenizing drops.
    train_raw, eval_raw = split_train_eval(rows, data.eval_fraction, spec.train.seed)
    train_ex, c_train = _tokenize(train_raw, tokenizer, data)
    eval_ex, c_eval = _tokenize(eval_raw, tokenizer, data) if eval_raw else ([], {"truncated": 0, "dropped": 0})
    counts = {k: c_train[k] + c_eval[k] for k in c_train}
    if not train_ex:
        raise JobError(f"data.path: {data_path}: no training example has a token to train on after "
                       f"truncation to data.max_seq_len={data.max_seq_len} "
                       f"({counts['dropped']} dropped); raise data.max_seq_len")
    if data.packing:
        train, ev = pack(train_ex, data.max_seq_len), pack(eval_ex, data.max_seq_len)
    else:
        train, ev = _unpacked(train_ex), _unpacked(eval_ex)
    stats = {
        "documents": len(train_ex) + len(eval_ex),
        "train_documents": len(train_ex),
        "eval_documents": len(eval_ex),
        "train_rows": len(train),
        "eval_rows": len(ev),
        "train_tokens": sum(len(r["input_ids"]) for r in train),
        "train_label_tokens": sum(label_tokens(r) for r in train),
        "eval_tokens": sum(len(r["input_ids"]) for r in ev),
        "truncated": counts["truncated"],
        "dropped": counts["dropped"],
        "packed": bool(data.packing),
        "max_seq_len": data.max_seq_len,
    }
    return PreparedData(train=train, eval=ev, stats=stats)


def prepare_data(spec: "JobSpec", tokenizer, data_path: str, cache_dir: Path) -> PreparedData:
    """Load, tokenize, split and (with ``data.packing``) pack, cached in ``cache_dir``.

    The cache file is ``cache_dir/data-<key>.npz`` (``cache_key``). Safe to call from every
    rank at once: the first process to take the ``fcntl`` lock beside the file builds it (temp
    file, then ``os.replace``); the others block on the lock, then read the file. No
    torch.distributed call is made. (On a shared file system the lock needs working POSIX/flock
    locking, as NFSv4 and Lustre with ``flock`` have; a node-local cache_dir avoids the question.)
    """
    import fcntl

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(spec, tokenizer, data_path)[:32]
    path = cache_dir / f"data-{key}.npz"
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
            prepared = _build(spec, tokenizer, data_path)
            _save_cache(path, prepared)
            prepared.cache_path = str(path)
            prepared.cache_hit = False
            return prepared
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
