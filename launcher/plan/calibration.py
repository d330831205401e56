"""Which earlier run a forecast scales from, and how: pure functions of the calibration history's
points (:class:`launcher.plan.types.CalibrationPoint`, kept by :mod:`launcher.report.history`)
and the plan.

Only runs on the same kind of device count (the same GPU name, or the same CPU model). Among
them the nearest is the one of least ``distance``, a sum of

* ``|ln(a / b)|`` for the parameters, the sequence length, the micro batch, the world size and
  the threads per rank (a run twice the size is as far as one half the size);
* 1 for another task (causal LM or classification), strategy, method, dtype, offload or
  host-memory mode (lean gives the host's memory back after every step: slower on CPU); 0.5 for
  another ZeRO stage, activation checkpointing or packing;

the newest first among equals. A run of the same configuration (distance 0) is scaled by the FLOPs
each rank computes per step (``tokens_per_step x (flops_per_token + recompute) / world``). Any
other is forecast by :func:`fit_step` when the history allows it: ``overhead + work / rate +
gathered x cost per byte + fetches x cost per fetch + adapter work x cost per value (+ what a step
of several ranks costs over one rank's)``, where the work is the FLOPs each thread computes per
step, gathered is what each rank sends per step where the parameters are sharded (ZeRO-3 and FSDP2
gather every parameter each step: a cost that grows with the model, not with the tokens; a cost
per byte for each of the two), fetches how many fetches it makes there (ZeRO-3 one per module
holding parameters, FSDP2 one per unit, each with its hooks and collective: LoRA's adapters double
ZeRO-3's), adapter work the LoRA adapter values a rank's threads do not share
(:func:`adapter_work`); the rate, the cost per byte, per fetch, per adapter value and of several
ranks (their collectives, and each waiting for the others, every step) are fitted over every run
on this device in this dtype, and the overhead (what a step costs beyond its arithmetic: hooks,
gathers, collectives, which depend on the strategy and not on the FLOPs; most of a tiny model's
step) is the runs' residuals weighted by how like the job each run is configured and sized.
Energy per token is scaled from the nearest run by the time per token and the devices drawing
power.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

from launcher.plan.types import Calibration, CalibrationPoint, Plan, StepFit

LOG_FEATURES = ("n_params", "seq_len", "micro_batch_size", "world_size", "threads_per_rank")
DIFFERENT = {"task": 1.0, "strategy": 1.0, "method": 1.0, "dtype": 1.0, "offload": 1.0, "host_memory": 1.0,
             "zero_stage": 0.5, "activation_checkpointing": 0.5, "packing": 0.5}


def offload_label(plan: Plan) -> str:
    p = plan.job.parallel
    parts = [f"optimizer->{p.offload_optimizer}"] if p.offload_optimizer != "none" else []
    if p.offload_params != "none":
        parts.append(f"params->{p.offload_params}")
    return ", ".join(parts) or "none"


def features(plan: Plan) -> dict:
    """The plan's configuration in the terms of a CalibrationPoint."""
    m = plan.model
    return {"n_params": m.n_params if m else None, "seq_len": plan.seq_len, "micro_batch_size": plan.micro_batch_size,
            "world_size": plan.world_size, "threads_per_rank": plan.threads_per_rank, "strategy": plan.strategy,
            "method": plan.job.train.method, "dtype": plan.dtype, "offload": offload_label(plan),
            "zero_stage": plan.zero_stage, "activation_checkpointing": plan.job.train.activation_checkpointing,
            "packing": plan.job.data.packing, "host_memory": plan.host_memory, "task": plan.job.train.task}


def same_device(point: CalibrationPoint, plan: Plan, device_kind: Optional[str]) -> bool:
    return point.device == plan.device and bool(device_kind) and point.device_kind == device_kind


def distance(point: CalibrationPoint, plan: Plan, device_kind: Optional[str]) -> Optional[float]:
    """How far ``point``'s configuration is from ``plan``'s; None when it ran on another kind of device."""
    if not same_device(point, plan, device_kind):
        return None
    mine = features(plan)
    d = 0.0
    for key in LOG_FEATURES:
        a, b = getattr(point, key), mine[key]
        if a and b:
            d += abs(math.log(a / b))
        elif a != b:
            d += 1.0
    for key, weight in DIFFERENT.items():
        if getattr(point, key) != mine[key]:
            d += weight
    return round(d, 4)


def nearest(points: Iterable[CalibrationPoint], plan: Plan, device_kind: Optional[str]) -> Optional[Calibration]:
    """The history's nearest point to ``plan`` as a Calibration (source history), or None; with a
    :class:`StepFit` over the history when no point is of the same configuration."""
    points = list(points)
    best: Optional[tuple[float, float, CalibrationPoint]] = None
    for p in points:
        d = distance(p, plan, device_kind)
        if d is not None and (best is None or (d, -p.finished_at) < (best[0], best[1])):
            best = (d, -p.finished_at, p)
    if best is None:
        return None
    cal = from_point(best[2], "history", best[0])
    fit = fit_step(points, plan, device_kind) if best[0] > 0 else None
    return cal.model_copy(update={"fit": fit}) if fit else cal


