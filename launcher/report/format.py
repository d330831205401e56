"""Formatting of reports for people: numbers with units, labels, the headline, the summary
sections every renderer shows, the comparison columns and the "what changed" line.

Pure functions of the :class:`launcher.rundir.Report` (``launcher.report.build``): no file is read here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from launcher.report.units import fmt_bytes, fmt_dur, fmt_kwh, fmt_money, fmt_num, fmt_pct
from launcher.rundir.energy_file import COMPONENTS
from launcher.rundir.report_file import ForecastCheck, Job, Report, Stragglers

FOOTER = ("Made by launcher report from the run directory. Energy includes PUE; each energy figure says "
          "whether it was measured or estimated. MFU uses model FLOPs (6N + 12 L h s per token, LoRA: "
          "4N + 2 n_trainable + 12 L h s) over the dense peak of the accelerator (on CPU: the matrix rate "
          "measured on it).")


def calibration_words(source: Optional[str], distance: Optional[float]) -> str:
    """How a forecast's calibration was chosen: "the nearest run of the calibration history, distance 0.69"."""
    how = "named with --calibrate" if source == "--calibrate" else "the nearest run of the calibration history"
    return how + (f", distance {distance:.2f}" if distance is not None else ", another kind of device")


def fit_words(fit) -> str:
    """A fitted step time's terms (:class:`launcher.plan.types.StepFit`): "overhead 0.03 s + 57.1 GFLOP/s
    per thread + 6.2 s per GB gathered + 0.03 s per step of several ranks, fitted over 11 runs"."""
    words = f"overhead {fit.overhead_s:.3g} s + {fit.gflops_per_thread:,.1f} GFLOP/s per thread"
    if fit.s_per_gb_gathered:
        words += f" + {fit.s_per_gb_gathered:.3g} s per GB gathered"
    if fit.multi_rank_s:
        words += f" + {fit.multi_rank_s:.3g} s per step of several ranks"
    if fit.ms_per_fetch:
        words += f" + {fit.ms_per_fetch:.3g} ms per parameter fetch"
    if fit.ns_per_adapter_value:
        words += f" + {fit.ns_per_adapter_value:.3g} ns per adapter value on a rank's threads"
    return words + f", fitted over {fit.points} runs"


def strategy_label(job: Job) -> str:
    if job.strategy == "zero":
        return f"DeepSpeed ZeRO-{job.zero_stage}" if job.zero_stage is not None else "DeepSpeed ZeRO"
    if job.strategy == "fsdp":
        return "FSDP2"
    return str(job.strategy or "n/a")


def run_label(report: Report) -> str:
    return Path(report.run_dir).name if report.run_dir else str(report.job.name or "run")


def mfu_text(report: Report) -> str:
    m = report.mfu
    if m.value is None:
        return f"n/a ({m.reason or 'unknown'})"
    return fmt_pct(m.value)


def energy_label(report: Report, comp: str) -> str:
    return report.energy.measured.of(comp)


# --------------------------------------------------------------------------- the summary


def headline(report: Report) -> str:
    t, e, c = report.throughput, report.energy, report.cost
    parts = [f"{fmt_num(t.tokens_per_s_per_device)} tokens/s per device", f"MFU: {mfu_text(report)}"]
    if e.available:
        parts.append(f"{fmt_kwh(e.energy_kwh.total)} ({e.total_label})")
        parts.append(f"{fmt_num(e.emissions_kg)} kgCO2e")
    else:
        parts.append("energy: n/a")
    if c.available:
        parts.append(f"cost {fmt_money(c.total, c.currency)}")
    return " · ".join(parts)


Rows = list[tuple[str, str]]


