"""The report's arithmetic: each section as a pure function of the typed Plan, the typed records
of metrics.jsonl and the node energy summaries. Nothing here reads a file
(:mod:`launcher.report.build` reads the run directory and calls these).

Conventions
-----------
* Job facts come from the Plan (strategy, ZeRO stage, dtype, batch, sequence length, packing,
  prices); what the run actually used comes from its start records (world size and nodes,
  accelerator, parameter counts, FLOPs per token, setup time). A resumed attempt may have
  been resized: the last start record says what trained last.
* Steps logged twice (a resumed attempt redoes the steps after its checkpoint) count once:
  the last record of a step wins. Their time is still in the wall time and device-hours.
* ``tokens`` are non-padding tokens ("useful"); ``tokens_per_s`` divides them by the summed
  step times (training throughput), ``tokens_per_s_wall`` by the wall time from the first
  start record to the last record (everything: data loading, eval, checkpoints).
* Device-hours = sum over attempts (a start record opens one) of world_size x (last record -
  start, where start is the start record's time less its ``setup_s``); the time between a
  preempted attempt and its requeue is not billed. They are "GPU-hours" on cuda,
  "device-hours" otherwise.

MFU, energy and cost: :mod:`launcher.report.accounting`.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence

from launcher.plan.types import Plan
from launcher.facts.hardware import match_accelerator
from launcher.rundir import CheckpointRecord, EndRecord, EvalRecord, GeneralEvalRecord, StartRecord, TrainRecord
from launcher.rundir.report_file import Checkpoints, EvalPoint, Forgetting, Job, Loss, StatusDetail, Throughput


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """``a / b``, or None when either is unknown or ``b`` is 0 (a rate with nothing to divide by)."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def finite(x: Optional[float]) -> Optional[float]:
    """``x``, or None for a NaN or infinite value (a diverged loss): JSON has no NaN."""
    return x if x is not None and math.isfinite(x) else None


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


def warmup_steps(records: Sequence[Any]) -> set[int]:
    """The steps each attempt ran first (the first train record after each start record): they
    pay the attempt's one-off costs (first-touch allocations, the optimizer's state created on its
    first step, the kernels' first calls), which the steps after them do not."""
    out: set[int] = set()
    fresh = False
    for r in records:
        if isinstance(r, StartRecord):
            fresh = True
        elif fresh and isinstance(r, TrainRecord):
            out.add(r.step)
            fresh = False
    return out


def steady_and_warmup(records: Sequence[Any], steps: list[TrainRecord]) -> tuple[Optional[float], Optional[float]]:
    """(the mean time of the steps after each attempt's first, what an attempt's first step took
    over that mean, on average over the attempts): a job of one attempt takes about
    ``warmup + steps x steady``. (None, None) where no step but the first ones was timed."""
    first = warmup_steps(records)
    timed = [(s.step, t) for s in steps if (t := finite(s.step_time_s)) is not None]
    rest = [t for step, t in timed if step not in first]
    if not rest:
        return None, None
    steady = sum(rest) / len(rest)
    excess = [max(t - steady, 0.0) for step, t in timed if step in first]
    return steady, (sum(excess) / len(excess) if excess else None)


def train_steps(records: Sequence[Any]) -> list[TrainRecord]:
    """Train records, one per step (the last record of a step wins), in step order."""
    by_step = {r.step: r for r in records if isinstance(r, TrainRecord)}
    return [by_step[s] for s in sorted(by_step)]


def attempts(records: Sequence[Any]) -> list[dict]:
    """One entry per start record: its start time, world size, nodes and last record time.

    The start record is written once the model is loaded; its ``setup_s`` (seconds from process
    start to that record) moves the attempt's start that much earlier, so setup counts in the
    time to first step, the wall time and the device-hours."""
    out: list[dict] = []
    for r in records:
        if isinstance(r, StartRecord):
            t = r.time - r.setup_s if r.setup_s > 0 else r.time
            out.append({"start": t, "end": t, "world_size": r.world_size, "nodes": r.nodes,
                        "resumed_from_step": r.resumed_from_step})
        elif out:
            out[-1]["end"] = max(out[-1]["end"], r.time)
    return out


def latest(starts: Sequence[StartRecord], field: str) -> Any:
    """The last start record's value of an optional field, else an earlier attempt's."""
    for s in reversed(starts):
        v = getattr(s, field)
        if v is not None:
            return v
    return None


# --------------------------------------------------------------------------- sections


