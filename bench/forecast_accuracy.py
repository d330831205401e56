"""The forecast against real runs, leave one out: a set of configurations (strategies and ZeRO
stages, LoRA and full, sequence lengths, micro batches, one and two ranks, two model sizes) is
trained with `launcher run` on this machine (CPU), each into its own run directory; then each one
is forecast by `launcher plan` from a calibration history holding every *other* run (the
planner fits a rate, a cost per byte gathered under ZeRO-3/FSDP2, what a step of several ranks
costs over one rank's and a per-step overhead over them,
:func:`launcher.plan.calibration.fit_step`), and again from this machine's probe alone
(``--no-calibration``). It prints and writes the forecast-to-actual ratios of the step time and
of the kWh per configuration (goal: 0.75-1.33).

Each configuration is trained ``--repeat`` times (2 by default), in rounds (every configuration
once, then again), so a slower hour of the machine falls on all of them alike; the actual is the
median over a configuration's runs (of two, their mean), every run of the other configurations is
in the history, and the table gives the spread of each configuration's runs (slowest step over
fastest): what one run tells of the next on this machine.

* step time: the plan's ``forecast.step_time_s`` against the run's steady step (the report's
  ``steady_step_time_s``: the mean of the steps after the first, whose one-off costs the forecast
  keeps apart as ``forecast.warmup_s``);
* kWh: the plan's ``forecast.kwh`` for the steps done against the report's measured total
  (CodeCarbon's, PUE included; the tracker's window also holds setup and the final save).

Every run has a LAUNCHER_CACHE of this bench's own (the probe of this machine is taken once, in
it); the history files the leave-one-out plans read are written by hand from the runs' points
(:func:`launcher.report.history.point_of`).

    python bench/forecast_accuracy.py                        # ~17 min on 2 cores (16 x 2 runs)
    python bench/forecast_accuracy.py --only demo-zero2,m4-fsdp-lora --json /tmp/fa.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

# ~4.2M parameters with the demo's character vocabulary: 13x the demo's FLOPs per token
MODEL_4M = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False)

COMMON = ["cluster.device=cpu", "train.eval_every_steps=null", "train.eval_accuracy_samples=0",
          "train.save_every_steps=null", "data.num_samples=4000"]
LORA = ["train.method=lora", "train.lora.r=8", "train.lora.dropout=0"]
# name: (overrides, steps); "m4" runs the 4M model
CONFIGS: dict[str, tuple[list[str], int]] = {
    "demo-zero2": ([], 300),
    "demo-zero3": (["parallel.zero_stage=3"], 250),
    "demo-fsdp": (["parallel.strategy=fsdp"], 250),
    "demo-zero3-lora": (["parallel.zero_stage=3", *LORA], 250),
    "demo-zero2-lora": ([*LORA], 300),
    "demo-zero2-seq256": (["data.max_seq_len=256", "train.micro_batch_size=4", "train.global_batch_size=8"], 250),
    "demo-zero1-micro4": (["parallel.zero_stage=1", "train.micro_batch_size=4", "train.global_batch_size=16"], 300),
    "demo-single": (["cluster.cpu_procs_per_node=1", "parallel.zero_stage=0", "train.global_batch_size=8"], 300),
    "demo-single-lora": (["cluster.cpu_procs_per_node=1", "parallel.zero_stage=0", "train.global_batch_size=8",
                          *LORA], 300),
    "m4-zero2": (["MODEL4M"], 40),
    "m4-zero3": (["MODEL4M", "parallel.zero_stage=3"], 40),
    "m4-fsdp-lora": (["MODEL4M", "parallel.strategy=fsdp", *LORA], 50),
    "m4-fsdp": (["MODEL4M", "parallel.strategy=fsdp"], 40),
    "m4-single": (["MODEL4M", "cluster.cpu_procs_per_node=1", "parallel.zero_stage=0", "train.global_batch_size=8"], 40),
    "demo-single-seq256": (["cluster.cpu_procs_per_node=1", "parallel.zero_stage=0", "data.max_seq_len=256",
                            "train.micro_batch_size=4", "train.global_batch_size=4"], 250),
    "m4-single-lora": (["MODEL4M", "cluster.cpu_procs_per_node=1", "parallel.zero_stage=0", "train.global_batch_size=8",
                        *LORA], 50),
}


def overrides_of(name: str, model4m: Path) -> list[str]:
    extra, steps = CONFIGS[name]
    out = [f"model.path={model4m}" if x == "MODEL4M" else x for x in extra]
    return [*COMMON, f"train.max_steps={steps}", *out]


def launcher(argv: list[str], env: dict, cwd: Path, log: Path) -> dict:
    return C.run_logged([sys.executable, "-m", "launcher", *argv], log, env=env, cwd=str(cwd), timeout=1800)


def run_dir_of(work: Path, name: str, repeat: int) -> Path:
    """The first run of a configuration is runs/NAME (as before repeats), the next runs/NAME.2, ..."""
    return work / "runs" / (name if repeat == 1 else f"{name}.{repeat}")


def median_actual(runs: list[dict]) -> dict:
    """A configuration's runs as one: the median of each figure (of two, their mean), with the spread
    of the steady step (slowest over fastest) and each run's step."""
    out = {k: statistics.median(r[k] for r in runs) if all(r[k] is not None for r in runs) else None
           for k in ("steps", "step_time_s", "warmup_s", "kwh", "energy_s", "train_s")}
    steps = [r["step_time_s"] for r in runs]
    return {**out, "runs": len(runs), "step_times_s": steps, "spread": max(steps) / min(steps)}