def job_rows(report: Report) -> Rows:
    j = report.job
    accel = j.accelerator or ("cpu" if j.device == "cpu" else "unknown")
    return [
        ("Name", str(j.name)),
        ("Status", report.status),
        ("Model", str(j.model or "n/a")),
        ("Strategy", strategy_label(j)),
        ("Method", str(j.method or "n/a")),
        ("Precision", str(j.dtype or "n/a")),
        ("Nodes x procs", f"{fmt_num(j.nodes)} x {fmt_num(j.procs_per_node)} (world size {fmt_num(j.world_size)})"),
        ("Device", f"{j.device or 'n/a'} ({accel})"),
        ("Batch", f"micro {fmt_num(j.micro_batch_size)} x accum {fmt_num(j.grad_accum_steps)} "
                  f"x world {fmt_num(j.world_size)} = {fmt_num(j.global_batch_size)} rows/step"),
        ("Sequence length", f"{fmt_num(j.seq_len)} ({'packed' if j.packing else 'padded'})"),
        ("Parameters", f"{fmt_num(j.n_params)} ({fmt_num(j.n_trainable_params)} trainable)"),
        *([("Classes", ", ".join(j.labels))] if j.task == "classification" and j.labels else []),
        *([("Replay", replay_text(j))] if j.replay_rows_per_step else []),
    ]


def replay_text(j) -> str:
    g = j.global_batch_size or 0
    share = j.replay_rows_per_step / g if g else 0.0
    return (f"{j.replay_rows_per_step} of {fmt_num(g)} rows per step ({share:.1%}) of general text from "
            f"{j.replay_path}")


def forgetting_text(fg) -> Optional[str]:
    """"general-domain perplexity A -> B (+x%)", or None without both figures."""
    if fg is None or fg.before_ppl is None or fg.after_ppl is None:
        return None
    ratio = fg.after_ppl / fg.before_ppl if fg.before_ppl else None
    change = f"x{ratio:,.0f}" if ratio is not None and ratio >= 10 else f"{fg.change:+.1%}"  # 10 times: a factor
    return f"general-domain perplexity {fg.before_ppl:.4g} -> {fg.after_ppl:.4g} ({change})"


def throughput_rows(report: Report) -> Rows:
    t = report.throughput
    dh_label = t.device_hours_label or "device-hours"
    return [
        ("Steps", f"{fmt_num(t.last_step)}" + (f" of {fmt_num(t.planned_steps)}" if t.planned_steps else "")
         + (f" ({t.redone_steps} redone after resume)" if t.redone_steps else "")),
        ("Tokens (non-padding)", fmt_num(t.tokens)),
        ("Samples", fmt_num(t.samples)),
        ("Padding share", fmt_pct(t.padding_share)),
        ("Tokens/s (step time)", fmt_num(t.tokens_per_s)),
        ("Tokens/s per device", fmt_num(t.tokens_per_s_per_device)),
        ("Samples/s", fmt_num(t.samples_per_s)),
        ("Tokens/s (wall time)", fmt_num(t.tokens_per_s_wall)),
        ("Step time median / p90", f"{fmt_dur(t.step_time_median_s)} / {fmt_dur(t.step_time_p90_s)}"),
        ("Step time after the first / first step's excess",
         f"{fmt_dur(t.steady_step_time_s)} / {fmt_dur(t.warmup_s)}"),
        ("Time to first step", fmt_dur(t.time_to_first_step_s)),
        ("Wall time", fmt_dur(t.wall_time_s) + (f" ({t.attempts} attempts)" if t.attempts > 1 else "")),
        (dh_label[:1].upper() + dh_label[1:], fmt_num(t.device_hours)),
    ]


def mfu_rows(report: Report) -> Rows:
    m = report.mfu
    rows = [("MFU", mfu_text(report))]
    if m.value is not None:
        rows += [("MFU (wall time)", fmt_pct(m.mfu_wall))]
    rows += [
        ("FLOPs per token", fmt_num(m.flops_per_token)),
        ("Peak (dense)", f"{fmt_num(m.peak_tflops)} TFLOP/s {m.dtype}"
         + (f" ({m.accelerator}; {m.accelerator_source})" if m.accelerator else "") if m.peak_tflops else "n/a"),
        ("Achieved per device", f"{fmt_num(m.achieved_tflops_per_device)} TFLOP/s"
         if m.achieved_tflops_per_device is not None else "n/a"),
    ]
    if m.note:
        rows.append(("Note", m.note))
    return rows


