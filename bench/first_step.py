"""Time to first step: `launcher run` against the Hugging Face Trainer under torchrun, warm and cold.

The job is bench/throughput.py's (same model, data, optimizer, batch, ZeRO-2 with the ds_config.json
launcher writes; launcher packed), cut to ``--steps`` optimizer steps. "First step" is from the
start of the command to the end of the first optimizer step (rank 0's record of it).

* warm: the machine's caches as they are (DeepSpeed's compiled ops, Python's bytecode, the page
  cache), the state of any second run;
* cold: as in a fresh environment: empty ``TORCH_EXTENSIONS_DIR`` (DeepSpeed's JIT-built ops),
  ``XDG_CACHE_HOME``, ``HF_HOME`` and ``MPLCONFIGDIR``, new for every run.

Order: launcher warm, launcher warm with its ranks started after the data (LAUNCHER_NO_PRESTART=1,
how every launch went before), Trainer warm, repeated ``--rounds`` times (interleaved, so other
load hits all alike), then ``--cold-rounds`` of launcher cold, Trainer cold. `launcher run` starts
torchrun once the job is planned and before it tokenizes: the ranks import their libraries while
the parent tokenizes, then wait for plan.json. Per launcher run, where the time goes: the parent
(job, plan, tokenizing into the run's cache: until plan.json), when the ranks' clocks started
(from the start of the command; before plan.json when they start early), what comes after
plan.json until the first step (data from the cache, process group, preflight, model, strategy,
energy tracker), and the first step itself.

    python bench/first_step.py                 # 3 warm rounds, 1 cold round (~5 min on 2 cores)
    python bench/first_step.py --rounds 5 --cold-rounds 2 --json /tmp/first_step.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import throughput as T  # noqa: E402

COLD_DIRS = ("TORCH_EXTENSIONS_DIR", "XDG_CACHE_HOME", "HF_HOME", "MPLCONFIGDIR")


class cold_environment:
    """Fresh, empty cache folders for one run (os.environ, restored after)."""

    def __enter__(self):
        self.root = Path(tempfile.mkdtemp(prefix="first-step-cold-"))
        self.saved = {k: os.environ.get(k) for k in COLD_DIRS}
        for k in COLD_DIRS:
            (self.root / k.lower()).mkdir()
            os.environ[k] = str(self.root / k.lower())
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(self.root, ignore_errors=True)


def launcher_breakdown(work: Path, tag: str, t0: float) -> dict:
    """Where a launcher run's time to first step went, from its run directory."""
    run_dir = work / "runs" / tag
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    start = next(r for r in recs if r["kind"] == "start")
    first = next(r for r in recs if r["kind"] == "train")
    planned = (run_dir / "plan.json").stat().st_mtime
    rank_clock = start["time"] - start["setup_s"]
    return {"parent_s": planned - t0, "ranks_started_s": rank_clock - t0, "after_plan_s": start["time"] - planned,
            "first_step_s": first["time"] - start["time"]}


def one(work: Path, tool: str, tag: str, ds: dict, a) -> dict:
    if tool.startswith("launcher"):
        saved = os.environ.pop("LAUNCHER_NO_PRESTART", None)
        if tool == "launcher-after-data":
            os.environ["LAUNCHER_NO_PRESTART"] = "1"
        try:
            r = T.run_launcher(work, "zero2", True, tag, a)
        finally:
            os.environ.pop("LAUNCHER_NO_PRESTART", None)
            if saved is not None:
                os.environ["LAUNCHER_NO_PRESTART"] = saved
        if r.get("time_to_first_step_s") is not None:
            r["breakdown"] = launcher_breakdown(work, tag, r["t0"])
    else:
        r = T.run_trainer(work, "zero2", ds, tag, a)
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="warm rounds (launcher, Trainer)")
    ap.add_argument("--cold-rounds", type=int, default=1, help="cold rounds (launcher, Trainer)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/launcher-bench-first-step")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    # the rest of throughput.py's job
    a.micro_batch, a.grad_accum, a.lr, a.max_seq_len = 2, 2, 1e-3, 256
    work = Path(a.workdir).resolve()
    info = C.machine_info()
    print(f"machine: {info['nproc']} cpus, {info['cpu']}, {info['mem_total_gib']} GiB; load {info['load_avg']}; "
          f"{info['versions']}", flush=True)
    ds = T.prepare(work, a)
    t_all = time.time()
    runs: dict[str, list[dict]] = {"launcher warm": [], "launcher-after-data warm": [], "trainer warm": [],
                                   "launcher cold": [], "trainer cold": []}
    plan = [("warm", i) for i in range(a.rounds)] + [("cold", i) for i in range(a.cold_rounds)]
    for kind, i in plan:
        for tool in ("launcher", "launcher-after-data", "trainer") if kind == "warm" else ("launcher", "trainer"):
            tag = f"{tool}-{kind}-{i}"
            if kind == "cold":
                with cold_environment():
                    r = one(work, tool, tag, ds, a)
            else:
                r = one(work, tool, tag, ds, a)
            runs[f"{tool} {kind}"].append(r)
            b = r.get("breakdown") or {}
            print(f"  {tag}: rc={r['rc']} first step {C.fmt(r.get('time_to_first_step_s'))} s, wall {r['wall_s']:.1f} s"
                  + ("; " + ", ".join(f"{k} {v:.2f}" for k, v in b.items()) if b else "")
                  + (f" {r['error']}" if r.get("error") else ""), flush=True)
    summary = {}
    for k, rs in runs.items():
        vals = [r["time_to_first_step_s"] for r in rs if r.get("time_to_first_step_s") is not None]
        summary[k] = {"median_s": C.median(vals), "all_s": [round(v, 2) for v in vals]}
        parts = [r["breakdown"] for r in rs if r.get("breakdown")]
        if parts:
            summary[k]["breakdown_median_s"] = {p: round(C.median(x[p] for x in parts), 2) for p in parts[0]}
    for name, kind in (("launcher", "warm"), ("launcher-after-data", "warm"), ("launcher", "cold")):
        pairs = [(lr.get("time_to_first_step_s"), tr.get("time_to_first_step_s"))
                 for lr, tr in zip(runs[f"{name} {kind}"], runs[f"trainer {kind}"])]
        ratios = [x / y for x, y in pairs if x and y]
        summary[f"ratio {name}/trainer {kind}"] = {"median": C.median(ratios), "per_round": [round(r, 3) for r in ratios]}
    print("\n| run | time to first step, median s (all) | launcher: parent until plan.json / ranks' clocks start / "
          "plan.json to start record / step 1 |")
    print("|---|---|---|")
    for k in runs:
        s = summary[k]
        b = s.get("breakdown_median_s")
        print(f"| {k} | {C.fmt(s['median_s'])} ({', '.join(map(str, s['all_s']))}) | "
              + (" / ".join(f"{v:.2f}" for v in b.values()) if b else "") + " |")
    for name, kind in (("launcher", "warm"), ("launcher-after-data", "warm"), ("launcher", "cold")):
        r = summary[f"ratio {name}/trainer {kind}"]
        print(f"ratio {name} / Trainer, {kind}: median {C.fmt(r['median'])} (per round {r['per_round']})")
    out = Path(a.json) if a.json else work / "first_step.json"
    C.write_json(out, {"machine": info, "args": vars(a), "summary": summary, "runs": runs,
                       "total_wall_s": time.time() - t_all, "load_after": C.load_avg()})
    print(f"\ntotal {time.time() - t_all:.0f} s; load after {C.load_avg()}; results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
