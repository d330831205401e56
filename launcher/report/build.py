"""Build the report dict of one run from its run directory alone (no torch, no plotting).

Inputs: ``plan.json`` (required: it is what makes a folder a run directory), ``job.yaml``
(fallback for the job), ``metrics.jsonl`` (schema in :mod:`launcher.rundir`),
``emissions/*.json`` (:mod:`launcher.report.energy`) and the ``COMPLETED`` marker. Everything
is read defensively: a running or crashed job (no end record, torn last line, no energy file)
still gives a report, marked incomplete.

Conventions
-----------
* Steps logged twice (a resumed attempt redoes the steps after its checkpoint) count once:
  the last record of a step wins. Their time is still in the wall time and device-hours.
* ``tokens`` are non-padding tokens ("useful"); ``tokens_per_s`` divides them by the summed
  step times (training throughput), ``tokens_per_s_wall`` by the wall time from the first
  start record to the last record (everything: data loading, eval, checkpoints).
* Device-hours = sum over attempts (a start record opens one) of world_size x (last record -
  start, where start is the start record's time less its ``setup_s`` if given); the time
  between a preempted attempt and its requeue is not billed. They are
  "GPU-hours" on cuda, "device-hours" otherwise.
* MFU = tokens/s per device (step times) x flops_per_token / dense peak of the accelerator for
  the job dtype (:mod:`launcher.report.flops`, :mod:`launcher.report.hardware`); ``mfu_wall``
  uses the wall-time throughput. No peak -> ``None`` with a reason, never a guess.
* Energy figures include PUE (CodeCarbon applies it); each comes with its measured/estimated
  label. Costs: ``gpu_hour_price`` x device-hours, or ``node_hour_price`` x node-hours, plus
  ``energy_price_per_kwh`` x kWh, when those prices are set in the job's ``report`` section.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Optional

from launcher.errors import JobError
from launcher.report.energy import COMPONENTS, is_measured, read_node_energy, sum_energy
from launcher.report.hardware import match_accelerator
from launcher.rundir import COMPLETED, JOB_YAML, PLAN_JSON, iter_kind, read_metrics

SCHEMA_VERSION = 1


# --------------------------------------------------------------------------- small helpers


def _get(d: Any, *path: str, default: Any = None) -> Any:
    cur = d
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return default
        cur = cur[p]
    return default if cur is None else cur


def _first(*vals: Any) -> Any:
    for v in vals:
        if v is not None:
            return v
    return None


def _f(x: Any) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _i(x: Any) -> int:
    try:
        return int(x)
    except (TypeError, ValueError):
        return 0


def percentile(values: Iterable[float], p: float) -> Optional[float]:
    """Linear-interpolation percentile (numpy's default), ``p`` in [0, 100]."""
    xs = sorted(values)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return float(xs[lo])
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _div(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


# --------------------------------------------------------------------------- reading the folder


def not_a_run_dir(path: Any) -> JobError:
    return JobError(f"{path}: not a run directory (no plan.json); pass a folder made by launcher run or launcher slurm")


def read_plan(run_dir: Path) -> dict:
    p = run_dir / PLAN_JSON
    if not run_dir.is_dir() or not p.is_file():
        raise not_a_run_dir(run_dir)
    try:
        plan = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JobError(f"{p}: not valid JSON ({e}); the run directory is damaged") from None
    if not isinstance(plan, dict):
        raise JobError(f"{p}: expected a JSON object, got {type(plan).__name__}")
    return plan


def read_job(run_dir: Path, plan: dict) -> dict:
    job = plan.get("job")
    if isinstance(job, dict) and job:
        return job
    p = run_dir / JOB_YAML
    if p.is_file():
        try:
            import yaml

            data = yaml.safe_load(p.read_text())
            if isinstance(data, dict):
                return data
        except Exception:  # noqa: BLE001 - a damaged job.yaml must not hide the metrics
            pass
    return {}


def train_steps(records: list[dict]) -> list[dict]:
    """Train records, one per step (the last record of a step wins), in step order."""
    by_step: dict[int, dict] = {}
    for r in iter_kind(records, "train"):
        if "step" in r:
            by_step[_i(r["step"])] = r
    return [by_step[s] for s in sorted(by_step)]


def attempts(records: list[dict]) -> list[dict]:
    """One entry per start record: its start time, world size, nodes and last record time.

    The start record is written once the model is loaded; when it carries ``setup_s`` (seconds
    from process start to that record) the attempt starts that much earlier, so setup counts
    in the time to first step, the wall time and the device-hours."""
    out: list[dict] = []
    for r in records:
        t = _f(r.get("time"))
        if r.get("kind") == "start":
            setup = _f(r.get("setup_s"))
            if t is not None and setup is not None and setup > 0:
                t -= setup
            out.append({"start": t, "end": t, "world_size": _i(r.get("world_size")) or None,
                        "nodes": _i(r.get("nodes")) or None, "resumed_from_step": r.get("resumed_from_step")})
        elif out and t is not None:
            cur = out[-1]
            cur["end"] = t if cur["end"] is None else max(cur["end"], t)
    return out


# --------------------------------------------------------------------------- sections


def _job_section(job: dict, plan: dict, start: dict) -> dict:
    strategy = _first(start.get("strategy"), plan.get("strategy"), _get(job, "parallel", "strategy"))
    zero_stage = _first(start.get("zero_stage"), plan.get("zero_stage"),
                        _get(job, "parallel", "zero_stage") if strategy == "zero" else None)
    if strategy == "fsdp":
        zero_stage = None
    accel_name = _first(_get(job, "cluster", "accelerator"), start.get("accelerator"), plan.get("accelerator"))
    device = _first(start.get("device"), plan.get("device"), _get(job, "cluster", "device"))
    accel = match_accelerator(accel_name) if device != "cpu" else None
    return {
        "name": _first(job.get("name"), plan.get("name"), "job"),
        "model": _get(job, "model", "path"),
        "strategy": strategy,
        "zero_stage": zero_stage,
        "method": _first(start.get("method"), _get(job, "train", "method")),
        "dtype": _first(start.get("dtype"), plan.get("dtype"), _get(job, "model", "dtype")),
        "nodes": _first(start.get("nodes"), plan.get("nodes"), _get(job, "cluster", "nodes")),
        "procs_per_node": plan.get("procs_per_node"),
        "world_size": _first(start.get("world_size"), plan.get("world_size")),
        "device": device,
        "accelerator": accel_name,
        "accelerator_key": accel.key if accel else None,
        "seq_len": _first(start.get("seq_len"), plan.get("seq_len"), _get(job, "data", "max_seq_len")),
        "packing": _get(job, "data", "packing"),
        "micro_batch_size": _first(plan.get("micro_batch_size"), _get(job, "train", "micro_batch_size")),
        "grad_accum_steps": _first(plan.get("grad_accum_steps"), _get(job, "train", "grad_accum_steps")),
        "global_batch_size": _first(plan.get("global_batch_size"), _get(job, "train", "global_batch_size")),
        "n_params": start.get("n_params"),
        "n_trainable_params": start.get("n_trainable_params"),
        "planned_steps": _first(start.get("planned_steps"), plan.get("total_steps")),
    }


def _status_section(run_dir: Path, records: list[dict], steps: list[dict], planned: Any) -> tuple[str, dict]:
    completed = (run_dir / COMPLETED).exists()
    ends = list(iter_kind(records, "end"))
    end_status = ends[-1].get("status") if ends else None
    if completed:
        status = "completed"
    elif end_status in ("preempted", "failed"):
        status = f"incomplete ({end_status})"
    else:
        status = "incomplete (running or crashed)"
    return status, {
        "complete": completed,
        "completed_marker": completed,
        "end_record": bool(ends),
        "end_status": end_status,
        "steps_done": _i(steps[-1].get("step")) if steps else 0,
        "planned_steps": planned,
        "attempts": sum(1 for _ in iter_kind(records, "start")),
    }


def _totals(steps: list[dict], notes: list[str]) -> tuple[int, int, int]:
    """tokens, samples, padding_tokens over the run. Sums per step when every step is logged;
    from the cumulative counters when the log skips steps."""
    tokens = sum(_i(s.get("tokens")) for s in steps)
    samples = sum(_i(s.get("samples")) for s in steps)
    padding = sum(_i(s.get("padding_tokens")) for s in steps)
    if len(steps) >= 2:
        first, last = _i(steps[0].get("step")), _i(steps[-1].get("step"))
        if last - first + 1 != len(steps) and "cum_tokens" in steps[-1] and "cum_tokens" in steps[0]:
            tokens = _i(steps[-1]["cum_tokens"]) - (_i(steps[0]["cum_tokens"]) - _i(steps[0].get("tokens")))
            samples = _i(steps[-1].get("cum_samples")) - (_i(steps[0].get("cum_samples")) - _i(steps[0].get("samples")))
            notes.append(f"metrics.jsonl logs {len(steps)} of steps {first}..{last}: token and sample totals "
                         "from the cumulative counters; rates, step times and padding share from the logged steps")
    return tokens, samples, padding


def _throughput_section(job: dict, records: list[dict], steps: list[dict], notes: list[str]) -> dict:
    world = _i(job.get("world_size")) or 1
    nodes = _i(job.get("nodes")) or 1
    tokens, samples, padding = _totals(steps, notes)
    logged_tokens = sum(_i(s.get("tokens")) for s in steps)
    logged_samples = sum(_i(s.get("samples")) for s in steps)
    logged_padding = sum(_i(s.get("padding_tokens")) for s in steps)
    step_times = [t for t in (_f(s.get("step_time_s")) for s in steps) if t is not None]
    step_time_sum = sum(step_times) if step_times else None
    all_train = list(iter_kind(records, "train"))
    redone = len(all_train) - len(steps)
    if redone > 0:
        notes.append(f"{redone} step(s) were logged more than once (redone after a resume): counted once")

    atts = attempts(records)
    starts = [a["start"] for a in atts if a["start"] is not None]
    times = [t for t in (_f(r.get("time")) for r in records) if t is not None]
    first_start = min(starts) if starts else (min(times) if times else None)
    last_time = max(times) if times else None
    wall = (last_time - first_start) if (first_start is not None and last_time is not None) else None
    busy = 0.0
    dev_s = 0.0
    node_s = 0.0
    for a in atts:
        if a["start"] is None or a["end"] is None:
            continue
        span = max(a["end"] - a["start"], 0.0)
        busy += span
        dev_s += span * (a["world_size"] or world)
        node_s += span * (a["nodes"] or nodes)
    if not atts and wall is not None:
        busy, dev_s, node_s = wall, wall * world, wall * nodes
    first_train_time = _f(steps[0].get("time")) if steps else None
    ttfs = None
    if first_train_time is not None and starts:
        first_att_start = min(starts)
        ttfs = first_train_time - first_att_start

    tps = _div(logged_tokens, step_time_sum)
    tps_wall = _div(tokens, wall)
    padding_share = _div(logged_padding, logged_tokens + logged_padding) if (logged_tokens + logged_padding) else None
    return {
        "steps": len(steps),
        "last_step": _i(steps[-1].get("step")) if steps else 0,
        "redone_steps": max(redone, 0),
        "planned_steps": job.get("planned_steps"),
        "tokens": tokens,
        "samples": samples,
        "padding_tokens": padding,
        "padding_share": padding_share,
        "eval_tokens": sum(_i(r.get("eval_tokens")) for r in iter_kind(records, "eval")),
        "step_time_sum_s": step_time_sum,
        "step_time_median_s": percentile(step_times, 50),
        "step_time_p90_s": percentile(step_times, 90),
        "tokens_per_s": tps,
        "tokens_per_s_per_device": _div(tps, world),
        "samples_per_s": _div(logged_samples, step_time_sum),
        "samples_per_s_per_device": _div(_div(logged_samples, step_time_sum), world),
        "tokens_per_s_wall": tps_wall,
        "tokens_per_s_wall_per_device": _div(tps_wall, world),
        "time_to_first_step_s": ttfs,
        "wall_time_s": wall,
        "busy_time_s": busy if (atts or wall is not None) else None,
        "attempts": len(atts),
        "device_hours": dev_s / 3600.0 if (atts or wall is not None) else None,
        "device_hours_label": "GPU-hours" if job.get("device") == "cuda" else "device-hours",
        "node_hours": node_s / 3600.0 if (atts or wall is not None) else None,
        "first_time": first_start,
        "last_time": last_time,
    }


def _flops_per_token(start: dict, plan: dict, job: dict, notes: list[str]) -> Optional[float]:
    fpt = _f(start.get("flops_per_token"))
    if fpt:
        return fpt
    m = plan.get("model") if isinstance(plan.get("model"), dict) else None
    n = _first(start.get("n_params"), m.get("n_params") if m else None)
    if m and n and m.get("n_layers") and m.get("hidden_size") and job.get("seq_len"):
        from launcher.report.flops import flops_per_token_from_config

        cfg = {"num_hidden_layers": m["n_layers"], "hidden_size": m["hidden_size"],
               "vocab_size": m.get("vocab_size"), "tie_word_embeddings": False}
        method = job.get("method") or "full"
        n_tr = start.get("n_trainable_params")
        if method == "lora" and n_tr is None:
            return None
        try:
            v = flops_per_token_from_config(cfg, int(job["seq_len"]), int(n), n_tr, method)
        except (ValueError, TypeError):
            return None
        notes.append("flops_per_token estimated from plan.json's model (no start record value; embeddings assumed untied)")
        return v
    return None


def _mfu_section(job: dict, thr: dict, fpt: Optional[float]) -> dict:
    device = job.get("device")
    name = job.get("accelerator")
    dtype = job.get("dtype") or "bf16"
    out: dict[str, Any] = {"value": None, "mfu_wall": None, "reason": None, "flops_per_token": fpt,
                           "peak_tflops": None, "dtype": dtype, "accelerator": None,
                           "accelerator_source": None, "achieved_tflops_per_device": None, "note": None}
    accel = match_accelerator(name) if device != "cpu" else None
    if accel is None:
        what = "cpu" if device == "cpu" else (name or device or "the device")
        out["reason"] = f"peak of {what} unknown"
        return out
    out.update(accelerator=accel.name, accelerator_source=accel.source, note=accel.note or None)
    peak = accel.peak_tflops(dtype)
    if not peak:
        out["reason"] = f"peak of {accel.name} for {dtype} unknown"
        return out
    out["peak_tflops"] = peak
    if not fpt:
        out["reason"] = "flops per token unknown (no flops_per_token in the start record)"
        return out
    tpd = thr.get("tokens_per_s_per_device")
    if tpd is None:
        out["reason"] = "no training steps recorded"
        return out
    achieved = tpd * fpt
    out["achieved_tflops_per_device"] = achieved / 1e12
    out["value"] = achieved / (peak * 1e12)
    wall = thr.get("tokens_per_s_wall_per_device")
    out["mfu_wall"] = (wall * fpt / (peak * 1e12)) if wall is not None else None
    return out


def _label_total(measured: dict, energy_kwh: dict) -> str:
    used = [c for c in COMPONENTS if (energy_kwh.get(c) or 0) > 0] or list(COMPONENTS)
    m = [c for c in used if is_measured(measured.get(c))]
    e = [c for c in used if not is_measured(measured.get(c))]
    if not e:
        return "measured"
    if not m:
        return "estimated"
    return f"partly measured ({', '.join(m)}), partly estimated ({', '.join(e)})"


def _energy_section(run_dir: Path, job: dict, thr: dict, notes: list[str]) -> dict:
    nodes = read_node_energy(run_dir)
    if not nodes:
        return {"available": False, "reason": "no emissions/<node>.json or .csv in the run directory",
                "nodes": 0}
    tot = sum_energy(nodes)
    expected = _i(job.get("nodes")) or None
    partial = expected is not None and tot["nodes"] < expected
    if partial:
        notes.append(f"energy from {tot['nodes']} of {expected} nodes: job totals are partial")
    if not tot["final"]:
        notes.append("energy: some node trackers never stopped (figures up to their last flush)")
    tokens = thr.get("tokens") or 0
    kwh = tot["energy_kwh"]["total"]
    kg = tot["emissions_kg"]
    out = dict(tot)
    out.update(
        available=True,
        nodes_expected=expected,
        partial=partial,
        total_label=_label_total(tot["measured"], tot["energy_kwh"]),
        energy_per_token_j=(kwh * 3.6e6 / tokens) if tokens else None,
        kwh_per_million_tokens=(kwh / tokens * 1e6) if tokens else None,
        gco2e_per_million_tokens=(kg * 1000.0 / tokens * 1e6) if tokens else None,
        per_node=[{
            "node": n.get("node"),
            "energy_kwh": n.get("energy_kwh", {}),
            "emissions_kg": n.get("emissions_kg"),
            "duration_s": n.get("duration_s"),
            "measured": n.get("measured", {}),
            "final": n.get("final", False),
            "pue": n.get("pue"),
            "country_iso_code": n.get("country_iso_code"),
            "cpu_model": n.get("cpu_model"),
            "gpu_model": n.get("gpu_model"),
        } for n in nodes],
    )
    return out


def _cost_section(job_spec: dict, job: dict, thr: dict, energy: dict, notes: list[str]) -> dict:
    rep = job_spec.get("report") or {}
    currency = rep.get("currency") or "USD"
    gpu_price = _f(rep.get("gpu_hour_price"))
    node_price = _f(rep.get("node_hour_price"))
    e_price = _f(rep.get("energy_price_per_kwh"))
    out: dict[str, Any] = {"available": False, "currency": currency, "compute": None, "energy": None,
                           "total": None, "per_million_tokens": None, "reason": None}
    if gpu_price is None and node_price is None and e_price is None:
        out["reason"] = "no prices set (job report.gpu_hour_price, report.node_hour_price, report.energy_price_per_kwh)"
        return out
    total = 0.0
    if gpu_price is not None and thr.get("device_hours") is not None:
        if node_price is not None:
            notes.append("cost: both gpu_hour_price and node_hour_price set; used gpu_hour_price")
        hours = thr["device_hours"]
        out["compute"] = {"basis": thr.get("device_hours_label") or "GPU-hours", "hours": hours,
                          "price_per_hour": gpu_price, "cost": hours * gpu_price}
    elif node_price is not None and thr.get("node_hours") is not None:
        hours = thr["node_hours"]
        out["compute"] = {"basis": "node-hours", "hours": hours, "price_per_hour": node_price,
                          "cost": hours * node_price}
    if out["compute"]:
        total += out["compute"]["cost"]
    if e_price is not None:
        if energy.get("available"):
            kwh = energy["energy_kwh"]["total"]
            out["energy"] = {"kwh": kwh, "price_per_kwh": e_price, "cost": kwh * e_price,
                             "label": energy.get("total_label")}
            total += out["energy"]["cost"]
        else:
            notes.append("cost: energy_price_per_kwh set but no energy figures: energy cost left out")
    if out["compute"] is None and out["energy"] is None:
        out["reason"] = "prices set but nothing to price (no timing or energy records)"
        return out
    tokens = thr.get("tokens") or 0
    out.update(available=True, total=total, per_million_tokens=(total / tokens * 1e6) if tokens else None)
    return out


def _loss_section(records: list[dict], steps: list[dict]) -> dict:
    losses = [(_i(s.get("step")), _f(s.get("loss"))) for s in steps]
    losses = [(st, v) for st, v in losses if v is not None]
    evals_by_step: dict[int, dict] = {}
    for r in iter_kind(records, "eval"):
        evals_by_step[_i(r.get("step"))] = {"step": _i(r.get("step")), "eval_loss": _f(r.get("eval_loss")),
                                            "accuracy": _f(r.get("accuracy")), "eval_tokens": r.get("eval_tokens")}
    evals = [evals_by_step[k] for k in sorted(evals_by_step)]
    ev_losses = [e for e in evals if e["eval_loss"] is not None]
    accs = [e for e in evals if e["accuracy"] is not None]
    min_tr = min(losses, key=lambda x: x[1]) if losses else None
    min_ev = min(ev_losses, key=lambda e: e["eval_loss"]) if ev_losses else None
    return {
        "first_train_loss": losses[0][1] if losses else None,
        "last_train_loss": losses[-1][1] if losses else None,
        "min_train_loss": min_tr[1] if min_tr else None,
        "min_train_loss_step": min_tr[0] if min_tr else None,
        "eval": evals,
        "first_eval_loss": ev_losses[0]["eval_loss"] if ev_losses else None,
        "last_eval_loss": ev_losses[-1]["eval_loss"] if ev_losses else None,
        "min_eval_loss": min_ev["eval_loss"] if min_ev else None,
        "min_eval_loss_step": min_ev["step"] if min_ev else None,
        "last_accuracy": accs[-1]["accuracy"] if accs else None,
    }


# --------------------------------------------------------------------------- entry point


def build_report(run_dir: str | os.PathLike) -> dict:
    """The report of one run, as a JSON-ready dict (``schema_version`` 1)."""
    rd = Path(run_dir)
    plan = read_plan(rd)
    job_spec = read_job(rd, plan)
    records = read_metrics(rd)
    starts = list(iter_kind(records, "start"))
    start = starts[0] if starts else {}
    if len(starts) > 1:  # later attempts may have been resized; the last says what trained last
        start = {**starts[0], **{k: v for k, v in starts[-1].items() if v is not None and k != "time"}}
    notes: list[str] = []
    if not records:
        notes.append("metrics.jsonl missing or empty: the job has not started training")
    elif not starts:
        notes.append("metrics.jsonl has no start record: world size and device from plan.json")
    job = _job_section(job_spec, plan, start)
    steps = train_steps(records)
    status, status_detail = _status_section(rd, records, steps, job.get("planned_steps"))
    thr = _throughput_section(job, records, steps, notes)
    fpt = _flops_per_token(start, plan, job, notes)
    mfu = _mfu_section(job, thr, fpt)
    energy = _energy_section(rd, job, thr, notes)
    cost = _cost_section(job_spec, job, thr, energy, notes)
    loss = _loss_section(records, steps)
    checkpoints = list(iter_kind(records, "checkpoint"))
    return {
        "schema_version": SCHEMA_VERSION,
        "run_dir": str(rd.resolve()),
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "job": job,
        "status": status,
        "complete": status_detail["complete"],
        "status_detail": status_detail,
        "throughput": thr,
        "mfu": mfu,
        "energy": energy,
        "cost": cost,
        "loss": loss,
        "checkpoints": {"count": len(checkpoints),
                        "last_step": _i(checkpoints[-1].get("step")) if checkpoints else None},
        "notes": notes,
    }


# --------------------------------------------------------------------------- series for plots


def load_series(run_dir: str | os.PathLike) -> dict:
    """Per-step series for plots, read from metrics.jsonl (not stored in report.json)."""
    records = read_metrics(run_dir)
    steps = train_steps(records)
    s_step, s_loss, s_tps, s_time = [], [], [], []
    for r in steps:
        st = _i(r.get("step"))
        s_step.append(st)
        s_loss.append(_f(r.get("loss")))
        s_tps.append(_div(_f(r.get("tokens")), _f(r.get("step_time_s"))))
        s_time.append(_f(r.get("time")))
    evals: dict[int, Optional[float]] = {}
    for r in iter_kind(records, "eval"):
        evals[_i(r.get("step"))] = _f(r.get("eval_loss"))
    ev = sorted(evals.items())
    return {"step": s_step, "loss": s_loss, "tokens_per_s": s_tps, "time": s_time,
            "eval_step": [k for k, _ in ev], "eval_loss": [v for _, v in ev]}
