"""Render report dicts: Markdown, self-contained HTML (plots inlined as PNG), a terminal table,
CSV, and side-by-side comparisons of several runs.

Heavy imports (matplotlib, rich, jinja2) happen inside the functions that need them.
"""
from __future__ import annotations

import base64
import csv
import io
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from launcher.report.energy import COMPONENTS, read_emissions_csv, _num
from launcher.rundir import EMISSIONS

FOOTER = ("Made by launcher report from the run directory. Energy includes PUE; each energy figure says "
          "whether it was measured or estimated. MFU uses model FLOPs (6N + 12 L h s per token, LoRA: "
          "4N + 2 n_trainable + 12 L h s) over the dense peak of the accelerator.")


# --------------------------------------------------------------------------- formatting


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


def strategy_label(job: dict) -> str:
    s = job.get("strategy")
    if s == "zero":
        return f"DeepSpeed ZeRO-{job.get('zero_stage')}" if job.get("zero_stage") is not None else "DeepSpeed ZeRO"
    if s == "fsdp":
        return "FSDP2"
    return str(s or "n/a")


def run_label(report: dict) -> str:
    rd = report.get("run_dir")
    return Path(rd).name if rd else str(report.get("job", {}).get("name", "run"))


def mfu_text(report: dict) -> str:
    m = report.get("mfu", {})
    if m.get("value") is None:
        return f"n/a ({m.get('reason') or 'unknown'})"
    return fmt_pct(m["value"])


def energy_label(report: dict, comp: str) -> str:
    return report.get("energy", {}).get("measured", {}).get(comp, "unknown")


# --------------------------------------------------------------------------- content


def headline(report: dict) -> str:
    t, e, c = report.get("throughput", {}), report.get("energy", {}), report.get("cost", {})
    parts = [f"{fmt_num(t.get('tokens_per_s_per_device'))} tokens/s per device",
             f"MFU: {mfu_text(report)}"]
    if e.get("available"):
        parts.append(f"{fmt_kwh(e['energy_kwh']['total'])} ({e.get('total_label')})")
        parts.append(f"{fmt_num(e.get('emissions_kg'))} kgCO2e")
    else:
        parts.append("energy: n/a")
    if c.get("available"):
        parts.append(f"cost {fmt_money(c.get('total'), c.get('currency', ''))}")
    return " · ".join(parts)


