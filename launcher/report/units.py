"""Numbers for people: thousands separators, significant digits, units (durations, money, kWh,
bytes), and Markdown cells. Shared by the reports, the plan and the model card."""
from __future__ import annotations

from typing import Any, Optional


def _isnum(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def fmt_num(x: Any, digits: int = 3) -> str:
    """Numbers for people: thousands separators, ``digits`` significant digits for small values."""
    if x is None:
        return "n/a"
    if not _isnum(x):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    ax = abs(x)
    if ax == 0:
        return "0"
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 1:
        return f"{x:,.{max(digits - len(str(int(ax))), 0)}f}"
    return f"{x:.{digits}g}"


def fmt_pct(x: Optional[float], digits: int = 1) -> str:
    return "n/a" if x is None else f"{x * 100:.{digits}f}%"


def fmt_dur(s: Optional[float]) -> str:
    if s is None:
        return "n/a"
    if s < 60:
        return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


def fmt_money(x: Optional[float], currency: str) -> str:
    if x is None:
        return "n/a"
    if x == 0 or abs(x) >= 1:
        return f"{x:,.2f} {currency}"
    return f"{x:.3g} {currency}"


def fmt_kwh(x: Optional[float]) -> str:
    if x is None:
        return "n/a"
    if x < 0.01:
        return f"{x * 1000:.4g} Wh"
    return f"{x:.4g} kWh"


def fmt_bytes(x: Optional[float]) -> str:
    if x is None:
        return "n/a"
    return f"{x / 2**30:,.3g} GiB" if abs(x) >= 2**30 else f"{x / 2**20:,.4g} MiB"


def md_cell(s: str) -> str:
    """A Markdown table cell: pipes escaped, one line."""
    return str(s).replace("|", "\\|").replace("\n", " ")