def actual(run_dir: Path) -> dict:
    """The run's steady step, its warm-up and its kWh, from its report built again (runs kept with
    --keep-runs are measured as the launcher measures them now)."""
    from launcher.report.build import build_report

    r = build_report(run_dir)
    thr, e = r.throughput, r.energy
    return {"steps": thr.steps, "step_time_s": thr.steady_step_time_s or thr.step_time_sum_s / thr.steps,
            "warmup_s": thr.warmup_s, "kwh": e.energy_kwh.total if e.available else None,
            "energy_s": e.duration_s, "train_s": thr.step_time_sum_s}


def forecast(name: str, model4m: Path, cache: Path, work: Path, extra: list[str]) -> dict:
    from launcher.plan.types import StepFit
    from launcher.report.format import fit_words

    env = {**os.environ, "LAUNCHER_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-m", "launcher", "plan", *overrides_of(name, model4m), *extra, "--json"],
                         capture_output=True, text=True, env=env, cwd=work, timeout=600)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-300:]}
    f = json.loads(out.stdout)["forecast"]
    cal = f.get("calibration") or {}
    fit = cal.get("fit")
    how = (f"{fit_words(StepFit.model_validate(fit))}; nearest {Path(cal['run_dir']).name}" if fit
           else Path(cal["run_dir"]).name if cal else "probe")
    return {"step_time_s": f["step_time_s"], "kwh": f["kwh"], "steps": f["steps"], "from": how,
            "distance": cal.get("distance"), "fit": fit}