# what a step's overhead depends on beyond its FLOPs, and how much a difference counts against a run
OVERHEAD_KEYS = {"task": 1.0, "strategy": 1.0, "zero_stage": 1.0, "method": 1.0, "offload": 1.0,
                 "host_memory": 1.0, "activation_checkpointing": 0.5, "packing": 0.5, "world_size": 1.0}
# a run one difference away counts exp(-1/1.5) = 0.51 of one configured alike (chosen on
# bench/forecast_accuracy.py's runs: 1.0 and 2.0 leave one more configuration outside 0.75-1.33)
OVERHEAD_TAU = 1.5
# a model e times larger or smaller counts as one difference more: its hooks, per-module kernels
# and optimizer step are not the job's
OVERHEAD_SIZE = 1.0


def work_per_thread(tokens_per_step: int, flops_per_token: float, world: int, threads: Optional[int]) -> float:
    """The FLOPs each thread computes per step."""
    return tokens_per_step * flops_per_token / world / (threads or 1)


def sharded(strategy: str, zero_stage: Optional[int]) -> bool:
    """Whether the parameters are sharded and gathered every step (ZeRO-3, FSDP2)."""
    return strategy == "fsdp" or zero_stage == 3


def gathered_bytes(plan: Plan) -> int:
    """What each rank sends per step where the parameters are sharded and gathered (ZeRO-3, FSDP2:
    :func:`launcher.plan.forecast.communication`, the parameters' all-gathers and the gradients'
    reduce-scatter); 0 for other strategies, one rank, or a plan without its model."""
    if plan.world_size <= 1 or not plan.model or not sharded(plan.strategy, plan.zero_stage):
        return 0
    from launcher.plan.forecast import communication, param_counts
    from launcher.plan.memory import layout_of

    return communication(layout_of(plan), *param_counts(plan))[1]


def module_fetches(plan: Plan) -> Optional[int]:
    """How many parameter fetches each rank makes per step where the parameters are sharded: ZeRO-3
    fetches each module that holds parameters (adapters included), FSDP2 each of its units (the
    decoder layers, the untied embeddings, the root), once in the forward and once in the backward
    of every micro step, and once more in the recompute with activation checkpointing. 0 for other
    strategies; None for a ZeRO-3 plan whose model count lacks its modules."""
    m = plan.model
    if not m or not sharded(plan.strategy, plan.zero_stage):
        return 0
    if plan.strategy == "fsdp":
        embeddings = 1 if m.task == "classification" else (0 if m.tie_word_embeddings else 2)
        per_pass = m.n_layers + embeddings + 1
    elif m.n_param_modules is None:
        return None
    else:
        per_pass = m.n_param_modules
    passes = 3 if plan.job.train.activation_checkpointing else 2
    return per_pass * passes * plan.grad_accum_steps


def adapter_work(plan: Plan) -> float:
    """The LoRA adapter values each rank passes per step that its threads do not share: the tokens
    it computes per step x the features into and out of its adapted projections (the adapters'
    parameters over r; a classifier's trained head is counted with them) x (1 - 1/threads). peft's
    rank-r products are too thin for a CPU rank's threads to split, where the wide products split
    evenly (bench/RESULTS.md, "The forecast with the steady step, LoRA's thin products and the
    model's size"); 0 for full fine-tuning, a rank of one thread, or a GPU."""
    threads = plan.threads_per_rank or 1
    if plan.job.train.method != "lora" or plan.device != "cpu" or threads <= 1:
        return 0.0
    features = (plan.params or {}).get("trainable", 0) / plan.job.train.lora.r
    return plan.tokens_per_step / plan.world_size * features * (1 - 1 / threads)


def _gathered(p: CalibrationPoint) -> Optional[int]:
    return p.gathered_bytes if p.gathered_bytes is not None else (None if sharded(p.strategy, p.zero_stage) else 0)


def _least_squares(columns: list[list[float]], ys: list[float]) -> Optional[list[float]]:
    """Least squares of ``ys`` on ``columns`` with an intercept: each column's coefficient, or None
    where two columns move together and cannot be told apart."""
    n, k = len(ys), len(columns)
    my = sum(ys) / n
    cs = [[v - sum(c) / n for v in c] for c in columns]
    a = [[sum(u * v for u, v in zip(ci, cj)) for cj in cs] + [sum(u * (y - my) for u, y in zip(ci, ys))] for ci in cs]
    scale = [a[i][i] for i in range(k)]
    for i in range(k):  # Gauss-Jordan with partial pivoting on the normal equations
        piv = max(range(i, k), key=lambda r: abs(a[r][i]))
        if abs(a[piv][i]) <= 1e-9 * max(scale[i], 1e-300):
            return None
        a[i], a[piv] = a[piv], a[i]
        for r in range(k):
            if r != i:
                f = a[r][i] / a[i][i]
                a[r] = [x - f * y for x, y in zip(a[r], a[i])]
    return [a[i][k] / a[i][i] for i in range(k)]


