"""Gloo's own all-gather against the in-place one (launcher.train.strategies.comm), on the runs of
`tests/integration/test_scale.py::test_no_rank_holds_the_whole_model`: the same 290M-parameter
Llama saved in bf16, LoRA r=8, bf16, 2 CPU ranks, 2 steps, under FSDP2 and ZeRO-3.

Each round runs every layout twice, `LAUNCHER_GLOO_GATHER=gloo` then `in-place`, alternating, so
that both meet the same machine. Per run: the largest rank's peak anonymous memory above a process
that only imports what a rank imports (the test's measure, as a share of the model's fp32 size),
the second step's time (the first holds the warm-up), and whether the losses equal the baseline's.

With ``--tiny`` it measures speed where gathers are many and small instead: the embedded default
(a 2-layer Llama of 321K parameters, packed) under ZeRO-2, ZeRO-3 and FSDP2, useful tokens/s over
steps 2..N of each run, both gathers alternating, and the ratio in place / gloo per round.

    python bench/gloo_gather.py                    # 3 rounds x 2 layouts x 2: ~6 min on 2 cores
    python bench/gloo_gather.py --rounds 1 --layouts zero3 --json /tmp/gloo_gather.json
    python bench/gloo_gather.py --tiny             # 3 rounds x 3 layouts x 2 x 40 steps: ~5 min

With ``--host-memory`` the same 290M runs compare ``parallel.host_memory=lean`` (the test's
setting) against ``fast`` instead, both with the in-place gather: what fast costs in memory.

    python bench/gloo_gather.py --host-memory --rounds 2
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
import _common as C  # noqa: E402
import demo_throughput as D  # noqa: E402
import test_scale as T  # noqa: E402  the test's model, overrides and measure: one definition

LAYOUTS = {"fsdp": ["parallel.strategy=fsdp", "cluster.cpu_procs_per_node=2"],
           "zero3": ["parallel.strategy=zero", "parallel.zero_stage=3", "cluster.cpu_procs_per_node=2"]}
MODES = ("gloo", "in-place")


HOST_MODES = ("lean", "fast")


def run_once(work: Path, model: list[str], layout: str, mode: str, tag: str, base: int, n_params: int) -> dict:
    d = work / f"{layout}-{mode}-{tag}"
    shutil.rmtree(d, ignore_errors=True)
    if mode in HOST_MODES:  # later overrides win over BIG_RUN's parallel.host_memory=lean
        T.launcher_run(d, *T.BIG_RUN, *model, *LAYOUTS[layout], f"parallel.host_memory={mode}")
    else:
        with_gather(mode, T.launcher_run, d, *T.BIG_RUN, *model, *LAYOUTS[layout])
    ranks = T.memory(d)
    largest = max(ranks, key=lambda r: r["rss_anon_peak_bytes"])
    steps = [r["step_time_s"] for r in T.records(d, "train")]
    return {"layout": layout, "mode": mode, "round": tag, "largest_rank": largest["rank"],
            "peak_mib": largest["rss_anon_peak_bytes"] / 2**20,
            "above_mib": (largest["rss_anon_peak_bytes"] - base) / 2**20,
            "share": (largest["rss_anon_peak_bytes"] - base) / (4 * n_params),
            "step2_s": steps[1] if len(steps) > 1 else None, "losses": T.losses(d)}


def with_gather(mode: str, fn, *args):
    os.environ["LAUNCHER_GLOO_GATHER"] = mode  # the ranks inherit it through torchrun
    try:
        return fn(*args)
    finally:
        os.environ.pop("LAUNCHER_GLOO_GATHER", None)


def tiny(work: Path, rounds: int, steps: int) -> list[dict]:
    rows = []
    for i in range(rounds):
        for name, ov in D.STRATEGIES.items():
            got = {}
            for mode in MODES:
                r = with_gather(mode, D.run_one, work, f"tiny-{name}-{mode}-{i}", [*ov, "data.packing=true"], steps)
                if r["rc"] != 0:
                    raise SystemExit(f"{name} {mode}: {r.get('error')}")
                got[mode] = r["tok_s"]
                rows.append({"layout": name, "mode": mode, "round": i, "tok_s": r["tok_s"], "last_loss": r["last_loss"]})
            print(f"round {i} {name:5} gloo {got['gloo']:,.0f} tok/s, in place {got['in-place']:,.0f} tok/s: "
                  f"{got['in-place'] / got['gloo']:.2f}x", flush=True)
    print("\n| layout | gloo tok/s (median) | in place tok/s (median) | in place / gloo (median of rounds) |")
    print("|---|---|---|---|")
    for name in D.STRATEGIES:
        g = [r["tok_s"] for r in rows if r["layout"] == name and r["mode"] == "gloo"]
        p = [r["tok_s"] for r in rows if r["layout"] == name and r["mode"] == "in-place"]
        print(f"| {name} | {C.median(g):,.0f} | {C.median(p):,.0f} | {C.median([b / a for a, b in zip(g, p)]):.2f}x |")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layouts", default="fsdp,zero3")
    ap.add_argument("--work", type=Path, default=None, help="folder for the model and the runs (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--tiny", action="store_true", help="the embedded default's tokens/s instead (many small gathers)")
    ap.add_argument("--steps", type=int, default=40, help="with --tiny: steps per run")
    ap.add_argument("--host-memory", action="store_true", help="parallel.host_memory lean against fast instead")
    args = ap.parse_args(argv)
    modes = HOST_MODES if args.host_memory else MODES
    layouts = [x for x in args.layouts.split(",") if x]
    work = args.work or Path(tempfile.mkdtemp(prefix="gloo-gather-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        rows = tiny(work, args.rounds, args.steps)
        if args.json:
            C.write_json(args.json, {"machine": C.machine_info(), "rows": rows})
        return 0

    import torch
    from transformers import LlamaConfig

    from launcher.demo import ensure_demo_assets

    path = work / "llama-290m"
    if not (path / "config.json").exists():
        cfg = LlamaConfig(**T.BIG, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        (work / "n_params").write_text(str(T.save_random_llama(path, cfg, torch.bfloat16)))
    n_params = int((work / "n_params").read_text())
    model = [f"model.path={path}", f"model.tokenizer={ensure_demo_assets().tokenizer_dir}"]
    bases = {layout: T.import_only_rss_anon(layout) for layout in layouts}

    t0 = time.time()
    rows = []
    for i in range(args.rounds):
        for layout in layouts:
            for mode in modes:
                r = run_once(work, model, layout, mode, str(i), bases[layout], n_params)
                rows.append(r)
                print(f"round {i} {layout:5} {mode:8} rank {r['largest_rank']}: {r['peak_mib']:.1f} MiB, "
                      f"{r['above_mib']:.1f} above the import-only {bases[layout] / 2**20:.1f} = {r['share']:.3f}x; "
                      f"step 2 {r['step2_s']:.2f} s", flush=True)

    print(f"\n{args.rounds} rounds in {time.time() - t0:.0f} s; medians:\n")
    print(f"| layout | {'host memory' if args.host_memory else 'gather'} | largest rank, x fp32 (median, range) | "
          f"step 2 s (median) | losses equal {modes[0]}'s |")
    print("|---|---|---|---|---|")
    for layout in layouts:
        ref = [r for r in rows if r["layout"] == layout and r["mode"] == modes[0]]
        for mode in modes:
            rs = [r for r in rows if r["layout"] == layout and r["mode"] == mode]
            shares = [r["share"] for r in rs]
            same = all(r["losses"] == ref[0]["losses"] for r in rs)
            print(f"| {layout} | {mode} | {C.median(shares):.3f} ({min(shares):.3f}-{max(shares):.3f}) | "
                  f"{C.median([r['step2_s'] for r in rs]):.2f} | {'yes' if same else 'no'} |")
        s_g = C.median([r["step2_s"] for r in ref])
        s_i = C.median([r["step2_s"] for r in rows if r["layout"] == layout and r["mode"] == modes[1]])
        print(f"| {layout} | ratio | | {s_g / s_i:.2f}x faster {modes[1]} | |")
    if args.json:
        C.write_json(args.json, {"machine": C.machine_info(), "n_params": n_params, "bases": bases, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
