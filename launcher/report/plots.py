"""The report's plots, as base64 PNGs for the HTML pages: functions of the reports and the
series handed in (:class:`launcher.report.series.RunSeries`); no file is read here.

matplotlib is imported when a figure is drawn (its object API, no pyplot: no global state, no
backend switch).
"""
from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any, Optional, Sequence

from launcher.report.format import run_label
from launcher.rundir.energy_file import COMPONENTS
from launcher.rundir.report_file import Report

if TYPE_CHECKING:
    from launcher.report.series import Power, RunSeries


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _new_fig() -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # no pyplot: no global state, no backend switch (Agg)

    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.subplots()
    ax.grid(True, alpha=0.3)
    return fig, ax


def _integer_steps(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _plot_loss(series_by_run: list[tuple[str, dict]]) -> Optional[str]:
    if not any(s["step"] for _, s in series_by_run):
        return None
    fig, ax = _new_fig()
    multi = len(series_by_run) > 1
    for k, (label, s) in enumerate(series_by_run):
        # one colour per run (train solid, eval dashed with markers); a single run: two colours
        c_train, c_eval = (f"C{k % 10}", f"C{k % 10}") if multi else ("C0", "C1")
        # later runs thinner: runs that trained the same steps (same losses) stay visible
        lw = max(2.6 - 0.8 * k, 1.0) if multi else 1.2
        pts = [(a, b) for a, b in zip(s["step"], s["loss"]) if b is not None]
        if pts:
            ax.plot([a for a, _ in pts], [b for _, b in pts], label=f"{label} train" if multi else "train loss",
                    lw=lw, color=c_train)
        ev = [(a, b) for a, b in zip(s["eval_step"], s["eval_loss"]) if b is not None]
        if ev:
            ax.plot([a for a, _ in ev], [b for _, b in ev], marker="o", ls="--", color=c_eval, lw=lw,
                    markersize=max(7 - 2 * k, 4) if multi else 6,
                    label=f"{label} eval" if multi else "eval loss")
    _integer_steps(ax)
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    return _png(fig)


def _moving_average(ys: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` points (the first points average what exists)."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _plot_tps(series_by_run: list[tuple[str, dict]]) -> Optional[str]:
    if not any(any(v is not None for v in s["tokens_per_s"]) for _, s in series_by_run):
        return None
    fig, ax = _new_fig()
    multi = len(series_by_run) > 1
    for k, (label, s) in enumerate(series_by_run):
        pts = [(a, b) for a, b in zip(s["step"], s["tokens_per_s"]) if b is not None]
        if not pts:
            continue
        xs, ys = [a for a, _ in pts], [b for _, b in pts]
        color = f"C{k % 10}"
        if len(pts) >= 50:  # noisy per-step values, faint, with a moving average on top
            window = max(5, len(pts) // 40)
            ax.plot(xs, ys, lw=0.7, alpha=0.3, color=color)
            ax.plot(xs, _moving_average(ys, window), lw=1.6, color=color,
                    label=f"{label} ({window}-step mean)" if multi else f"{window}-step mean")
        else:
            ax.plot(xs, ys, lw=1.2, color=color, label=label if multi else None)
    _integer_steps(ax)
    ax.set_ylabel("tokens/s (all devices)")
    ax.set_ylim(bottom=0)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _png(fig)


def _plot_power(series: Power) -> str:
    """Mean power of each interval between CodeCarbon's rows, drawn as steps from 0."""
    fig, ax = _new_fig()
    short = max(max(xs) for xs, _ in series.values()) < 2.0
    for k, (node, (xs, ys)) in enumerate(series.items()):
        edges = [0.0] + [x * 60 if short else x for x in xs]
        ax.stairs(ys, edges, label=node, lw=1.5, color=f"C{k % 10}", baseline=None)
    ax.set_xlabel(("seconds" if short else "minutes") + " since tracking started")
    ax.set_ylabel("node power, W (PUE included)")
    ax.set_xlim(left=0)
    top = max((max(ys) for _, ys in series.values() if ys), default=0.0)
    ax.set_ylim(0, top * 1.25 if top > 0 else 1.0)  # room for the legend above the lines
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def _plot_energy_bars(reports: Sequence[Report]) -> Optional[str]:
    avail = [r for r in reports if r.energy.available]
    if not avail:
        return None
    fig, ax = _new_fig()
    if len(avail) == 1:
        e = avail[0].energy
        labels = [f"{c.upper()}\n{e.measured.of(c).split(' (')[0]}" for c in COMPONENTS]
        vals = [e.energy_kwh.of(c) * 1000 for c in COMPONENTS]
        ax.bar(labels, vals, color=["#4c72b0", "#55a868", "#c44e52"])
        ax.set_ylabel("Wh (PUE included)")
    else:
        names = [run_label(r) for r in avail]
        bottom = [0.0] * len(avail)
        # Wh below 1 kWh, so that small runs do not get an axis of 1e-5 kWh
        wh = max(r.energy.energy_kwh.total for r in avail) < 1.0
        scale = 1000.0 if wh else 1.0
        for c, col in zip(COMPONENTS, ["#4c72b0", "#55a868", "#c44e52"]):
            vals = [r.energy.energy_kwh.of(c) * scale for r in avail]
            ax.bar(names, vals, bottom=bottom, label=c.upper(), color=col)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_ylabel(("Wh" if wh else "kWh") + " (PUE included)")
        ax.legend(fontsize=8)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    return _png(fig)


def report_plots(reports: Sequence[Report], series: Sequence[Optional[RunSeries]]) -> list[dict]:
    """``[{"title", "png"}]`` for one run or several (one series per report, None when not
    available): loss and throughput per step, energy by component, and for a single run its
    power per node over time."""
    runs = [(run_label(r), s.steps) for r, s in zip(reports, series) if s is not None]
    plots = []
    loss = _plot_loss(runs)
    if loss:
        plots.append({"title": "Loss (train, eval) vs step", "png": loss})
    tps = _plot_tps(runs)
    if tps:
        plots.append({"title": "Throughput: non-padding tokens/s vs step", "png": tps})
    power: Power = series[0].power if len(reports) == 1 and series and series[0] is not None else {}
    bars = _plot_energy_bars(reports)
    if bars:
        plots.append({"title": "Energy by component" + (" and run" if len(reports) > 1 else "")
                      + " (label: measured or estimated)", "png": bars})
    if power:
        plots.append({"title": "Power over time per node (mean of each interval between CodeCarbon's rows)",
                      "png": _plot_power(power)})
    return plots