def _multi(p: CalibrationPoint) -> float:
    return 1.0 if p.world_size > 1 else 0.0


def _fetches(p: CalibrationPoint) -> Optional[int]:
    return p.module_fetches if p.module_fetches is not None else (None if sharded(p.strategy, p.zero_stage) else 0)


def _adapters(p: CalibrationPoint) -> Optional[float]:
    if p.adapter_work is not None:
        return p.adapter_work
    return None if (p.method == "lora" and p.device == "cpu" and (p.threads_per_rank or 1) > 1) else 0.0


def _overhead_weight(p: CalibrationPoint, mine: dict) -> float:
    """How much a run's residual counts toward the job's overhead: ``exp(-d / OVERHEAD_TAU)``, d the
    OVERHEAD_KEYS that differ plus OVERHEAD_SIZE x ``|ln|`` of the ratio of their parameters."""
    d = sum(w for k, w in OVERHEAD_KEYS.items() if getattr(p, k) != mine[k])
    if p.n_params and mine["n_params"]:
        d += OVERHEAD_SIZE * abs(math.log(p.n_params / mine["n_params"]))
    return math.exp(-d / OVERHEAD_TAU)


def fit_step(points: Iterable[CalibrationPoint], plan: Plan, device_kind: Optional[str]) -> Optional[StepFit]:
    """``overhead + work / rate + gathered x s_per_byte + fetches x s_per_fetch + adapter work x
    s_per_value (+ multi_rank_s)`` for ``plan`` from the history's runs on the same device kind in
    the same dtype, by least squares over all of them (at least 3, of at least 2 sizes of work):
    the rate; the cost of each byte a rank sends where the parameters are sharded and gathered,
    ZeRO-3's and FSDP2's each its own (the job's, or the other's where the history has none of
    its strategy), when runs with and without gathers are among at least 4; the cost of each
    parameter fetch there (:func:`module_fetches`), the cost of each LoRA adapter value a rank's
    threads do not share (:func:`adapter_work`), and what a step of several ranks costs over one
    rank's (their collectives and waits: a fixed cost per step that one rank does not pay), when
    runs with and without are among at least 5. A term whose cost comes out negative is left out
    (the bytes first, where the fetches come out negative with them). The overhead is the runs'
    residuals weighted by :func:`_overhead_weight`: how many of OVERHEAD_KEYS differ from the
    job's, and how far their model's size is. None when the history cannot give a positive rate."""
    mine = features(plan)
    same = [p for p in points if same_device(p, plan, device_kind) and p.dtype == plan.dtype
            and p.flops_per_token and p.step_time_s > 0]
    xs = [work_per_thread(p.tokens_per_step, p.flops_per_token, p.world_size, p.threads_per_rank) for p in same]
    if len(same) < 3 or max(xs) < 1.5 * min(xs):
        return None
    ys = [p.step_time_s for p in same]
    gs = [_gathered(p) for p in same]
    ms = [_multi(p) for p in same]
    fs = [_fetches(p) for p in same]
    terms = {"work": xs}
    if len(same) >= 4 and None not in gs and 0 in gs and any(gs):
        # a cost per byte for each sharded strategy: ZeRO-3 gathers module by module into flat
        # buffers, FSDP2 unit by unit through DTensors, each at its own cost per byte
        for strategy in ("zero", "fsdp"):
            column = [float(g) if p.strategy == strategy else 0.0 for g, p in zip(gs, same)]
            if any(column):
                terms[f"gathered:{strategy}"] = column
    if len(same) >= 5 and len(set(ms)) == 2:
        terms["multi"] = ms
    if len(same) >= 5 and None not in fs and 0 in fs and any(fs):
        terms["fetches"] = [float(f) for f in fs]
    ads = [_adapters(p) for p in same]
    if len(same) >= 5 and None not in ads and 0 in ads and any(ads):
        terms["adapters"] = [float(a) for a in ads]
    gathered_terms = [t for t in terms if t.startswith("gathered:")]
    while True:
        coef = _least_squares(list(terms.values()), ys)
        if coef is None and len(terms) > 1:  # a term moves with another: the newest one goes
            terms.pop(list(terms)[-1])
            continue
        if coef is None:
            return None
        got = dict(zip(terms, coef))
        negative = [t for t in terms if t != "work" and got[t] < 0]
        if not negative:
            break
        # the history's runs are not slower for it: left out. The bytes give way to the fetches
        # where the fetches come out negative with them: on one node a sharded step's extra cost
        # follows what it fetches one by one more than what it sends (bench/RESULTS.md)
        by_bytes = [t for t in terms if t.startswith("gathered:")]
        terms.pop(by_bytes[0] if "fetches" in negative and by_bytes else negative[0])
    # the job's strategy's cost per byte (0 where the fit left it out); where the history has no
    # sharded run of the job's strategy, the other's
    kept = [t for t in gathered_terms if t in got]
    own = f"gathered:{plan.strategy}"
    s_per_byte = got.get(own, 0.0) if own in gathered_terms else (got[kept[0]] if kept else 0.0)
    s_per_flop = got["work"]
    multi_s, s_per_fetch = got.get("multi", 0.0), got.get("fetches", 0.0)
    s_per_adapter = got.get("adapters", 0.0)
    if s_per_flop <= 0:
        return None
    weights = [_overhead_weight(p, mine) for p in same]
    residual = sum(w * (y - s_per_flop * x - got.get(f"gathered:{p.strategy}", 0.0) * (g or 0) - multi_s * m
                        - s_per_fetch * (f or 0) - s_per_adapter * (a or 0))
                   for w, x, y, g, m, f, a, p in zip(weights, xs, ys, gs, ms, fs, ads, same))
    residual /= sum(weights)
    return StepFit(points=len(same), gflops_per_thread=round(1e-9 / s_per_flop, 4),
                   overhead_s=round(max(residual, 0.0), 6),
                   s_per_gb_gathered=round(s_per_byte * 1e9, 6) if kept else None,
                   multi_rank_s=round(multi_s, 6) if "multi" in terms else None,
                   ms_per_fetch=round(s_per_fetch * 1e3, 6) if "fetches" in terms else None,
                   ns_per_adapter_value=round(s_per_adapter * 1e9, 6) if "adapters" in terms else None)


