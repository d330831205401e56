"""Errors a user can fix. The CLI prints each line once, exits 2, and shows no traceback."""
from __future__ import annotations


class JobError(Exception):
    """One or more user-facing problems, each a single line naming where and how to fix it."""

    exit_code = 2

    def __init__(self, *lines: str):
        self.lines = [ln for ln in lines if ln]
        super().__init__("\n".join(self.lines))
