"""Libraries that print when a command must not: DeepSpeed's logger writes its accelerator
detection to stdout the first time anything imports it (transformers' model code does, where
DeepSpeed is installed), and transformers draws a progress bar while it saves. In the processes
that plan and launch (not the ranks, whose output goes to their logs), that noise would corrupt
`launcher plan --json`, `ds-config` and the one-line errors; :func:`libraries_quiet` sends it nowhere.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

_NULL = None


@contextlib.contextmanager
def libraries_quiet() -> Iterator[None]:
    """stdout and stderr of the code inside go to /dev/null (a stream that stays open: a logger
    made inside keeps writing to it later, harmlessly)."""
    global _NULL
    if _NULL is None:
        _NULL = open(os.devnull, "w")
    with contextlib.redirect_stdout(_NULL), contextlib.redirect_stderr(_NULL):
        yield