def fitted_step_time(fit: StepFit, tokens_per_step: int, flops_per_token: float, world: int,
                     threads: Optional[int], gathered: int = 0, fetches: Optional[int] = 0,
                     adapters: float = 0.0) -> float:
    work = work_per_thread(tokens_per_step, flops_per_token, world, threads)
    return (fit.overhead_s + work / (fit.gflops_per_thread * 1e9) + gathered / 1e9 * (fit.s_per_gb_gathered or 0.0)
            + ((fit.multi_rank_s or 0.0) if world > 1 else 0.0) + (fetches or 0) * (fit.ms_per_fetch or 0.0) / 1e3
            + adapters * (fit.ns_per_adapter_value or 0.0) / 1e9)


def from_point(point: CalibrationPoint, source: str, distance_: Optional[float]) -> Calibration:
    return Calibration(run_dir=point.run_dir, source=source, distance=distance_,
                       tokens_per_s_per_device=point.tokens_per_s_per_device,
                       energy_per_token_j=point.energy_per_token_j, pue=point.pue, world_size=point.world_size,
                       strategy=point.strategy, zero_stage=point.zero_stage, accelerator=point.device_kind, point=point)


def scaled_step_time(point: CalibrationPoint, tokens_per_step: int, flops_per_token: float, world: int) -> float:
    """``point``'s step time for a step of ``tokens_per_step`` tokens of ``flops_per_token`` each over
    ``world`` ranks: in proportion to the FLOPs each rank computes per step."""
    mine = tokens_per_step * flops_per_token / world
    theirs = point.tokens_per_step * point.flops_per_token / point.world_size
    return point.step_time_s * mine / theirs


def scaled_energy_per_token(point: CalibrationPoint, step_time_s: float, tokens_per_step: int, world: int,
                            threads: Optional[int] = None) -> float:
    """``point``'s energy per token for a job whose step takes ``step_time_s`` for ``tokens_per_step``
    tokens on ``world`` devices: each device draws the power it drew there, for the time per token.
    On CPU what draws the power is the cores in use, ranks x threads per rank (one rank of two
    threads loads the CPU as two ranks of one do)."""
    assert point.energy_per_token_j is not None
    per_token_then = point.step_time_s / point.tokens_per_step
    per_token_now = step_time_s / tokens_per_step
    if point.device == "cpu":
        drawing = (world * (threads or 1)) / (point.world_size * (point.threads_per_rank or 1))
    else:
        drawing = world / point.world_size
    return point.energy_per_token_j * (per_token_now / per_token_then) * drawing


__all__ = ["adapter_work", "distance", "features", "fit_step", "fitted_step_time", "from_point", "gathered_bytes",
           "module_fetches", "nearest", "offload_label", "scaled_energy_per_token", "scaled_step_time", "sharded",
           "work_per_thread"]
