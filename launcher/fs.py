"""Files written whole or not at all: every writer in launcher goes through here, so a reader
never sees half a file (a killed job, a full disk)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike, text: str | bytes, mode: int | None = None) -> Path:
    """Write to a temp file beside ``path`` then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def user_cache_dir() -> Path:
    """launcher's machine-wide cache: ``$LAUNCHER_CACHE``, else ``~/.cache/launcher``. It holds the
    demo's assets, model shapes read from the hub and the prepared data of earlier runs; all of it
    is rebuilt when missing, so the folder can be deleted at any time."""
    env = os.environ.get("LAUNCHER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "launcher"


def json_text(obj: Any) -> str:
    """How launcher writes a JSON file: indented, keys sorted, a final newline."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_atomic(path, json_text(obj))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line with one write (O_APPEND): processes appending at once never interleave
    within a line. Raises OSError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)