def summary_sections(report: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    """The report as titled sections of (label, formatted value): shared by every renderer."""
    j, t, m = report.get("job", {}), report.get("throughput", {}), report.get("mfu", {})
    e, c, lo = report.get("energy", {}), report.get("cost", {}), report.get("loss", {})
    sd = report.get("status_detail", {})
    dh_label = t.get("device_hours_label") or "device-hours"
    accel = j.get("accelerator") or ("cpu" if j.get("device") == "cpu" else "unknown")
    job_rows = [
        ("Name", str(j.get("name"))),
        ("Status", report.get("status", "n/a")),
        ("Model", str(j.get("model") or "n/a")),
        ("Strategy", strategy_label(j)),
        ("Method", str(j.get("method") or "n/a")),
        ("Precision", str(j.get("dtype") or "n/a")),
        ("Nodes x procs", f"{fmt_num(j.get('nodes'))} x {fmt_num(j.get('procs_per_node'))} "
                          f"(world size {fmt_num(j.get('world_size'))})"),
        ("Device", f"{j.get('device') or 'n/a'} ({accel})"),
        ("Batch", f"micro {fmt_num(j.get('micro_batch_size'))} x accum {fmt_num(j.get('grad_accum_steps'))} "
                  f"x world {fmt_num(j.get('world_size'))} = {fmt_num(j.get('global_batch_size'))} rows/step"),
        ("Sequence length", f"{fmt_num(j.get('seq_len'))} ({'packed' if j.get('packing') else 'padded'})"
         if j.get("packing") is not None else fmt_num(j.get("seq_len"))),
        ("Parameters", f"{fmt_num(j.get('n_params'))} ({fmt_num(j.get('n_trainable_params'))} trainable)"),
    ]
    planned = t.get("planned_steps")
    thr_rows = [
        ("Steps", f"{fmt_num(t.get('last_step'))}" + (f" of {fmt_num(planned)}" if planned else "")
         + (f" ({t['redone_steps']} redone after resume)" if t.get("redone_steps") else "")),
        ("Tokens (non-padding)", fmt_num(t.get("tokens"))),
        ("Samples", fmt_num(t.get("samples"))),
        ("Padding share", fmt_pct(t.get("padding_share"))),
        ("Tokens/s (step time)", fmt_num(t.get("tokens_per_s"))),
        ("Tokens/s per device", fmt_num(t.get("tokens_per_s_per_device"))),
        ("Samples/s", fmt_num(t.get("samples_per_s"))),
        ("Tokens/s (wall time)", fmt_num(t.get("tokens_per_s_wall"))),
        ("Step time median / p90", f"{fmt_dur(t.get('step_time_median_s'))} / {fmt_dur(t.get('step_time_p90_s'))}"),
        ("Time to first step", fmt_dur(t.get("time_to_first_step_s"))),
        ("Wall time", fmt_dur(t.get("wall_time_s")) + (f" ({t['attempts']} attempts)" if (t.get("attempts") or 0) > 1 else "")),
        (dh_label[:1].upper() + dh_label[1:], fmt_num(t.get("device_hours"))),
    ]
    mfu_rows = [("MFU", mfu_text(report))]
    if m.get("value") is not None:
        mfu_rows += [("MFU (wall time)", fmt_pct(m.get("mfu_wall")))]
    mfu_rows += [
        ("FLOPs per token", fmt_num(m.get("flops_per_token"))),
        ("Peak (dense)", f"{fmt_num(m.get('peak_tflops'))} TFLOP/s {m.get('dtype')}"
         + (f" ({m.get('accelerator')}; {m.get('accelerator_source')})" if m.get("accelerator") else "")
         if m.get("peak_tflops") else "n/a"),
        ("Achieved per device", f"{fmt_num(m.get('achieved_tflops_per_device'))} TFLOP/s"
         if m.get("achieved_tflops_per_device") is not None else "n/a"),
    ]
    if m.get("note"):
        mfu_rows.append(("Note", m["note"]))
    if e.get("available"):
        ek = e["energy_kwh"]
        pue = e.get("pue")
        en_rows = [("Energy (total)", f"{fmt_kwh(ek['total'])} [{e.get('total_label')}]")]
        for comp in COMPONENTS:
            en_rows.append((f"  {comp.upper()}", f"{fmt_kwh(ek.get(comp))} [{energy_label(report, comp)}]"))
        en_rows += [
            ("PUE", (fmt_num(pue) if pue is not None else "mixed " + ", ".join(map(str, e.get("pue_values", []))))
             + " (included in the figures)"),
            ("Emissions", f"{fmt_num(e.get('emissions_kg'))} kgCO2e ({e.get('country_iso_code') or 'n/a'}"
             + (f", {e['region']}" if e.get("region") else "") + ")"),
            ("Energy per token", f"{fmt_num(e.get('energy_per_token_j'))} J"),
            ("Emissions per million tokens", f"{fmt_num(e.get('gco2e_per_million_tokens'))} gCO2e"),
            ("Nodes reporting", f"{e.get('nodes')}" + (f" of {e['nodes_expected']}" if e.get("nodes_expected") else "")
             + (" (partial)" if e.get("partial") else "")),
        ]
    else:
        en_rows = [("Energy", f"n/a ({e.get('reason', 'no emissions files')})")]
    cur = c.get("currency", "")
    if c.get("available"):
        cost_rows = []
        if c.get("compute"):
            cp = c["compute"]
            cost_rows.append(("Compute", f"{fmt_num(cp['hours'])} {cp['basis']} x {fmt_money(cp['price_per_hour'], cur)}"
                              f" = {fmt_money(cp['cost'], cur)}"))
        if c.get("energy"):
            ce = c["energy"]
            cost_rows.append(("Energy", f"{fmt_kwh(ce['kwh'])} x {fmt_money(ce['price_per_kwh'], cur)}/kWh"
                              f" = {fmt_money(ce['cost'], cur)}"))
        cost_rows += [("Total", fmt_money(c.get("total"), cur)),
                      ("Per million tokens", fmt_money(c.get("per_million_tokens"), cur))]
    else:
        cost_rows = [("Cost", f"n/a ({c.get('reason', 'no prices')})")]
    loss_rows = [
        ("Train loss first / last", f"{fmt_num(lo.get('first_train_loss'), 4)} / {fmt_num(lo.get('last_train_loss'), 4)}"),
        ("Train loss min", f"{fmt_num(lo.get('min_train_loss'), 4)}"
         + (f" (step {lo['min_train_loss_step']})" if lo.get("min_train_loss_step") is not None else "")),
        ("Eval loss last / min", f"{fmt_num(lo.get('last_eval_loss'), 4)} / {fmt_num(lo.get('min_eval_loss'), 4)}"),
    ]
    if lo.get("last_accuracy") is not None:
        loss_rows.append(("Accuracy (last eval)", fmt_pct(lo["last_accuracy"])))
    if sd.get("attempts", 0) > 1 or report.get("checkpoints", {}).get("count"):
        loss_rows.append(("Checkpoints", f"{report.get('checkpoints', {}).get('count', 0)}"
                          + (f" (last at step {report['checkpoints']['last_step']})"
                             if report.get("checkpoints", {}).get("last_step") is not None else "")))
    return [("Job", job_rows), ("Throughput", thr_rows), ("MFU", mfu_rows), ("Energy and emissions", en_rows),
            ("Cost", cost_rows), ("Loss", loss_rows)]


# --------------------------------------------------------------------------- comparison columns

CompareCol = tuple[str, Callable[[dict], str]]


def _cost_total(r: dict) -> str:
    c = r.get("cost", {})
    return fmt_money(c.get("total"), c.get("currency", "")) if c.get("available") else "n/a"


def _cost_pm(r: dict) -> str:
    c = r.get("cost", {})
    return fmt_money(c.get("per_million_tokens"), c.get("currency", "")) if c.get("available") else "n/a"


COMPARE_COLUMNS: list[CompareCol] = [
    ("Run", run_label),
    ("Status", lambda r: "completed" if r.get("complete") else "incomplete"),
    ("Strategy", lambda r: {"zero": "ZeRO", "fsdp": "FSDP2"}.get(r["job"].get("strategy"), str(r["job"].get("strategy")))),
    ("ZeRO stage", lambda r: "-" if r["job"].get("zero_stage") is None else str(r["job"]["zero_stage"])),
    ("Method", lambda r: str(r["job"].get("method") or "n/a")),
    ("Nodes", lambda r: fmt_num(r["job"].get("nodes"))),
    ("World", lambda r: fmt_num(r["job"].get("world_size"))),
    ("Tokens/s/device", lambda r: fmt_num(r["throughput"].get("tokens_per_s_per_device"))),
    ("MFU", lambda r: fmt_pct(r["mfu"]["value"]) if r["mfu"].get("value") is not None else "n/a"),
    ("kWh", lambda r: f"{r['energy']['energy_kwh']['total']:.4g}" if r["energy"].get("available") else "n/a"),
    ("kgCO2e", lambda r: f"{r['energy']['emissions_kg']:.4g}" if r["energy"].get("available") else "n/a"),
    ("Cost", _cost_total),
    ("Cost/M tokens", _cost_pm),
    ("Last loss", lambda r: fmt_num(r["loss"].get("last_train_loss"), 4)),
]


def compare_rows(reports: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    headers = [h for h, _ in COMPARE_COLUMNS]
    rows = []
    for r in reports:
        row = []
        for _, fn in COMPARE_COLUMNS:
            try:
                row.append(fn(r))
            except (KeyError, TypeError, AttributeError):
                row.append("n/a")
        rows.append(row)
    return headers, rows


# --------------------------------------------------------------------------- text renderers


def _jinja(template: str, autoescape: bool) -> Any:
    import jinja2

    env = jinja2.Environment(autoescape=autoescape, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(template)


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict) -> str:
    from launcher.report.templates import MARKDOWN

    sections = [(t, [(_md_cell(a.strip()), _md_cell(b)) for a, b in rows]) for t, rows in summary_sections(report)]
    return _jinja(MARKDOWN, False).render(
        title=report.get("job", {}).get("name", "run") + f" ({run_label(report)})",
        status=report.get("status"), complete=report.get("complete"), headline=headline(report),
        sections=sections, notes=report.get("notes", []), footer=FOOTER)


def render_compare_markdown(reports: Sequence[dict]) -> str:
    from launcher.report.templates import COMPARE_MARKDOWN

    headers, rows = compare_rows(reports)
    runs = [{"label": run_label(r), "status": r.get("status"), "headline": headline(r)} for r in reports]
    return _jinja(COMPARE_MARKDOWN, False).render(
        n=len(reports), headers=[_md_cell(h) for h in headers],
        rows=[[_md_cell(c) for c in row] for row in rows], runs=runs, footer=FOOTER)


def _console(width: int) -> Any:
    from rich.console import Console

    return Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None,
                   highlight=False, emoji=False)


def _print_or_capture(renderables: list, console: Any, width: int) -> str:
    con = console or _console(width)
    for r in renderables:
        con.print(r)
    return con.file.getvalue() if console is None else ""


def render_table(report: dict, console: Any = None, width: int = 110) -> str:
    """A rich table of the report. Printed to ``console`` if given (colours), else returned as text."""
    from rich.table import Table
    from rich.text import Text

    status_style = "bold green" if report.get("complete") else "bold yellow"
    table = Table(title=f"{report.get('job', {}).get('name', 'run')} ({run_label(report)})",
                  show_header=True, header_style="bold", expand=False)
    table.add_column("Section", style="cyan", no_wrap=True)
    table.add_column("Metric", no_wrap=True)
    table.add_column("Value")
    for title, rows in summary_sections(report):
        for i, (label, value) in enumerate(rows):
            v = Text(value, style=status_style) if label == "Status" else Text(value)
            table.add_row(title if i == 0 else "", label.strip(), v)
        table.add_section()
    items: list = [table, Text(headline(report))]
    for n in report.get("notes", []):
        items.append(Text(f"note: {n}", style="yellow"))
    return _print_or_capture(items, console, width)


def render_compare_table(reports: Sequence[dict], console: Any = None, width: int = 160) -> str:
    from rich.table import Table

    headers, rows = compare_rows(reports)
    table = Table(title=f"Comparison of {len(reports)} runs", header_style="bold")
    for h in headers:
        table.add_column(h, no_wrap=h in ("Run", "Status"))
    for row in rows:
        table.add_row(*row)
    return _print_or_capture([table], console, width)


CSV_FIELDS: list[tuple[str, tuple[str, ...]]] = [
    ("run_dir", ("run_dir",)), ("name", ("job", "name")), ("status", ("status",)), ("complete", ("complete",)),
    ("strategy", ("job", "strategy")), ("zero_stage", ("job", "zero_stage")), ("method", ("job", "method")),
    ("dtype", ("job", "dtype")), ("nodes", ("job", "nodes")), ("world_size", ("job", "world_size")),
    ("device", ("job", "device")), ("accelerator", ("job", "accelerator")),
    ("steps", ("throughput", "last_step")), ("tokens", ("throughput", "tokens")),
    ("samples", ("throughput", "samples")), ("padding_share", ("throughput", "padding_share")),
    ("tokens_per_s", ("throughput", "tokens_per_s")),
    ("tokens_per_s_per_device", ("throughput", "tokens_per_s_per_device")),
    ("tokens_per_s_wall", ("throughput", "tokens_per_s_wall")),
    ("samples_per_s", ("throughput", "samples_per_s")),
    ("step_time_median_s", ("throughput", "step_time_median_s")),
    ("step_time_p90_s", ("throughput", "step_time_p90_s")),
    ("time_to_first_step_s", ("throughput", "time_to_first_step_s")),
    ("wall_time_s", ("throughput", "wall_time_s")), ("device_hours", ("throughput", "device_hours")),
    ("mfu", ("mfu", "value")), ("mfu_reason", ("mfu", "reason")), ("flops_per_token", ("mfu", "flops_per_token")),
    ("energy_kwh", ("energy", "energy_kwh", "total")), ("energy_label", ("energy", "total_label")),
    ("cpu_kwh", ("energy", "energy_kwh", "cpu")), ("gpu_kwh", ("energy", "energy_kwh", "gpu")),
    ("ram_kwh", ("energy", "energy_kwh", "ram")), ("pue", ("energy", "pue")),
    ("emissions_kg", ("energy", "emissions_kg")), ("energy_per_token_j", ("energy", "energy_per_token_j")),
    ("gco2e_per_million_tokens", ("energy", "gco2e_per_million_tokens")),
    ("cost_total", ("cost", "total")), ("cost_per_million_tokens", ("cost", "per_million_tokens")),
    ("currency", ("cost", "currency")),
    ("first_train_loss", ("loss", "first_train_loss")), ("last_train_loss", ("loss", "last_train_loss")),
    ("min_train_loss", ("loss", "min_train_loss")), ("last_eval_loss", ("loss", "last_eval_loss")),
    ("last_accuracy", ("loss", "last_accuracy")),
]


def render_csv(reports: dict | Sequence[dict]) -> str:
    """One row per run, raw numbers (no units, no rounding)."""
    if isinstance(reports, dict):
        reports = [reports]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([name for name, _ in CSV_FIELDS])
    for r in reports:
        row = []
        for _, path in CSV_FIELDS:
            cur: Any = r
            for p in path:
                cur = cur.get(p) if isinstance(cur, dict) else None
            row.append("" if cur is None else cur)
        w.writerow(row)
    return buf.getvalue()


# --------------------------------------------------------------------------- plots


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


def power_series(run_dir: str | os.PathLike) -> dict[str, tuple[list[float], list[float]]]:
    """Per node: (minutes since the node's tracking started, watts) from the cumulative rows of
    ``emissions/<node>.csv`` (power = energy delta / time delta, PUE included). Sessions
    (attempts) follow each other on the time axis."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    d = Path(run_dir) / EMISSIONS
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.csv")):
        sessions: dict[str, list[dict]] = {}
        for r in read_emissions_csv(p):
            sessions.setdefault(r.get("run_id") or "", []).append(r)
        xs: list[float] = []
        ys: list[float] = []
        offset = 0.0
        for rows in sessions.values():
            rows.sort(key=lambda r: _num(r.get("duration")))
            prev_t, prev_e = 0.0, 0.0
            for r in rows:
                t, e = _num(r.get("duration")), _num(r.get("energy_consumed"))
                if t > prev_t:
                    xs.append((offset + t) / 60.0)
                    ys.append((e - prev_e) * 3.6e6 / (t - prev_t))
                prev_t, prev_e = t, e
            offset += prev_t
        if len(xs) >= 2:
            out[p.stem] = (xs, ys)
    return out


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


def _plot_power(series: dict[str, tuple[list[float], list[float]]]) -> str:
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


def _plot_energy_bars(reports: Sequence[dict]) -> Optional[str]:
    avail = [r for r in reports if r.get("energy", {}).get("available")]
    if not avail:
        return None
    fig, ax = _new_fig()
    if len(avail) == 1:
        e = avail[0]["energy"]
        labels = [f"{c.upper()}\n{e['measured'].get(c, '').split(' (')[0]}" for c in COMPONENTS]
        vals = [e["energy_kwh"].get(c, 0.0) * 1000 for c in COMPONENTS]
        ax.bar(labels, vals, color=["#4c72b0", "#55a868", "#c44e52"])
        ax.set_ylabel("Wh (PUE included)")
    else:
        names = [run_label(r) for r in avail]
        bottom = [0.0] * len(avail)
        # Wh below 1 kWh, so that small runs do not get an axis of 1e-5 kWh
        wh = max(r["energy"]["energy_kwh"].get("total", 0.0) or 0.0 for r in avail) < 1.0
        scale = 1000.0 if wh else 1.0
        for c, col in zip(COMPONENTS, ["#4c72b0", "#55a868", "#c44e52"]):
            vals = [(r["energy"]["energy_kwh"].get(c, 0.0) or 0.0) * scale for r in avail]
            ax.bar(names, vals, bottom=bottom, label=c.upper(), color=col)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_ylabel(("Wh" if wh else "kWh") + " (PUE included)")
        ax.legend(fontsize=8)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    return _png(fig)


def _run_plots(reports: Sequence[dict], run_dirs: Sequence[Optional[str | os.PathLike]]) -> list[dict]:
    from launcher.report.build import load_series

    series = []
    for r, d in zip(reports, run_dirs):
        d = d or r.get("run_dir")
        if d and Path(d).is_dir():
            series.append((run_label(r), load_series(d)))
    plots = []
    loss = _plot_loss(series)
    if loss:
        plots.append({"title": "Loss (train, eval) vs step", "png": loss})
    tps = _plot_tps(series)
    if tps:
        plots.append({"title": "Throughput: non-padding tokens/s vs step", "png": tps})
    power: dict = {}
    if len(reports) == 1:
        d0 = run_dirs[0] or reports[0].get("run_dir")
        power = power_series(d0) if d0 else {}
    bars = _plot_energy_bars(reports)
    if bars:
        plots.append({"title": "Energy by component" + (" and run" if len(reports) > 1 else "")
                      + " (label: measured or estimated)", "png": bars})
    if power:
        plots.append({"title": "Power over time per node (mean of each interval between CodeCarbon's rows)",
                      "png": _plot_power(power)})
    return plots


def render_html(report: dict, run_dir: str | os.PathLike | None = None) -> str:
    """Self-contained HTML: CSS and PNG plots inlined (base64), no external resource."""
    from launcher.report.templates import HTML

    plots = _run_plots([report], [run_dir])
    return _jinja(HTML, True).render(
        title=report.get("job", {}).get("name", "run") + f" ({run_label(report)})",
        status=report.get("status"), complete=report.get("complete"), headline=headline(report),
        sections=summary_sections(report), notes=report.get("notes", []), plots=plots, footer=FOOTER)


def render_compare_html(reports: Sequence[dict], run_dirs: Sequence[str | os.PathLike | None] | None = None) -> str:
    from launcher.report.templates import COMPARE_HTML

    run_dirs = list(run_dirs) if run_dirs is not None else [None] * len(reports)
    headers, rows = compare_rows(reports)
    runs = [{"label": run_label(r), "status": r.get("status"), "complete": r.get("complete"),
             "headline": headline(r)} for r in reports]
    plots = _run_plots(reports, run_dirs)
    return _jinja(COMPARE_HTML, True).render(n=len(reports), headers=headers, rows=rows, runs=runs,
                                             plots=plots, footer=FOOTER)
