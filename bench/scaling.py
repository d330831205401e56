"""Scaling on one machine: the embedded default job (tiny Llama, arithmetic data, packed,
ZeRO-2) on 1 process and on 2 ranks, CPU, the same global batch (16 rows: micro 8 x accum 2 x 1,
or micro 8 x accum 1 x 2) and the same steps; launcher gives each rank cpu_count // ranks
threads, so both use the whole machine.

Efficiency = tokens/s on 2 ranks / (2 x tokens/s on 1 process). Runs alternate 1, 2, 1, 2, ...
(``--repeats`` of each, default 3); tokens/s is measured over steps 2..N from metrics.jsonl.
Eval and the accuracy check are turned off (they are not training throughput).

    python bench/scaling.py            # ~4-6 min on 2 cores
    python bench/scaling.py --steps 60 --repeats 5

Two "nodes" through network namespaces are not measured here (see bench/README.md).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def run_one(work: Path, procs: int, tag: str, steps: int) -> dict:
    r, recs = C.launcher_run(work, tag, [f"cluster.cpu_procs_per_node={procs}", f"train.max_steps={steps}"])
    out = {"procs": procs, "rc": r["rc"], "wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"]}
    if not recs:
        out["error"] = r["error"]
        return out
    steps_ = [x for x in recs if x.get("kind") == "train"][1:]
    start = next(x for x in recs if x.get("kind") == "start")
    t = sum(s["step_time_s"] for s in steps_)
    out.update(world_size=start["world_size"], steps=len(steps_) + 1,
               tok_s=sum(s["tokens"] for s in steps_) / t if t else None,
               samples_per_step=C.median(s["samples"] for s in steps_),
               tokens_per_step=C.median(s["tokens"] for s in steps_),
               first_loss=recs and next(x for x in recs if x.get("kind") == "train")["loss"],
               last_loss=steps_[-1]["loss"] if steps_ else None)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/launcher-bench-scaling")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    info = C.machine_info()
    print(f"machine: {info['nproc']} cpus, {info['cpu']}, {info['mem_total_gib']} GiB; load {info['load_avg']}", flush=True)
    t0 = time.time()
    runs = {1: [], 2: []}
    for i in range(a.repeats):
        for procs in (1, 2):
            r = run_one(work, procs, f"p{procs}-r{i}", a.steps)
            runs[procs].append(r)
            print(f"  {procs} proc(s) round {i}: rc={r['rc']} tok/s={C.fmt(r.get('tok_s'))} "
                  f"samples/step={r.get('samples_per_step')} wall={r['wall_s']:.0f}s {r.get('error', '')}", flush=True)
    med = {p: C.median(r.get("tok_s") for r in rs) for p, rs in runs.items()}
    per_round = [b["tok_s"] / (2 * a_["tok_s"]) for a_, b in zip(runs[1], runs[2]) if a_.get("tok_s") and b.get("tok_s")]
    eff = C.median(per_round)
    print("\n| processes | tokens/s (median) | all runs | samples/step | tokens/step | peak RSS/rank MiB | loss first -> last |")
    print("|---|---|---|---|---|---|---|")
    for p, rs in runs.items():
        ok = [r for r in rs if r.get("tok_s")]
        print(f"| {p} | {C.fmt(med[p])} | {', '.join(C.fmt(r['tok_s']) for r in ok)} | "
              f"{C.fmt(C.median(r['samples_per_step'] for r in ok))} | {C.fmt(C.median(r['tokens_per_step'] for r in ok))} | "
              f"{C.fmt(C.median(max(r['peak_rss_mib']) for r in ok if r.get('peak_rss_mib')))} | "
              f"{C.fmt(ok[0]['first_loss'], 4) if ok else 'n/a'} -> {C.fmt(ok[0]['last_loss'], 4) if ok else 'n/a'} |")
    print(f"\nefficiency 2 ranks / (2 x 1 process): median {C.fmt(eff)} (per round {[round(x, 3) for x in per_round]}); "
          f"speed-up {C.fmt(med[2] / med[1] if med[1] and med[2] else None)}x; total {time.time() - t0:.0f} s; "
          f"load after {C.load_avg()}")
    if a.json:
        C.write_json(Path(a.json), {"machine": info, "runs": runs, "median_tok_s": med, "efficiency": eff,
                                    "efficiency_per_round": per_round, "load_after": C.load_avg()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
