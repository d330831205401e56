"""Errors a user can fix. The CLI prints each line once, exits 2, and shows no traceback."""
from __future__ import annotations

import difflib
from typing import Any


class JobError(Exception):
    """One or more user-facing problems, each a single line naming where and how to fix it."""

    exit_code = 2

    def __init__(self, *lines: str):
        self.lines = [ln for ln in lines if ln]
        super().__init__("\n".join(self.lines))


def _field_names(model: Any, loc: tuple) -> list[str]:
    """Valid keys at ``loc`` (a path of field names) inside ``model``."""
    from pydantic import BaseModel

    cur: Any = model
    for part in loc:
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)) or part not in cur.model_fields:
            return []
        ann = cur.model_fields[part].annotation
        cur = ann
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return list(cur.model_fields)
    return []


def _fmt_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def format_validation_error(err: Any, root: Any, source: str = "") -> list[str]:
    """One line per problem of a pydantic ValidationError against the model ``root``: the field's
    path, what is wrong, and for an unknown key the closest valid name."""
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"])
        path = _fmt_loc(loc)
        prefix = f"{source}: " if source else ""
        if e["type"] == "extra_forbidden":
            valid = _field_names(root, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"; did you mean {_fmt_loc(loc[:-1] + (close[0],))!r}?" if close else ""
            lines.append(f"{prefix}{path}: unknown key{hint} (valid: {', '.join(valid)})")
            continue
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        got = e.get("input")
        if e["type"] in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            ctx = e.get("ctx", {})
            op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[e["type"]]
            bound = next(iter(ctx.values())) if ctx else "?"
            msg = f"must be {op} {bound}, got {got!r}"
        elif e["type"] == "literal_error":
            msg = f"{msg}, got {got!r}"
        elif not isinstance(got, dict) and e["type"] not in ("value_error", "assertion_error"):
            msg = f"{msg}, got {got!r}"
        lines.append(f"{prefix}{path or '(top level)'}: {msg}")
    return lines
