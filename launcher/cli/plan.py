from __future__ import annotations

import json
import re
from typing import Optional

import click

from launcher.cli._common import job_argument, load_job_or_default, overrides_argument

GIB = 1024 ** 3
_UNITS = {"": GIB, "k": 1000, "m": 1000 ** 2, "g": 1000 ** 3, "t": 1000 ** 4, "kb": 1000, "mb": 1000 ** 2,
          "gb": 1000 ** 3, "tb": 1000 ** 4, "kib": 1024, "mib": 1024 ** 2, "gib": GIB, "tib": 1024 ** 4}
FIT_ROWS = 12  # rows of the fit table in the terminal (--json lists every fit)


def parse_size(text: str) -> int:
    """Bytes from "80GiB", "80GB", "141G" (decimal units: G, GB; binary: GiB) or a bare number of GiB."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?)?\s*", text.lower())
    if not m or (m.group(2) or "") not in _UNITS:
        raise click.BadParameter(f"{text!r}: give a size such as 80GiB, 80GB or 141G", param_hint="'--gpu-memory'")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def gib(n: Optional[float]) -> str:
    return "n/a" if n is None else f"{n / GIB:,.2f}"


def _num(x: Optional[float], fmt: str = ",.2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _in(unit: int):
    return lambda n: f"{n / unit:,.2f}"


def memory_rows(mem) -> list[tuple[str, str]]:
    d, h = mem.per_device_bytes, mem.host_per_node
    name, unit = ("GiB", GIB) if d.total >= GIB else ("MiB", 2 ** 20)
    u = _in(unit)
    parts = [f"params {u(d.params)}", f"grads {u(d.grads)}", f"optimizer {u(d.optimizer)}"]
    if d.step_grads:
        parts.append(f"step grads {u(d.step_grads)}")
    parts += [f"activations {u(d.activations)}", f"logits {u(d.logits)}", f"buffers {u(d.buffers)}",
              f"overhead {u(d.overhead)}"]
    rows = [("memory/device", f"{u(d.total)} {name}: {', '.join(parts)} (model states {u(d.model_states)})"),
            ("host/node", f"{gib(mem.host_per_node_bytes)} GiB: runtime {gib(h.runtime)}, offload {gib(h.offload)}, "
                          f"staging {gib(h.buffers)}, loading {gib(h.loading)}")]
    if mem.nvme_per_node_bytes:
        rows.append(("nvme/node", f"{gib(mem.nvme_per_node_bytes)} GiB"))
    return rows


def forecast_rows(plan) -> list[tuple[str, str]]:
    from launcher.report.format import calibration_words, fit_words

    f = plan.forecast
    if f is None:
        return []
    label = "GPU-hours" if plan.device == "cuda" else "device-hours"
    rows = [("forecast", (f"{f.steps:,} steps ({f.steps_source}), {f.tokens:,} tokens" if f.steps is not None
                          else "steps unknown: launcher plan --with-data (or train.max_steps)"))]
    if f.step_time_s is not None:
        c = f.calibration
        if c and c.fit:
            how = f"{fit_words(c.fit)} of the calibration history; nearest {c.run_dir}, distance {c.distance:.2f}"
        elif c and (c.point or c.tokens_per_s_per_device):
            how = f"scaled from {c.run_dir}: {calibration_words(c.source, c.distance)}"
        else:
            how = f"MFU assumed {f.mfu_assumed:.0%} on {f.accelerator}, forecast {_num(f.mfu_forecast, '.1%')}"
        rows.append(("time", f"{f.step_time_s:,.3g} s/step, {_num(f.tokens_per_s_per_device, ',.0f')} tokens/s per "
                             f"device, {_num(f.hours, ',.3g')} h, {_num(f.gpu_hours, ',.4g')} {label} ({how})"))
    if f.kwh is not None:
        co2 = (f", {f.kg_co2e:,.4g} kgCO2e at {f.carbon_intensity_g_per_kwh:,.0f} g/kWh ({f.carbon_source})"
               if f.kg_co2e is not None else "")
        rows.append(("energy", f"{f.kwh:,.4g} kWh (PUE {f.pue:g}){co2}"))
    if f.cost is not None:
        rep = plan.job.report
        parts = []
        if f.compute_cost is not None:
            if rep.gpu_hour_price is not None:
                parts.append(f"{f.gpu_hours:,.4g} {label} x {rep.gpu_hour_price:g}")
            else:
                parts.append(f"{f.node_hours:,.4g} node-hours x {rep.node_hour_price:g}")
        if f.energy_cost is not None:
            parts.append(f"{f.kwh:,.4g} kWh x {rep.energy_price_per_kwh:g}")
        rows.append(("cost", f"{f.cost:,.2f} {f.currency} = {' + '.join(parts)}"))
    if f.offset_cost is not None:
        rows.append(("offset", f"{f.offset_cost:,.4g} {f.currency} = {f.kg_co2e / 1000:,.4g} tCO2e x "
                               f"{f.offset_price_per_tonne:g} {f.currency} per tonne"))
    b = f.best_start
    if b is not None:
        saving = f" ({b.saving_kg / b.kg_co2e_now:.0%} less)" if b.kg_co2e_now else ""
        rows.append(("best start", f"{b.at} within {b.window_h:g} h: {b.kg_co2e:,.4g} kgCO2e against "
                                   f"{b.kg_co2e_now:,.4g} now{saving}, from {b.source}"))
    c = f.communication
    if c is not None:
        text = f"{c.bytes_per_gpu_per_step / 1e9:,.2f} GB per GPU per step"
        if c.time_lower_bound_s is not None:
            text += f", at least {c.time_lower_bound_s:,.3g} s at {c.interconnect_gbps:g} Gbit/s per node"
        if c.bound == "communication":
            text += f": COMMUNICATION-BOUND (compute {c.compute_s:,.3g} s per step)"
        elif c.bound == "compute":
            text += f": compute-bound ({c.compute_s:,.3g} s per step)"
        else:
            text += f" ({c.note})"
        rows.append(("communication", text))
    for m in f.missing:
        rows.append(("forecast n/a", m))
    return rows


def plan_rows(plan) -> list[tuple[str, str]]:
    """The plan as (label, value) rows for the terminal."""
    job = plan.job
    rows = [
        ("job", job.name),
        ("model", f"{job.model.path} ({plan.dtype}, {job.train.method})"),
        ("data", f"{job.data.path} ({job.data.format}, max_seq_len {plan.seq_len}, "
                 f"{'packed' if job.data.packing else 'padded'})"),
        ("device", f"{plan.device} ({plan.backend}), {plan.nodes} node(s) x {plan.procs_per_node} = "
                   f"world size {plan.world_size}"),
        ("batch", f"micro {plan.micro_batch_size} x accum {plan.grad_accum_steps} x world {plan.world_size} "
                  f"= global {plan.global_batch_size} rows = {plan.tokens_per_step} tokens per step"),
    ]
    if plan.steps_per_epoch is not None:
        rows.append(("steps", f"{plan.steps_per_epoch} per epoch, {plan.total_steps} in all"))
    elif plan.total_steps is not None:
        rows.append(("steps", f"{plan.total_steps} (max_steps)"))
    else:
        rows.append(("steps", "known once the data is tokenized (launcher run, or plan --with-data)"))
    if plan.strategy == "zero":
        z = plan.ds_config["zero_optimization"]
        off = [f"{k.split('_')[1]}->{v['device']}" for k, v in z.items() if k.startswith("offload")]
        rows.append(("strategy", f"DeepSpeed ZeRO-{plan.zero_stage}" + (f", offload {', '.join(off)}" if off else "")))
    else:
        f = plan.fsdp
        rows.append(("strategy", f"FSDP2 (fully_shard), param {f.param_dtype}, reduce {f.reduce_dtype}, "
                                 f"reshard_after_forward={f.reshard_after_forward}, cpu_offload={f.cpu_offload}"))
    if plan.model:
        m = plan.model
        rows.append(("model shape", f"{m.architecture}: {m.n_params:,} params ({plan.params['trainable']:,} "
                                    f"trainable), hidden {m.hidden_size}, {m.n_layers} layers, vocab {m.vocab_size}"))
    if plan.memory:
        rows += memory_rows(plan.memory)
    rows += forecast_rows(plan)
    return rows


def _grid(rows: list[tuple[str, str]]) -> list[str]:
    import io

    from rich.console import Console
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, value)
    con = Console(file=io.StringIO(), width=200, color_system=None, highlight=False, emoji=False)
    con.print(table)
    return con.file.getvalue().splitlines()


def format_plan(plan) -> str:
    """The plan for people: a rich key/value table, the derivations, the memory formulas, the
    forecast's assumptions, notes and the ds_config."""
    lines = [*_grid(plan_rows(plan)), "derived:"]
    lines += [f"  - {d}" for d in plan.derivations]
    if plan.memory:
        lines.append("memory per device (bytes; docs/memory.md):")
        lines += [f"  - {d}" for d in plan.memory.formulas]
        lines += [f"  - assumed: {a}" for a in plan.memory.assumptions]
    if plan.forecast and (plan.forecast.assumptions or plan.forecast.communication):
        lines.append("forecast (launcher.plan.forecast):")
        lines += [f"  - {a}" for a in plan.forecast.assumptions]
        if plan.forecast.communication:
            lines += [f"  - {c}" for c in plan.forecast.communication.collectives]
            lines.append(f"  - {plan.forecast.communication.note}")
    if plan.notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in plan.notes]
    if plan.ds_config is not None:
        lines.append("ds_config.json:")
        lines += ["  " + ln for ln in json.dumps(plan.ds_config, indent=2, sort_keys=True).splitlines()]
    return "\n".join(line.rstrip() for line in lines)


