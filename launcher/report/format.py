"""Formatting of report dicts for people: numbers with units, labels, the headline, the summary
sections every renderer shows, the comparison columns and the "what changed" line.

Pure functions of the report dict (``launcher.report.build``): no file is read here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from launcher.report.energy import COMPONENTS

FOOTER = ("Made by launcher report from the run directory. Energy includes PUE; each energy figure says "
          "whether it was measured or estimated. MFU uses model FLOPs (6N + 12 L h s per token, LoRA: "
          "4N + 2 n_trainable + 12 L h s) over the dense peak of the accelerator.")


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


# --------------------------------------------------------------------------- the summary


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
    fc_rows = forecast_rows(report.get("forecast"))
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
    sections = [("Job", job_rows), ("Throughput", thr_rows), ("MFU", mfu_rows), ("Energy and emissions", en_rows),
                ("Cost", cost_rows)]
    if fc_rows:
        sections.append(("Forecast vs actual", fc_rows))
    faults = fault_rows(report)
    if faults:
        sections.append(("Faults and stragglers", faults))
    return sections + [("Loss", loss_rows)]


def fault_rows(report: dict) -> list[tuple[str, str]]:
    """Restarts and the steps they redid, the slowest rank, and Slurm's allocated time; only the
    rows that say something (one rank and no fault: none)."""
    rows = []
    rs, st, al = report.get("restarts") or {}, report.get("stragglers") or {}, report.get("allocation") or {}
    if rs.get("attempts", 0) > 1:
        rows.append(("Restarts", f"{rs.get('automatic_restarts', 0)} automatic, {rs.get('resumes', 0)} resumed "
                                 f"from a checkpoint; {rs.get('steps_lost', 0) + rs.get('redone_steps', 0)} step(s) "
                                 "done again"))
    if st.get("available") and st.get("ranks", 0) > 1:
        med = st["compute_median_s"]
        host = f" on {st['slowest_host']}" if st.get("slowest_host") else ""
        rows.append(("Slowest rank", f"rank {st['slowest_rank']}{host}: {fmt_dur(med[str(st['slowest_rank'])])} of "
                                     f"compute per step, fastest rank {st['fastest_rank']} "
                                     f"{fmt_dur(med[str(st['fastest_rank'])])} (x{st['spread']:.2f})"
                     if st.get("spread") else f"rank {st['slowest_rank']}{host}"))
        rows.append(("Waiting in the step's collective", f"{fmt_pct(st.get('wait_share'))} of the median step"))
        rows += straggler_rows(st)
    if al.get("available"):
        share = f" ({fmt_pct(al['trainer_share'])} of it)" if al.get("trainer_share") is not None else ""
        rows.append(("Allocated (sacct)", f"{fmt_num(al['device_hours'])} device-hours over {al['attempts']} "
                                          f"attempt(s) ({', '.join(al['states'])}); devices: {al['devices_from']}"))
        rows.append(("Measured by the trainer", f"{fmt_num(al.get('trainer_device_hours'))} device-hours{share}"))
    return rows


def straggler_rows(st: dict) -> list[tuple[str, str]]:
    """One row per rank: its compute and its waiting for the others (medians per step, and totals),
    the slowest rank marked; the rank the others wait for computes longest and waits least."""
    rows = []
    for r in st.get("per_rank") or []:
        where = f" ({r['host']})" if r.get("host") else ""
        mark = "  <- slowest" if r["rank"] == st.get("slowest_rank") else ""
        rows.append((f"  rank {r['rank']}{where}",
                     f"compute {fmt_dur(r['compute_median_s'])}, waiting {fmt_dur(r['wait_median_s'])} per step; "
                     f"{fmt_dur(r['compute_s'])} / {fmt_dur(r['wait_s'])} in all{mark}"))
    return rows


def fmt_bytes(x: Optional[float]) -> str:
    if x is None:
        return "n/a"
    return f"{x / 2**30:,.3g} GiB" if abs(x) >= 2**30 else f"{x / 2**20:,.4g} MiB"


FORECAST_LABELS = {"time_s": "Time (training steps)", "kwh": "Energy", "kg_co2e": "Emissions", "cost": "Cost",
                   "peak_memory_bytes": "Peak memory per device"}


def forecast_rows(fc: Optional[dict]) -> list[tuple[str, str]]:
    """Forecast against actual, one row per figure: forecast, actual and actual / forecast."""
    if not fc or not fc.get("available"):
        return []
    rows = []
    for key, label in FORECAST_LABELS.items():
        r = fc.get("rows", {}).get(key)
        if r is None:
            continue
        unit = r.get("unit", "")
        show: Callable[[Any], str] = {
            "time_s": fmt_dur, "kwh": fmt_kwh, "peak_memory_bytes": fmt_bytes,
            "kg_co2e": lambda v: "n/a" if v is None else f"{fmt_num(v)} kgCO2e",
            "cost": lambda v: fmt_money(v, unit),
        }[key]
        ratio = f"x{r['ratio']:.2f}" if r.get("ratio") is not None else "ratio n/a"
        note = f" ({r['note']})" if r.get("note") else ""
        rows.append((label, f"forecast {show(r.get('forecast'))} · actual {show(r.get('actual'))} · {ratio}{note}"))
    src = f"calibrated on {fc['calibrated_from']}" if fc.get("calibrated_from") else "the plan's assumptions"
    rows.append(("Forecast from", f"{src}; {fmt_num(fc.get('steps_done'))} of "
                                  f"{fmt_num(fc.get('steps_forecast'))} forecast steps done"))
    for m in fc.get("missing") or []:
        rows.append(("Forecast n/a", m))
    return rows


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


# --------------------------------------------------------------------------- lines


def md_cell(s: str) -> str:
    """A Markdown table cell: pipes escaped, one line."""
    return str(s).replace("|", "\\|").replace("\n", " ")


def what_changed(report: dict) -> Optional[str]:
    """The line "what changed: eval loss A (step s) -> B (step t)", plus the task accuracy before and
    after when both evaluations have one; None with fewer than two evaluations."""
    evals = [e for e in (report.get("loss") or {}).get("eval") or [] if e.get("eval_loss") is not None]
    if len(evals) < 2:
        return None
    first, last = evals[0], evals[-1]
    line = (f"what changed: eval loss {first['eval_loss']:.4f} (step {first['step']}) -> "
            f"{last['eval_loss']:.4f} (step {last['step']})")
    if first.get("accuracy") is not None and last.get("accuracy") is not None:
        line += f", task accuracy {first['accuracy']:.1%} -> {last['accuracy']:.1%}"
    return line
