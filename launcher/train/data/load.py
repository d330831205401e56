"""Reading the data set: ``load_rows`` and the checks that give every problem as one line naming
the file and line (jsonl) or row (other formats).

datasets is imported inside ``load_rows``: importing this module is cheap.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from launcher.errors import JobError

if TYPE_CHECKING:  # pragma: no cover
    from launcher.spec import DataSpec

SUPPORTED = (".jsonl", ".json", ".parquet", ".csv")


def _required_fields(data: "DataSpec") -> list[tuple[str, str]]:
    """(field name in the rows, DataSpec option naming it) for the data format."""
    if data.format == "text":
        return [(data.text_field, "text_field")]
    if data.format == "instruction":
        return [(data.prompt_field, "prompt_field"), (data.response_field, "response_field")]
    if data.format == "classification":
        return [(data.text_field, "text_field"), (data.label_field, "label_field")]
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


def _first_bad_utf8(path: Path) -> Optional[tuple[int, int, int]]:
    """(1-based line, 1-based column, byte) of the first byte that is not UTF-8, or None."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return lineno, e.start + 1, line[e.start]
    return None


def _not_utf8(path: Path, kind: str) -> JobError:
    bad = _first_bad_utf8(path) if kind in ("jsonl", "json", "csv") else None
    if bad is None:
        return JobError(f"data.path: {path}: a text field is not valid UTF-8; save the data with UTF-8 text")
    return JobError(f"{path}:{bad[0]}: not valid UTF-8 (byte 0x{bad[2]:02x} at column {bad[1]}); save the file "
                    "as UTF-8 (for example iconv -f latin1 -t utf-8)")


def _array_line(path: Path) -> Optional[int]:
    """The line a .jsonl file opens a JSON array on (``[`` first), or None: JSON lines hold objects."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                return lineno if line.lstrip().startswith(b"[") else None
    return None


def check_data_path(data_path: str) -> None:
    """Before anything is read or written for the data: it is here."""
    if not Path(data_path).exists():
        raise JobError(f"data.path: {data_path}: no such file or folder; give a .jsonl, .json, .parquet or .csv "
                       "file, a folder saved with Dataset.save_to_disk, or demo:arithmetic")


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
        if data.format == "classification":
            if option == "text_field" and (not isinstance(value, str) or not value.strip()):
                return f"field {name!r} must be a non-empty string, got {value!r:.40}"
            if option == "label_field":
                problem = _label_problem(value, data)
                if problem:
                    return f"field {name!r}: {problem}"
        elif data.format in ("text", "instruction"):
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


def _label_problem(value, data: "DataSpec") -> Optional[str]:
    """Why ``value`` is not a class label of ``data`` (None when it is one)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return f"a label is a class name or an integer id, got {value!r:.40}"
    if isinstance(value, int):
        if value < 0 or (data.labels is not None and value >= len(data.labels)):
            bound = f"0-{len(data.labels) - 1} (data.labels has {len(data.labels)})" if data.labels else "0 or more"
            return f"label id {value} is out of range: ids are {bound}"
    elif data.labels is not None and value not in data.labels:
        return f"label {value!r} is not in data.labels ({', '.join(data.labels)}); add it there or fix the row"
    return None


def label_names(rows: list[dict], data: "DataSpec") -> list[str]:
    """The class names in id order: ``data.labels``, else the sorted set of names seen (integer ids
    0..max, named by their number). Rows already checked by ``load_rows``."""
    if data.labels is not None:
        return list(data.labels)
    seen = {r[data.label_field] for r in rows}
    if all(isinstance(v, int) for v in seen):
        return [str(i) for i in range(max(seen) + 1)]
    if any(isinstance(v, int) for v in seen):
        raise JobError(f"data.label_field: {data.label_field!r} mixes class names and integer ids; use one or "
                       "the other, or list the names in data.labels (integers then index them)")
    return sorted(seen)


def label_id(value, names: list[str]) -> int:
    return value if isinstance(value, int) else names.index(value)


def _check_classes(rows: list[dict], data: "DataSpec", path: Path) -> None:
    """At least two classes among the rows."""
    names = label_names(rows, data)
    used = {label_id(r[data.label_field], names) for r in rows}
    if len(used) < 2:
        only = names[next(iter(used))]
        raise JobError(f"data.path: {path}: every row has label {only!r}: a classifier needs at least two classes "
                       f"in field {data.label_field!r}")


def load_rows(data: "DataSpec", data_path: str) -> list[dict]:
    """Rows of the data set at ``data_path`` (already resolved: no ``demo:`` names here).

    Accepts .jsonl / .json (JSON lines or one JSON array), .parquet, .csv, or a folder written
    by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (its ``data.split``), or the cached
    snapshot of a hub data set (``hf://datasets/...``: launcher.hub.load_split). Keeps the
    first ``data.num_samples`` rows, then checks that every row has the fields that
    ``data.format`` needs. Every problem is a one-line ``JobError`` naming the file and line
    (jsonl) or row (other formats).
    """
    import datasets

    from launcher.hub import dataset_ref, load_split

    datasets.disable_progress_bars()
    path = Path(data_path)
    check_data_path(data_path)
    hub = dataset_ref(data.path)
    if hub is not None:  # the folder is the data set's snapshot in the local Hugging Face cache
        kind, ds = "hub", load_split(hub, str(path), data.config, data.split)
    elif path.is_dir():
        kind = "folder"
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - anything here means "not a saved data set"
            raise JobError(f"data.path: {path}: not a folder written by Dataset.save_to_disk "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        if isinstance(loaded, datasets.DatasetDict):
            if data.split not in loaded:
                raise JobError(f"data.split: {data.split!r} is not a split of the DatasetDict saved in {path} "
                               f"(splits: {', '.join(loaded)})")
            loaded = loaded[data.split]
        ds = loaded
    else:
        ext = path.suffix.lower()
        if ext not in SUPPORTED:
            raise JobError(f"data.path: {path}: unsupported file type {ext or '(none)'!r}; use "
                           ".jsonl, .json, .parquet, .csv or a folder saved with Dataset.save_to_disk")
        if path.stat().st_size == 0:
            raise JobError(f"data.path: {path}: the file is empty; put the training rows in it or point "
                           "data.path at the data")
        kind = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}[ext]
        line = _array_line(path) if kind == "jsonl" else None
        if line is not None:
            raise JobError(f"{path}:{line}: a JSON array in a .jsonl file; write one JSON object per line, or "
                           "name the file .json")
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
            if kind in ("json", "csv") and _first_bad_utf8(path) is not None:
                raise _not_utf8(path, kind) from None
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
    try:
        rows = ds.to_list()
    except UnicodeDecodeError:
        raise _not_utf8(path, kind) from None
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
    if data.format == "classification":
        _check_classes(rows, data, path)
    return rows


def row_place(data_path: str, index: int) -> str:
    """``file:line`` (jsonl) or ``file: row N`` of the ``index``-th row of a data file."""
    path = Path(data_path)
    return _where(path, "jsonl" if path.suffix.lower() == ".jsonl" and path.is_file() else "rows", index)