def job_section(plan: Plan, starts: Sequence[StartRecord]) -> Job:
    """The job as planned, with what actually ran (the last start record: a resumed attempt may
    differ in world size, device or precision) taking precedence."""
    job = plan.job
    ran = starts[-1] if starts else None
    device = ran.device if ran else plan.device
    accel_name = job.cluster.accelerator or latest(starts, "accelerator")  # the job's explicit name wins
    accel = match_accelerator(accel_name) if device != "cpu" else None
    return Job(
        name=job.name,
        model=job.model.path,
        strategy=ran.strategy if ran else plan.strategy,
        zero_stage=ran.zero_stage if ran else plan.zero_stage,
        method=ran.method if ran else job.train.method,
        dtype=ran.dtype if ran else plan.dtype,
        nodes=ran.nodes if ran else plan.nodes,
        procs_per_node=plan.procs_per_node,
        world_size=ran.world_size if ran else plan.world_size,
        device=device,
        accelerator=accel_name,
        accelerator_key=accel.key if accel else None,
        seq_len=ran.seq_len if ran else plan.seq_len,
        packing=job.data.packing,
        micro_batch_size=plan.micro_batch_size,
        grad_accum_steps=plan.grad_accum_steps,
        global_batch_size=plan.global_batch_size,
        n_params=ran.n_params if ran else None,
        n_trainable_params=ran.n_trainable_params if ran else None,
        # the trainer's count from the data it loaded; plan.json's when no attempt started
        planned_steps=ran.planned_steps if ran else plan.total_steps,
        task=job.train.task,
        labels=ran.labels if ran else job.data.labels,
        replay_path=job.data.replay.path if job.data.replay else None,
        replay_rows_per_step=ran.replay_rows_per_step if ran else 0,
    )


def forgetting_section(plan: Plan, records: Sequence[Any]) -> Optional[Forgetting]:
    """The first "before" and the last "after" of eval.general_data; None when the job measures none."""
    general = plan.job.eval.general_data
    evals = [r for r in records if isinstance(r, GeneralEvalRecord)]
    if not general:
        return None
    before = next((r for r in evals if r.phase == "before"), None)
    after = next((r for r in reversed(evals) if r.phase == "after"), None)
    b, a = (finite(r.perplexity) if r else None for r in (before, after))
    return Forgetting(data=general, tokens=(after or before).tokens if (after or before) else 0, before_ppl=b,
                      after_ppl=a, change=(a / b - 1.0) if (a is not None and b) else None,
                      before_adapters_off=bool(before and before.adapters_off))


def status_section(completed: bool, records: Sequence[Any], steps: list[TrainRecord],
                   planned: Optional[int]) -> tuple[str, StatusDetail]:
    ends = [r for r in records if isinstance(r, EndRecord)]
    end_status = ends[-1].status if ends else None
    if completed:
        status = "completed"
    elif end_status in ("preempted", "failed"):
        status = f"incomplete ({end_status})"
    else:
        status = "incomplete (running or crashed)"
    return status, StatusDetail(
        complete=completed,
        completed_marker=completed,
        end_record=bool(ends),
        end_status=end_status,
        steps_done=steps[-1].step if steps else 0,
        planned_steps=planned,
        attempts=sum(1 for r in records if isinstance(r, StartRecord)),
    )


def _totals(steps: list[TrainRecord], notes: list[str]) -> tuple[int, int, int]:
    """tokens, samples, padding_tokens over the run. Sums per step when every step is logged;
    from the cumulative counters when the log skips steps."""
    tokens = sum(s.tokens for s in steps)
    samples = sum(s.samples for s in steps)
    padding = sum(s.padding_tokens for s in steps)
    if len(steps) >= 2:
        first, last = steps[0], steps[-1]
        if last.step - first.step + 1 != len(steps):
            tokens = last.cum_tokens - (first.cum_tokens - first.tokens)
            samples = last.cum_samples - (first.cum_samples - first.samples)
            notes.append(f"metrics.jsonl logs {len(steps)} of steps {first.step}..{last.step}: token and sample "
                         "totals from the cumulative counters; rates, step times and padding share from the "
                         "logged steps")
    return tokens, samples, padding