def ratio(fc, act):
    return None if fc is None or not act else fc / act


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None, help="comma-separated names of CONFIGS")
    ap.add_argument("--workdir", default="/tmp/launcher-bench-forecast")
    ap.add_argument("--keep-runs", action="store_true", help="reuse the runs already in --workdir")
    ap.add_argument("--json", default=None)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each configuration, in rounds (default 2)")
    a = ap.parse_args(argv)
    if a.repeat < 1:
        ap.error(f"--repeat {a.repeat}: runs of each configuration, at least 1")
    names = a.only.split(",") if a.only else list(CONFIGS)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"  # the runs' (the probe, the demo's assets, their history)
    env = {**os.environ, "LAUNCHER_CACHE": str(cache)}
    from launcher.demo import ensure_demo_assets

    tok_dir = ensure_demo_assets().tokenizer_dir
    model4m = C.build_bench_model(work / "model-4m", tok_dir, MODEL_4M)
    info = C.machine_info()
    print(f"machine: {info['nproc']} cpus, {info['cpu']}, {info['mem_total_gib']} GiB; load {info['load_avg']}",
          flush=True)
    t0 = time.time()
    runs: dict[str, list[Path]] = {n: [] for n in names}
    for repeat in range(1, a.repeat + 1):  # in rounds: every configuration once, then again
        for name in names:
            d = run_dir_of(work, name, repeat)
            if not (a.keep_runs and (d / "report.json").exists()):
                shutil.rmtree(d, ignore_errors=True)
                log = work / f"{d.name}.log"
                r = launcher(["run", "--run-dir", str(d), *overrides_of(name, model4m)], env, work, log)
                print(f"  ran {d.name}: rc={r['rc']} wall={r['wall_s']:.0f}s", flush=True)
                if r["rc"] != 0:
                    print(C.tail(log, 8))
                    continue
            runs[name].append(d)
    runs = {n: ds for n, ds in runs.items() if ds}
    from launcher.report.history import point_of

    points = {n: [point_of(d) for d in ds] for n, ds in runs.items()}
    rows = []
    for name, ds in runs.items():
        act = median_actual([actual(d) for d in ds])
        loo = work / "loo" / name  # the history of every other run, and this machine's probe
        shutil.rmtree(loo, ignore_errors=True)
        loo.mkdir(parents=True)
        if (cache / "probe").is_dir():
            shutil.copytree(cache / "probe", loo / "probe")
        (loo / "calibration.jsonl").write_text("".join(p.model_dump_json() + "\n" for n, ps in points.items()
                                                      if n != name for p in ps))
        cal = forecast(name, model4m, loo, work, [])
        probe = forecast(name, model4m, loo, work, ["--no-calibration"])
        share = act["steps"] / cal["steps"] if cal.get("steps") else 1.0
        row = {"name": name, "actual": act, "calibrated": cal, "probe_only": probe,
               "time_ratio": ratio(cal.get("step_time_s"), act["step_time_s"]),
               "kwh_ratio": ratio(cal["kwh"] * share if cal.get("kwh") else None, act["kwh"]),
               "probe_time_ratio": ratio(probe.get("step_time_s"), act["step_time_s"]),
               "probe_kwh_ratio": ratio(probe["kwh"] * share if probe.get("kwh") else None, act["kwh"])}
        rows.append(row)
        print(f"  {name}: from {cal.get('from')} (distance {cal.get('distance')}): time x{C.fmt(row['time_ratio'])} "
              f"kWh x{C.fmt(row['kwh_ratio'])}; probe only: time x{C.fmt(row['probe_time_ratio'])} "
              f"kWh x{C.fmt(row['probe_kwh_ratio'])}", flush=True)
    print()
    print(table(rows))
    inside = [r for r in rows if r["time_ratio"] and r["kwh_ratio"]]
    ok = sum(0.75 <= r["time_ratio"] <= 1.33 and 0.75 <= r["kwh_ratio"] <= 1.33 for r in inside)
    print(f"\nboth ratios within 0.75-1.33: {ok} of {len(rows)}; {time.time() - t0:.0f} s; load after {C.load_avg()}")
    if a.json:
        C.write_json(Path(a.json), {"machine": info, "configs": {n: CONFIGS[n] for n in names}, "repeat": a.repeat,
                                    "rows": rows, "load_after": C.load_avg()})
    return 0


def table(rows: list[dict]) -> str:
    lines = ["| config | forecast from (distance) | step s actual (runs' spread) | time ratio | kWh actual | "
             "kWh ratio | probe only: time ratio | kWh ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, act = r["calibrated"], r["actual"]
        lines.append(f"| {r['name']} | {c.get('from')} ({C.fmt(c.get('distance'))}) | {C.fmt(act['step_time_s'])} "
                     f"(x{act['spread']:.2f} over {act['runs']}) | "
                     f"{C.fmt(r['time_ratio'])} | {C.fmt(act['kwh'])} | {C.fmt(r['kwh_ratio'])} | "
                     f"{C.fmt(r['probe_time_ratio'])} | {C.fmt(r['probe_kwh_ratio'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