def energy_rows(report: Report) -> Rows:
    e = report.energy
    if not e.available:
        return [("Energy", f"n/a ({e.reason or 'no emissions files'})")]
    rows = [("Energy (total)", f"{fmt_kwh(e.energy_kwh.total)} [{e.total_label}]")]
    for comp in COMPONENTS:
        rows.append((f"  {comp.upper()}", f"{fmt_kwh(e.energy_kwh.of(comp))} [{energy_label(report, comp)}]"))
    return rows + [
        ("PUE", (fmt_num(e.pue) if e.pue is not None else "mixed " + ", ".join(map(str, e.pue_values)))
         + " (included in the figures)"),
        ("Emissions", f"{fmt_num(e.emissions_kg)} kgCO2e ({e.country_iso_code or 'n/a'}"
         + (f", {e.region}" if e.region else "") + ", CodeCarbon's flat annual figure)"),
        *hourly_rows(e.hourly),
        ("Energy per token", f"{fmt_num(e.energy_per_token_j)} J"),
        ("Emissions per million tokens", f"{fmt_num(e.gco2e_per_million_tokens)} gCO2e"),
        ("Nodes reporting", f"{e.nodes}" + (f" of {e.nodes_expected}" if e.nodes_expected else "")
         + (" (partial)" if e.partial else "")),
    ]


def hourly_rows(h) -> Rows:
    if h is None:
        return []
    if not h.available:
        return [("Emissions, hours run", f"n/a ({h.reason})")]
    return [("Emissions, hours run", f"{fmt_num(h.kg_co2e)} kgCO2e at {fmt_num(h.mean_g_co2e_per_kwh)} gCO2e/kWh, "
                                     f"the hourly intensity of {h.start} to {h.end} ({h.source})")]


def offset_rows(c) -> Rows:
    if c.offset is None:
        return []
    o = c.offset
    return [("Offset (not in the total)", f"{fmt_num(o.tonnes_co2e)} tCO2e x {fmt_money(o.price_per_tonne, c.currency)}"
                                          f"/t = {fmt_money(o.cost, c.currency)}")]


def cost_rows(report: Report) -> Rows:
    c = report.cost
    cur = c.currency
    if not c.available:
        return [("Cost", f"n/a ({c.reason or 'no prices'})"), *offset_rows(c)]
    rows = []
    if c.compute:
        cp = c.compute
        rows.append(("Compute", f"{fmt_num(cp.hours)} {cp.basis} x {fmt_money(cp.price_per_hour, cur)}"
                                f" = {fmt_money(cp.cost, cur)}"))
    if c.energy:
        ce = c.energy
        rows.append(("Energy", f"{fmt_kwh(ce.kwh)} x {fmt_money(ce.price_per_kwh, cur)}/kWh = {fmt_money(ce.cost, cur)}"))
    return rows + [("Total", fmt_money(c.total, cur)), ("Per million tokens", fmt_money(c.per_million_tokens, cur)),
                   *offset_rows(c)]


def loss_rows(report: Report) -> Rows:
    lo, ck = report.loss, report.checkpoints
    rows = [
        ("Train loss first / last", f"{fmt_num(lo.first_train_loss, 4)} / {fmt_num(lo.last_train_loss, 4)}"),
        ("Train loss min", f"{fmt_num(lo.min_train_loss, 4)}"
         + (f" (step {lo.min_train_loss_step})" if lo.min_train_loss_step is not None else "")),
        ("Eval loss last / min", f"{fmt_num(lo.last_eval_loss, 4)} / {fmt_num(lo.min_eval_loss, 4)}"),
    ]
    if lo.last_accuracy is not None:
        before = f"{fmt_pct(lo.first_accuracy)} -> " if lo.first_accuracy is not None and len(
            [e for e in lo.eval if e.accuracy is not None]) > 1 else ""
        rows.append(("Accuracy (first -> last eval)" if before else "Accuracy (last eval)",
                     before + fmt_pct(lo.last_accuracy)))
    if lo.last_f1_macro is not None:
        before = f"{fmt_num(lo.first_f1_macro, 3)} -> " if lo.first_f1_macro is not None and len(
            [e for e in lo.eval if e.f1_macro is not None]) > 1 else ""
        rows.append(("Macro F1 (first -> last eval)" if before else "Macro F1 (last eval)",
                     before + fmt_num(lo.last_f1_macro, 3)))
    fg = report.forgetting
    if fg is not None:
        text = forgetting_text(fg)
        how = (" (before: the trained model with its adapters off)" if fg.before_adapters_off else "")
        rows.append(("Forgetting", f"{text} over {fmt_num(fg.tokens)} tokens of {fg.data}{how}" if text
                     else "not measured (the run did not complete)"))
    if report.status_detail.attempts > 1 or ck.count:
        rows.append(("Checkpoints", f"{ck.count}" + (f" (last at step {ck.last_step})" if ck.last_step is not None else "")))
    return rows


