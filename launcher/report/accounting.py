"""MFU, energy and cost sections of the report: pure functions of the job section, the
throughput section, the plan and the node energy summaries (no file is read here).

* MFU = tokens/s per device (step times) x flops_per_token / dense peak of the accelerator for
  the job dtype (:mod:`launcher.facts.flops`, :mod:`launcher.facts.hardware`); ``mfu_wall``
  uses the wall-time throughput. On CPU the peak is the matrix rate this machine's probe
  measured (plan.json's ``forecast.cpu``). No peak -> ``None`` with a reason, never a guess.
* Energy figures include PUE (CodeCarbon applies it); each comes with its measured/estimated
  label. Costs: ``gpu_hour_price`` x device-hours, or ``node_hour_price`` x node-hours, plus
  ``energy_price_per_kwh`` x kWh, when those prices are set in the job's ``report`` section.
"""
from __future__ import annotations

from typing import Optional, Sequence

from launcher.plan.types import CpuProbe, Plan
from launcher.report.compute import finite, latest
from launcher.report.energy import COMPONENTS, is_measured, sum_energy
from launcher.rundir.energy_file import EnergyKwh, Measured, NodeEnergy
from launcher.rundir.report_file import (ComputeCost, Cost, Energy, EnergyCost, HourlyCo2, Job, Mfu, NodeEnergyRow,
                                         OffsetCost, Throughput)
from launcher.facts.hardware import match_accelerator
from launcher.rundir import StartRecord
from launcher.spec import ReportSpec


def flops_per_token(plan: Plan, starts: Sequence[StartRecord], job: Job, notes: list[str]) -> Optional[float]:
    """The start record's value (the trainer computes it from the loaded model); without one, an
    estimate from the model shape in the plan."""
    fpt = finite(latest(starts, "flops_per_token"))
    if fpt:
        return fpt
    m = plan.model
    last = starts[-1] if starts else None
    n = last.n_params if last else (m.n_params if m else None)
    if not (m and n and m.n_layers and m.hidden_size and job.seq_len):
        return None
    from launcher.facts.flops import flops_per_token_from_config

    cfg = {"num_hidden_layers": m.n_layers, "hidden_size": m.hidden_size, "vocab_size": m.vocab_size,
           "tie_word_embeddings": False}
    method = job.method or "full"
    n_tr = last.n_trainable_params if last else None
    if method == "lora" and n_tr is None:
        return None
    try:
        v = flops_per_token_from_config(cfg, int(job.seq_len), int(n), n_tr, method)
    except (ValueError, TypeError):
        return None
    notes.append("flops_per_token estimated from plan.json's model (no start record value; embeddings assumed untied)")
    return v


def mfu_section(job: Job, thr: Throughput, fpt: Optional[float], cpu: Optional[CpuProbe] = None) -> Mfu:
    """MFU against the accelerator's dense peak; on CPU, against the matrix rate this machine's
    probe measured for the job's dtype and threads (``cpu``: plan.json's, when its CPU is the one
    the ranks ran on), labelled as measured: no CPU has a published peak."""
    device, name, dtype = job.device, job.accelerator, job.dtype or "bf16"
    out = Mfu(flops_per_token=fpt, dtype=dtype)
    if device == "cpu":
        if cpu is None or cpu.dtype != dtype or (name and cpu.cpu_model != name):
            return out.model_copy(update={"reason": "peak of cpu unknown"})
        out = out.model_copy(update={
            "accelerator": f"{cpu.cpu_model} ({cpu.threads} thread(s) per rank)",
            "accelerator_source": f"measured by launcher.prepare.probe: {cpu.dtype} {cpu.matmul_n}x{cpu.matmul_n} "
                                  "matrix products",
            "note": "on CPU the peak is this machine's measured matrix rate per rank, not a datasheet's"})
        peak = cpu.matmul_gflops / 1000.0
        return _mfu_value(out, thr, fpt, peak)
    accel = match_accelerator(name)
    if accel is None:
        return out.model_copy(update={"reason": f"peak of {name or device or 'the device'} unknown"})
    out = out.model_copy(update={"accelerator": accel.name, "accelerator_source": accel.source,
                                 "note": accel.note or None})
    peak = accel.peak_tflops(dtype)
    if not peak:
        return out.model_copy(update={"reason": f"peak of {accel.name} for {dtype} unknown"})
    return _mfu_value(out, thr, fpt, peak)


def _mfu_value(out: Mfu, thr: Throughput, fpt: Optional[float], peak: float) -> Mfu:
    out = out.model_copy(update={"peak_tflops": peak})
    if not fpt:
        return out.model_copy(update={"reason": "flops per token unknown (no flops_per_token in the start record)"})
    tpd = thr.tokens_per_s_per_device
    if tpd is None:
        return out.model_copy(update={"reason": "no training steps recorded"})
    achieved = tpd * fpt
    wall = thr.tokens_per_s_wall_per_device
    return out.model_copy(update={"achieved_tflops_per_device": achieved / 1e12, "value": achieved / (peak * 1e12),
                                  "mfu_wall": (wall * fpt / (peak * 1e12)) if wall is not None else None})


def _label_total(measured: Measured, energy_kwh: EnergyKwh) -> str:
    used = [c for c in COMPONENTS if energy_kwh.of(c) > 0] or list(COMPONENTS)
    m = [c for c in used if is_measured(measured.of(c))]
    e = [c for c in used if not is_measured(measured.of(c))]
    if not e:
        return "measured"
    if not m:
        return "estimated"
    return f"partly measured ({', '.join(m)}), partly estimated ({', '.join(e)})"


