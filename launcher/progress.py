"""The progress line: the one stdout contract between the ranks and `launcher run`. Global rank
0 prints it (launcher.train.loop); `launcher run` reads it back to redraw one line on a terminal
(launcher.execute.local). Both go through here, so the format is spelled once."""
from __future__ import annotations

import re
from typing import Optional

ENV = "LAUNCHER_PROGRESS"  # "tty": `launcher run` redraws every step's line on a terminal
PIPED_LINES = 30  # at most about this many step lines in a piped run
_LINE = re.compile(r"\[launcher\] step (\d+)/(\d+) \| (.*)$")


def step_line(done: int, total: int, loss: float, lr: float, tokens: int, step_time: float) -> str:
    """The line rank 0 prints after step ``done`` of ``total``."""
    eta = (total - done) * step_time
    return (f"[launcher] step {done}/{total} | loss {loss:.4f} | lr {lr:.3g} | "
            f"{tokens / max(step_time, 1e-9):,.0f} tok/s | ETA {eta:,.0f}s")


def parse_step_line(text: str) -> Optional[tuple[int, int, str]]:
    """(done, total, the rest) of a progress line, None for any other line."""
    m = _LINE.match(text)
    return (int(m.group(1)), int(m.group(2)), m.group(3)) if m else None