def summary_sections(report: Report) -> list[tuple[str, Rows]]:
    """The report as titled sections of (label, formatted value): shared by every renderer."""
    sections = [("Job", job_rows(report)), ("Throughput", throughput_rows(report)), ("MFU", mfu_rows(report)),
                ("Energy and emissions", energy_rows(report)), ("Cost", cost_rows(report))]
    fc = forecast_rows(report.forecast)
    if fc:
        sections.append(("Forecast vs actual", fc))
    faults = fault_rows(report)
    if faults:
        sections.append(("Faults and stragglers", faults))
    return sections + [("Loss", loss_rows(report))]


def fault_rows(report: Report) -> Rows:
    """Restarts and the steps they redid, the slowest rank, and Slurm's allocated time; only the
    rows that say something (one rank and no fault: none)."""
    rows = []
    rs, st, al = report.restarts, report.stragglers, report.allocation
    if rs.attempts > 1:
        rows.append(("Restarts", f"{rs.automatic_restarts} automatic, {rs.resumes} resumed from a checkpoint; "
                                 f"{rs.steps_lost + rs.redone_steps} step(s) done again"))
    if st.available and st.ranks > 1:
        med = st.compute_median_s
        host = f" on {st.slowest_host}" if st.slowest_host else ""
        rows.append(("Slowest rank", f"rank {st.slowest_rank}{host}: {fmt_dur(med[str(st.slowest_rank)])} of "
                                     f"compute per step, fastest rank {st.fastest_rank} "
                                     f"{fmt_dur(med[str(st.fastest_rank)])} (x{st.spread:.2f})"
                     if st.spread else f"rank {st.slowest_rank}{host}"))
        rows.append(("Waiting in the step's collective", f"{fmt_pct(st.wait_share)} of the median step"))
        rows += straggler_rows(st)
    if al.available:
        share = f" ({fmt_pct(al.trainer_share)} of it)" if al.trainer_share is not None else ""
        rows.append((f"Allocated ({al.source})", f"{fmt_num(al.device_hours)} device-hours over {al.attempts} "
                                          f"attempt(s) ({', '.join(al.states)}); devices: {al.devices_from}"))
        rows.append(("Measured by the trainer", f"{fmt_num(al.trainer_device_hours)} device-hours{share}"))
    return rows


def straggler_rows(st: Stragglers) -> Rows:
    """One row per rank: its compute and its waiting for the others (medians per step, and totals),
    the slowest rank marked; the rank the others wait for computes longest and waits least."""
    rows = []
    for r in st.per_rank:
        where = f" ({r.host})" if r.host else ""
        mark = "  <- slowest" if r.rank == st.slowest_rank else ""
        rows.append((f"  rank {r.rank}{where}",
                     f"compute {fmt_dur(r.compute_median_s)}, waiting {fmt_dur(r.wait_median_s)} per step; "
                     f"{fmt_dur(r.compute_s)} / {fmt_dur(r.wait_s)} in all{mark}"))
    return rows


FORECAST_LABELS = {"time_s": "Time (training steps)", "kwh": "Energy", "kg_co2e": "Emissions", "cost": "Cost",
                   "peak_memory_bytes": "Peak memory per device"}