def energy_section(nodes: list[NodeEnergy], job: Job, thr: Throughput, notes: list[str]) -> Energy:
    """Job energy from the node summaries (:func:`launcher.report.energy.read_node_energy`)."""
    if not nodes:
        return Energy(available=False, reason="no emissions/<node>.json or .csv in the run directory", nodes=0)
    tot = sum_energy(nodes)
    expected = job.nodes or None
    partial = expected is not None and tot["nodes"] < expected
    if partial:
        notes.append(f"energy from {tot['nodes']} of {expected} nodes: job totals are partial")
    if not tot["final"]:
        notes.append("energy: some node trackers never stopped (figures up to their last flush)")
    tokens = thr.tokens or 0
    kwh = tot["energy_kwh"].total
    kg = tot["emissions_kg"]
    return Energy(
        **tot,
        available=True,
        nodes_expected=expected,
        partial=partial,
        total_label=_label_total(tot["measured"], tot["energy_kwh"]),
        energy_per_token_j=(kwh * 3.6e6 / tokens) if tokens else None,
        kwh_per_million_tokens=(kwh / tokens * 1e6) if tokens else None,
        gco2e_per_million_tokens=(kg * 1000.0 / tokens * 1e6) if tokens else None,
        per_node=[NodeEnergyRow(node=n.node, energy_kwh=n.energy_kwh, emissions_kg=n.emissions_kg,
                                duration_s=n.duration_s, measured=n.measured, final=n.final, pue=n.pue,
                                country_iso_code=n.country_iso_code, cpu_model=n.cpu_model, gpu_model=n.gpu_model)
                  for n in nodes],
    )


def hourly_co2(nodes: list[NodeEnergy], series, source: str, flat_kg: Optional[float]) -> HourlyCo2:
    """The job's CO2 from the intensity of the hours each tracker session ran (``series``: UTC epoch
    seconds and g/kWh, launcher.report.carbon.read_intensity_forecast): a session's energy spread
    evenly between its start and end."""
    from launcher.plan.start import iso, mean_intensity

    kg = kwh_all = 0.0
    first = last = None
    for node in nodes:
        for s in node.sessions:
            end = s.end_time
            start = s.start_time if s.start_time is not None else (end - s.duration_s if end is not None else None)
            if start is None or end is None:
                return HourlyCo2(source=source, flat_kg_co2e=flat_kg,
                                 reason=f"node {node.node}: a session without start and end times")
            g = mean_intensity(series, start, end)
            if g is None:
                return HourlyCo2(source=source, flat_kg_co2e=flat_kg,
                                 reason=f"{source} covers {iso(series[0][0])} to {iso(series[-1][0])}, not the "
                                        f"hours the job ran ({iso(start)} to {iso(end)})")
            kg += s.energy_kwh.total * g / 1000.0
            kwh_all += s.energy_kwh.total
            first = start if first is None else min(first, start)
            last = end if last is None else max(last, end)
    if first is None:
        return HourlyCo2(source=source, flat_kg_co2e=flat_kg, reason="no tracker session with energy")
    return HourlyCo2(available=True, source=source, kg_co2e=kg, mean_g_co2e_per_kwh=kg * 1000.0 / kwh_all if kwh_all else None,
                     flat_kg_co2e=flat_kg, start=iso(first), end=iso(last))


def offset_cost(prices: ReportSpec, energy: Energy) -> Optional[OffsetCost]:
    """The price of offsetting the job's CO2 (CodeCarbon's figure) at ``report.offset_price_per_tonne``."""
    if prices.offset_price_per_tonne is None or not energy.available or energy.emissions_kg is None:
        return None
    t = energy.emissions_kg / 1000.0
    return OffsetCost(price_per_tonne=prices.offset_price_per_tonne, tonnes_co2e=t, cost=t * prices.offset_price_per_tonne)


def cost_section(prices: ReportSpec, thr: Throughput, energy: Energy, notes: list[str]) -> Cost:
    """Money from the job's ``report`` prices (``plan.job.report``)."""
    currency = prices.currency or "USD"
    gpu_price, node_price, e_price = prices.gpu_hour_price, prices.node_hour_price, prices.energy_price_per_kwh
    offset = offset_cost(prices, energy)
    if gpu_price is None and node_price is None and e_price is None:
        return Cost(currency=currency, offset=offset, reason="no prices set (job report.gpu_hour_price, "
                                                             "report.node_hour_price, report.energy_price_per_kwh)")
    compute = energy_cost = None
    if gpu_price is not None and thr.device_hours is not None:
        if node_price is not None:
            notes.append("cost: both gpu_hour_price and node_hour_price set; used gpu_hour_price")
        compute = ComputeCost(basis=thr.device_hours_label or "GPU-hours", hours=thr.device_hours,
                              price_per_hour=gpu_price, cost=thr.device_hours * gpu_price)
    elif node_price is not None and thr.node_hours is not None:
        compute = ComputeCost(basis="node-hours", hours=thr.node_hours, price_per_hour=node_price,
                              cost=thr.node_hours * node_price)
    if e_price is not None:
        if energy.available:
            kwh = energy.energy_kwh.total
            energy_cost = EnergyCost(kwh=kwh, price_per_kwh=e_price, cost=kwh * e_price, label=energy.total_label)
        else:
            notes.append("cost: energy_price_per_kwh set but no energy figures: energy cost left out")
    if compute is None and energy_cost is None:
        return Cost(currency=currency, offset=offset,
                    reason="prices set but nothing to price (no timing or energy records)")
    total = (compute.cost if compute else 0.0) + (energy_cost.cost if energy_cost else 0.0)
    tokens = thr.tokens or 0
    return Cost(available=True, currency=currency, compute=compute, energy=energy_cost, offset=offset, total=total,
                per_million_tokens=(total / tokens * 1e6) if tokens else None)