def format_fit(kept, tried: int, gpu_memory: int, margin: float, fits: bool, job_file: Optional[str]) -> str:
    import io

    from rich.console import Console
    from rich.table import Table

    table = Table(title=None, box=None, padding=(0, 1))
    for col in ("#", "setting", "micro x accum", "ckpt", "GiB/GPU", "host GiB/node", "tok/s/GPU", "hours", "cost",
                "bound"):
        table.add_column(col, justify="right" if col not in ("setting", "ckpt", "bound") else "left", no_wrap=True)
    for i, c in enumerate(kept[:FIT_ROWS], 1):
        f = c.plan.forecast
        bound = f.communication.bound if f and f.communication and f.communication.bound else "-"
        table.add_row(str(i), c.label(), f"{c.plan.micro_batch_size} x {c.plan.grad_accum_steps}",
                      "on" if c.plan.job.train.activation_checkpointing else "off", gib(c.total),
                      gib(c.plan.memory.host_per_node_bytes), _num(f.tokens_per_s_per_device if f else None, ",.0f"),
                      _num(f.hours if f else None, ",.3g"),
                      _num(f.cost if f else None, ",.2f") + (f" {f.currency}" if f and f.cost is not None else ""),
                      bound)
    con = Console(file=io.StringIO(), width=200, color_system=None, highlight=False, emoji=False)
    con.print(table)
    head = (f"fit: {len(kept)} of {tried} configurations fit in {gib(gpu_memory)} GiB per GPU with a "
            f"{margin:.0%} margin ({gib(gpu_memory * (1 - margin))} GiB), ranked by forecast tokens/s, then cost; "
            f"the job as written {'fits' if fits else 'does NOT fit'}")
    lines = [head, *con.file.getvalue().splitlines()]
    if kept:
        cmd = "launcher plan" + (f" {job_file}" if job_file else "")
        lines.append(f"best: {cmd} {' '.join(kept[0].overrides)}")
    else:
        lines.append("nothing fits: more GPUs (cluster.nodes), a shorter data.max_seq_len, or LoRA (train.method=lora)")
    return "\n".join(line.rstrip() for line in lines)