def forecast_rows(fc: Optional[ForecastCheck]) -> Rows:
    """Forecast against actual, one row per figure: forecast, actual and actual / forecast."""
    if fc is None or not fc.available:
        return []
    rows = []
    for key, label in FORECAST_LABELS.items():
        r = fc.rows.get(key)
        if r is None:
            continue
        unit = r.unit
        show: Callable[[Any], str] = {
            "time_s": fmt_dur, "kwh": fmt_kwh, "peak_memory_bytes": fmt_bytes,
            "kg_co2e": lambda v: "n/a" if v is None else f"{fmt_num(v)} kgCO2e",
            "cost": lambda v: fmt_money(v, unit),
        }[key]
        ratio = f"x{r.ratio:.2f}" if r.ratio is not None else "ratio n/a"
        note = f" ({r.note})" if r.note else ""
        rows.append((label, f"forecast {show(r.forecast)} · actual {show(r.actual)} · {ratio}{note}"))
    src = (f"scaled from {fc.calibrated_from} ({calibration_words(fc.calibration_source, fc.calibration_distance)})"
           if fc.calibrated_from else "the plan's assumptions")
    rows.append(("Forecast from", f"{src}; {fmt_num(fc.steps_done)} of {fmt_num(fc.steps_forecast)} forecast steps done"))
    for m in fc.missing:
        rows.append(("Forecast n/a", m))
    return rows


# --------------------------------------------------------------------------- comparison columns

CompareCol = tuple[str, Callable[[Report], str]]


def _cost_total(r: Report) -> str:
    return fmt_money(r.cost.total, r.cost.currency) if r.cost.available else "n/a"


def _cost_pm(r: Report) -> str:
    return fmt_money(r.cost.per_million_tokens, r.cost.currency) if r.cost.available else "n/a"


COMPARE_COLUMNS: list[CompareCol] = [
    ("Run", run_label),
    ("Status", lambda r: "completed" if r.complete else "incomplete"),
    ("Strategy", lambda r: {"zero": "ZeRO", "fsdp": "FSDP2"}.get(r.job.strategy, str(r.job.strategy))),
    ("ZeRO stage", lambda r: "-" if r.job.zero_stage is None else str(r.job.zero_stage)),
    ("Method", lambda r: str(r.job.method or "n/a")),
    ("Nodes", lambda r: fmt_num(r.job.nodes)),
    ("World", lambda r: fmt_num(r.job.world_size)),
    ("Tokens/s/device", lambda r: fmt_num(r.throughput.tokens_per_s_per_device)),
    ("MFU", lambda r: fmt_pct(r.mfu.value) if r.mfu.value is not None else "n/a"),
    ("kWh", lambda r: f"{r.energy.energy_kwh.total:.4g}" if r.energy.available else "n/a"),
    ("kgCO2e", lambda r: f"{r.energy.emissions_kg:.4g}" if r.energy.available and r.energy.emissions_kg is not None
     else "n/a"),
    ("Cost", _cost_total),
    ("Cost/M tokens", _cost_pm),
    ("Last loss", lambda r: fmt_num(r.loss.last_train_loss, 4)),
]


def compare_rows(reports: Sequence[Report]) -> tuple[list[str], list[list[str]]]:
    headers = [h for h, _ in COMPARE_COLUMNS]
    return headers, [[fn(r) for _, fn in COMPARE_COLUMNS] for r in reports]


# --------------------------------------------------------------------------- lines


def what_changed(report: Report) -> Optional[str]:
    """The line "what changed: eval loss A (step s) -> B (step t)", plus the task accuracy before and
    after when both evaluations have one; None with fewer than two evaluations."""
    evals = [e for e in report.loss.eval if e.eval_loss is not None]
    if len(evals) < 2:
        return None
    first, last = evals[0], evals[-1]
    line = f"what changed: eval loss {first.eval_loss:.4f} (step {first.step}) -> {last.eval_loss:.4f} (step {last.step})"
    if first.accuracy is not None and last.accuracy is not None:
        line += f", task accuracy {first.accuracy:.1%} -> {last.accuracy:.1%}"
    if first.f1_macro is not None and last.f1_macro is not None:
        line += f", macro F1 {first.f1_macro:.3f} -> {last.f1_macro:.3f}"
    forgetting = forgetting_text(report.forgetting)
    if forgetting:
        line += f", {forgetting}"
    return line
