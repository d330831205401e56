"""Useful (non-padding) tokens/s of the embedded default job under FSDP2, ZeRO-2 and ZeRO-3,
packed and padded, 2 CPU ranks (the job as `launcher run` ships it, shortened to --steps).

Rounds interleave every variant (fsdp/zero2/zero3 x packed/padded), ``--repeats`` rounds; each
figure is the median over rounds of tokens/s over steps 2..N (step times from metrics.jsonl).
The packed/padded ratio is the median of per-round ratios.

    python bench/demo_throughput.py               # ~6-8 min on 2 cores
    python bench/demo_throughput.py --steps 60 --repeats 5
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

STRATEGIES = {
    "fsdp2": ["parallel.strategy=fsdp"],
    "zero2": ["parallel.strategy=zero", "parallel.zero_stage=2"],
    "zero3": ["parallel.strategy=zero", "parallel.zero_stage=3"],
}


def run_one(work: Path, tag: str, overrides: list[str], steps: int) -> dict:
    r, recs = C.launcher_run(work, tag, [f"train.max_steps={steps}", *overrides])
    train = [x for x in recs if x.get("kind") == "train"]
    if r["rc"] != 0 or len(train) < 2:
        return {"rc": r["rc"], "error": r.get("error") or C.tail(work / f"{tag}.log", 5)}
    t = sum(s["step_time_s"] for s in train[1:])
    tok = sum(s["tokens"] for s in train[1:])
    pad = sum(s["padding_tokens"] for s in train[1:])
    return {"rc": 0, "tok_s": tok / t, "padding_share": pad / (tok + pad), "first_loss": train[0]["loss"],
            "last_loss": train[-1]["loss"], "samples_per_step": C.median(s["samples"] for s in train)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/launcher-bench-demo")
    a = ap.parse_args(argv)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    info = C.machine_info()
    print(f"machine: {info['nproc']} cpus, {info['cpu']}, {info['mem_total_gib']} GiB; load {C.load_avg()}", flush=True)
    t0 = time.time()
    res: dict[tuple[str, bool], list[dict]] = {}
    for i in range(a.repeats):
        for name, ov in STRATEGIES.items():
            for packed in (True, False):
                r = run_one(work, f"{name}-{'packed' if packed else 'padded'}-r{i}",
                            ov + [f"data.packing={'true' if packed else 'false'}"], a.steps)
                res.setdefault((name, packed), []).append(r)
                print(f"  round {i} {name} {'packed' if packed else 'padded'}: {C.fmt(r.get('tok_s'))} tok/s "
                      f"{r.get('error', '')}", flush=True)
    print(f"\n| strategy | packed tok/s (median; rounds) | padded tok/s (median; rounds) | padding share (padded) "
          f"| packed / padded (median of rounds) | loss step 1 -> {a.steps} packed / padded |")
    print("|---|---|---|---|---|---|")
    for name in STRATEGIES:
        p, q = res[(name, True)], res[(name, False)]
        ratios = [x["tok_s"] / y["tok_s"] for x, y in zip(p, q) if x.get("tok_s") and y.get("tok_s")]
        print(f"| {name} | {C.fmt(C.median(x.get('tok_s') for x in p if x.get('tok_s')))} "
              f"({', '.join(C.fmt(x.get('tok_s')) for x in p)}) | "
              f"{C.fmt(C.median(x.get('tok_s') for x in q if x.get('tok_s')))} ({', '.join(C.fmt(x.get('tok_s')) for x in q)}) | "
              f"{C.fmt(C.median(x.get('padding_share') for x in q if x.get('tok_s')))} | **{C.fmt(C.median(ratios))}** "
              f"({', '.join(C.fmt(x) for x in ratios)}) | "
              f"{C.fmt(p[0].get('first_loss'), 4)} -> {C.fmt(p[0].get('last_loss'), 4)} / "
              f"{C.fmt(q[0].get('first_loss'), 4)} -> {C.fmt(q[0].get('last_loss'), 4)} |")
    print(f"\ntotal {time.time() - t0:.0f} s; load after {C.load_avg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
