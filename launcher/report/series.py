"""What the plots draw, read from a run directory: per-step series from metrics.jsonl and
per-node power from CodeCarbon's CSVs (neither is stored in report.json).

The renderers never read files: :func:`read_series` is called by :func:`launcher.report.write_reports`
and ``launcher report``, and its result handed to :func:`launcher.report.render.render_html`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from launcher.report.compute import finite, ratio, train_steps
from launcher.rundir.energy_file import EmissionsRow, read_emissions_csv
from launcher.rundir import EvalRecord, RunDir, read_metrics

Power = dict[str, tuple[list[float], list[float]]]  # node -> (minutes, watts)


@dataclass(frozen=True)
class RunSeries:
    """One run's plot data: ``steps`` (:func:`load_series`) and ``power`` (:func:`power_series`)."""

    steps: dict
    power: Power = field(default_factory=dict)


def load_series(run_dir: str | os.PathLike) -> dict:
    """Per-step series: step, loss, tokens/s (all devices), time; eval step and eval loss."""
    records = read_metrics(run_dir)
    steps = train_steps(records)
    evals = {r.step: finite(r.eval_loss) for r in records.of(EvalRecord)}  # the last of a step wins
    ev = sorted(evals.items())
    return {"step": [r.step for r in steps], "loss": [finite(r.loss) for r in steps],
            "tokens_per_s": [ratio(r.tokens, finite(r.step_time_s)) for r in steps], "time": [r.time for r in steps],
            "eval_step": [k for k, _ in ev], "eval_loss": [v for _, v in ev]}


def power_series(run_dir: str | os.PathLike) -> Power:
    """Per node: (minutes since the node's tracking started, watts) from the cumulative rows of
    ``emissions/<node>.csv`` (power = energy delta / time delta, PUE included). Sessions
    (attempts) follow each other on the time axis."""
    out: Power = {}
    d = RunDir(run_dir).emissions
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.csv")):
        sessions: dict[str, list[EmissionsRow]] = {}
        for r in read_emissions_csv(p):
            sessions.setdefault(r.run_id or "", []).append(r)
        xs: list[float] = []
        ys: list[float] = []
        offset = 0.0
        for rows in sessions.values():
            rows.sort(key=lambda r: r.duration)
            prev_t, prev_e = 0.0, 0.0
            for r in rows:
                t, e = r.duration, r.energy_consumed
                if t > prev_t:
                    xs.append((offset + t) / 60.0)
                    ys.append((e - prev_e) * 3.6e6 / (t - prev_t))
                prev_t, prev_e = t, e
            offset += prev_t
        if len(xs) >= 2:
            out[p.stem] = (xs, ys)
    return out


def read_series(run_dir: str | os.PathLike) -> RunSeries:
    """Everything the plots of ``run_dir`` draw."""
    return RunSeries(steps=load_series(run_dir), power=power_series(run_dir))