def throughput_section(job: Job, records: Sequence[Any], steps: list[TrainRecord], notes: list[str]) -> Throughput:
    world = job.world_size or 1
    nodes = job.nodes or 1
    tokens, samples, padding = _totals(steps, notes)
    logged_tokens = sum(s.tokens for s in steps)
    logged_samples = sum(s.samples for s in steps)
    logged_padding = sum(s.padding_tokens for s in steps)
    step_times = [t for t in (finite(s.step_time_s) for s in steps) if t is not None]
    step_time_sum = sum(step_times) if step_times else None
    redone = sum(1 for r in records if isinstance(r, TrainRecord)) - len(steps)
    if redone > 0:
        notes.append(f"{redone} step(s) were logged more than once (redone after a resume): counted once")

    atts = attempts(records)
    starts = [a["start"] for a in atts]
    times = [r.time for r in records]
    first_start = min(starts) if starts else (min(times) if times else None)
    last_time = max(times) if times else None
    wall = (last_time - first_start) if (first_start is not None and last_time is not None) else None
    busy = dev_s = node_s = 0.0
    for a in atts:
        span = max(a["end"] - a["start"], 0.0)
        busy += span
        dev_s += span * (a["world_size"] or world)
        node_s += span * (a["nodes"] or nodes)
    if not atts and wall is not None:
        busy, dev_s, node_s = wall, wall * world, wall * nodes
    timed = bool(atts) or wall is not None
    ttfs = steps[0].time - min(starts) if (steps and starts) else None

    steady, warmup = steady_and_warmup(records, steps)
    tps = ratio(logged_tokens, step_time_sum)
    tps_wall = ratio(tokens, wall)
    samples_per_s = ratio(logged_samples, step_time_sum)
    return Throughput(
        steps=len(steps),
        last_step=steps[-1].step if steps else 0,
        redone_steps=max(redone, 0),
        planned_steps=job.planned_steps,
        tokens=tokens,
        samples=samples,
        padding_tokens=padding,
        padding_share=ratio(logged_padding, logged_tokens + logged_padding),
        eval_tokens=sum(r.eval_tokens for r in records if isinstance(r, EvalRecord)),
        step_time_sum_s=step_time_sum,
        step_time_median_s=percentile(step_times, 50),
        step_time_p90_s=percentile(step_times, 90),
        steady_step_time_s=steady,
        warmup_s=warmup,
        tokens_per_s=tps,
        tokens_per_s_per_device=ratio(tps, world),
        samples_per_s=samples_per_s,
        samples_per_s_per_device=ratio(samples_per_s, world),
        tokens_per_s_wall=tps_wall,
        tokens_per_s_wall_per_device=ratio(tps_wall, world),
        time_to_first_step_s=ttfs,
        wall_time_s=wall,
        busy_time_s=busy if timed else None,
        attempts=len(atts),
        device_hours=dev_s / 3600.0 if timed else None,
        device_hours_label="GPU-hours" if job.device == "cuda" else "device-hours",
        node_hours=node_s / 3600.0 if timed else None,
        first_time=first_start,
        last_time=last_time,
    )


def loss_section(records: Sequence[Any], steps: list[TrainRecord]) -> Loss:
    losses = [(s.step, v) for s in steps if (v := finite(s.loss)) is not None]
    evals_by_step: dict[int, EvalPoint] = {}
    for r in records:
        if isinstance(r, EvalRecord):
            evals_by_step[r.step] = EvalPoint(step=r.step, eval_loss=finite(r.eval_loss), accuracy=finite(r.accuracy),
                                              f1_macro=finite(r.f1_macro), eval_tokens=r.eval_tokens)
    evals = [evals_by_step[k] for k in sorted(evals_by_step)]
    ev_losses = [e for e in evals if e.eval_loss is not None]
    accs = [e for e in evals if e.accuracy is not None]
    f1s = [e for e in evals if e.f1_macro is not None]
    min_tr = min(losses, key=lambda x: x[1]) if losses else None
    min_ev = min(ev_losses, key=lambda e: e.eval_loss) if ev_losses else None
    return Loss(
        first_train_loss=losses[0][1] if losses else None,
        last_train_loss=losses[-1][1] if losses else None,
        min_train_loss=min_tr[1] if min_tr else None,
        min_train_loss_step=min_tr[0] if min_tr else None,
        eval=evals,
        first_eval_loss=ev_losses[0].eval_loss if ev_losses else None,
        last_eval_loss=ev_losses[-1].eval_loss if ev_losses else None,
        min_eval_loss=min_ev.eval_loss if min_ev else None,
        min_eval_loss_step=min_ev.step if min_ev else None,
        last_accuracy=accs[-1].accuracy if accs else None,
        first_accuracy=accs[0].accuracy if accs else None,
        first_f1_macro=f1s[0].f1_macro if f1s else None,
        last_f1_macro=f1s[-1].f1_macro if f1s else None,
    )


def checkpoints_section(records: Sequence[Any]) -> Checkpoints:
    ckpts = [r for r in records if isinstance(r, CheckpointRecord)]
    return Checkpoints(count=len(ckpts), last_step=ckpts[-1].step if ckpts else None)