@click.command()
@job_argument
@overrides_argument
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (params, memory, forecast; fits and fit "
                                                      "with --gpu-memory).")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None,
              help="Plan for this device (default: cluster.device; auto: as launcher run would here, "
                   "cuda when cluster.accelerator names a GPU).")
@click.option("--with-data", is_flag=True,
              help="Tokenize the data (as launcher run would) to show rows, steps per epoch and total steps.")
@click.option("--gpu-memory", "gpu_memory", default=None, metavar="SIZE",
              help="Memory per GPU, e.g. 80GiB: list the strategy x stage x offload x micro batch x checkpointing "
                   "settings that fit, best first, with the overrides of the best.")
@click.option("--margin", type=click.FloatRange(0.0, 0.9), default=None,
              help="Share of the GPU memory a fit leaves free (default 0.10).")
@click.option("--calibrate", "calibrate", default=None, type=click.Path(file_okay=False, exists=True),
              metavar="RUN_DIR", help="Forecast from this earlier run's measured step time and energy per token "
                                      "(default: the nearest run of the calibration history).")
@click.option("--no-calibration", "no_calibration", is_flag=True,
              help="Ignore the calibration history: forecast from the MFU and power assumptions (on CPU: this "
                   "machine's measured matrix throughput).")
@click.option("--start-window", "start_window", default=None, metavar="DURATION",
              help="With report.intensity_forecast (an hourly CSV): the start within this window (24h, 90m, 2d) "
                   "that gives the least forecast CO2, and the saving against starting now.")
