"""Prepared rows on disk, read a row at a time: no rank holds the data set as Python lists.

One split (``train`` or ``eval``) is five ``.npy`` files in the cache folder: ``<split>_input_ids``,
``<split>_labels`` and ``<split>_position_ids`` hold the rows one after another (int32 when every
value fits, else int64), ``<split>_offsets`` (n_rows + 1) says where each row starts and ends and
``<split>_n_docs`` holds each row's document count. ``open_rows`` memory-maps them read-only, so
the ranks of a node share one copy in the page cache and a rank's own memory holds only the rows
it is using.

numpy is imported inside functions: importing this module is cheap.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

FIELDS = ("input_ids", "labels", "position_ids")
_ARRAYS = (*FIELDS, "offsets", "n_docs")


class Rows(Sequence):
    """Read-only sequence of the rows of one split, over flat arrays (memory-maps of the cache).

    ``rows[i]`` is a new ``{"input_ids", "labels", "position_ids": list of int, "n_docs": int}``
    each time, exactly the row ``prepare_data`` built. A slice (with a step too: ``rows[r::w]``)
    is a ``Rows`` over the same arrays, nothing copied. ``==`` compares the rows with any sequence
    of row dicts (a list or another ``Rows``). ``arrays`` gives the flat arrays themselves.
    """

    __slots__ = ("_arrays", "_index")

    def __init__(self, arrays: dict[str, Any], index: Optional[range] = None):
        self._arrays = arrays
        self._index = range(len(arrays["n_docs"])) if index is None else index

    @property
    def arrays(self) -> dict[str, Any]:
        """The flat arrays (``input_ids``, ``labels``, ``position_ids``, ``offsets``, ``n_docs``)
        of the whole split, whatever slice this is."""
        return dict(self._arrays)

    def __len__(self) -> int:
        return len(self._index)

    def _row(self, j: int) -> dict:
        a = self._arrays
        start, end = int(a["offsets"][j]), int(a["offsets"][j + 1])
        row: dict = {k: a[k][start:end].tolist() for k in FIELDS}
        row["n_docs"] = int(a["n_docs"][j])
        return row

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Rows(self._arrays, self._index[i])
        return self._row(self._index[i])  # range indexing: negative i and IndexError as for a list

    def __iter__(self):
        for j in self._index:
            yield self._row(j)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment] - compared by content, like a list

    def __repr__(self) -> str:
        return f"Rows({len(self)} rows)"


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


def _narrow(a):
    """``a`` as int32 when every value fits (half the disk and page cache), else as it is."""
    import numpy as np

    i32 = np.iinfo(np.int32)
    if a.size == 0 or (int(a.min()) >= i32.min and int(a.max()) <= i32.max):
        return a.astype(np.int32)
    return a


def write_rows(folder: Path, prefix: str, rows: Sequence) -> None:
    """Write ``rows`` (row dicts) as the split ``prefix`` into ``folder`` (files fsynced)."""
    import numpy as np

    for name, arr in _rows_to_arrays(prefix, list(rows)).items():
        with open(Path(folder) / f"{name}.npy", "wb") as f:
            np.save(f, _narrow(arr), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())


def open_rows(folder: Path, prefix: str) -> Rows:
    """The split ``prefix`` of ``folder``, memory-mapped read-only. Raises (OSError, ValueError)
    when a file is missing, cut short or does not match the others."""
    import numpy as np

    arrays = {k: np.load(Path(folder) / f"{prefix}_{k}.npy", mmap_mode="r", allow_pickle=False)
              for k in _ARRAYS}
    n = len(arrays["n_docs"])
    total = len(arrays["input_ids"])
    offsets = arrays["offsets"]
    if any(a.ndim != 1 for a in arrays.values()) or len(offsets) != n + 1 \
            or int(offsets[0]) != 0 or int(offsets[-1]) != total \
            or any(len(arrays[k]) != total for k in FIELDS):
        raise ValueError(f"{folder}: the {prefix} arrays do not match each other")
    return Rows(arrays)