def plan(job_file, overrides, as_json, device, with_data, gpu_memory, margin, calibrate, no_calibration,
         start_window):
    """Resolve JOB_FILE (default: the embedded demo job) with key.sub=value OVERRIDES and print
    world size, batch arithmetic, steps, engine settings and what was derived from what; with the
    model's config.json (a local folder, the demo, or a hub id in the local cache): parameters,
    memory per device and per node, and the forecast of time, GPU-hours, kWh, kgCO2e and cost,
    with its assumptions (docs/memory.md).

    The forecast needs the GPU kind (cluster.accelerator, e.g. H100-SXM) and the steps
    (train.max_steps, or --with-data); cluster.interconnect_gbps (per node, between nodes) gives
    a lower bound on the communication time per step.

    \b
    Examples:
      launcher plan job.yaml cluster.accelerator=H100-SXM --gpu-memory 80GiB
      launcher plan job.yaml --with-data --json | jq .forecast
      launcher plan job.yaml --calibrate runs/my-job-20260101-120000
    """
    import os

    from launcher import prepare
    from launcher.errors import JobError

    from launcher.cli._common import parse_window

    gpu_bytes = parse_size(gpu_memory) if gpu_memory else None
    window_s = parse_window(start_window) if start_window else None
    spec = load_job_or_default(job_file, overrides)
    dev = prepare.resolve_device(spec, device, planning=True)
    prepare.check_trackers_here(spec)
    prepare.check_nvme_buildable(spec)
    if calibrate and no_calibration:
        raise JobError("--calibrate and --no-calibration: give one of them")
    forecast_kw = {"calibrate": calibrate, "history": not no_calibration,
                   "probe": with_data or spec.train.max_steps is not None}  # no steps: nothing to time
    if with_data:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory(prefix="launcher-plan-") as tmp:
            p = prepare.plan_run(spec, dev, Path(tmp), **forecast_kw)
    else:
        _, p = prepare.plan_without_data(spec, dev, cpu_count=os.cpu_count(), **forecast_kw)
    if window_s is not None:
        p = prepare.with_best_start(p, window_s)
    # what the forecast was made from (CodeCarbon's intensity for the country, the probe, the
    # calibration), for the fit's plans
    extra: dict = ({"carbon_intensity": p.forecast.carbon_intensity_g_per_kwh, "carbon_source": p.forecast.carbon_source,
                    "calibration": p.forecast.calibration, "cpu": p.forecast.cpu} if p.forecast else {})
    out = p.to_dict()
    text = format_plan(p)
    if gpu_bytes is not None:
        from launcher.plan.fit import fit
        from launcher.plan.memory import FIT_MARGIN

        if p.model is None:
            raise JobError("--gpu-memory: the model's shape is unknown here (model.path: a folder with config.json, "
                           "demo:tiny-llama, or a hub id whose config.json is in the local cache)")
        m = FIT_MARGIN if margin is None else margin
        kept, tried = fit(p.job, dev, p.model, gpu_bytes, margin=m, train_rows=p.train_rows,
                          global_batch_size=p.global_batch_size, world_size=p.world_size, **extra)
        fits = p.memory.per_device_bytes.total <= gpu_bytes * (1 - m)
        out.update(fits=fits, fit=[c.to_dict() for c in kept], fit_margin=m, gpu_memory_bytes=gpu_bytes,
                   fit_tried=tried)
        text += "\n" + format_fit(kept, tried, gpu_bytes, m, fits, job_file)
    click.echo(json.dumps(out, indent=2, sort_keys=True) if as_json else text)
