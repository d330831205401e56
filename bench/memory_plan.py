"""The memory plan against real runs: a list of configurations (ZeRO-1/2/3 and FSDP2, full and
LoRA, activation checkpointing off and on) of a ~100M-parameter Llama run through `launcher run`
on CPU (2 ranks, fp32: these CPUs have no fast bf16), a few steps each. For every run it reads
the plan's estimate (plan.json, `memory`) and the trainer's `memory` records (metrics.jsonl: per
rank, the model-state bytes counted from the tensors it holds, and its anonymous-RSS peak above
the baseline taken before the model was built), and prints and writes the table:

* model states: planned against counted, per rank (target: within 5%). The trainer counts at the
  optimizer step what the optimizer steps: module parameters, the gradients of the stepped
  parameters (under DeepSpeed the fp32 gradient partition built for the step: the plan's
  ``step_grads``; under FSDP2 the sharded gradients: the plan's ``grads``) and the optimizer's
  states with the master weights; so the planned figure compared is ``params + optimizer +
  step_grads`` (ZeRO) or ``params + optimizer + grads`` (FSDP2).
* totals: the planned ``total`` per device (on CPU: everything allocated + 10%) against the
  largest ``rss_anon_peak_bytes - rss_anon_baseline_bytes`` of the ranks (target: within 25%).

It needs the trainer's `memory` records (`launcher.train.memory`, written after setup and at the
end); a run without them is listed with "no memory record".

    python bench/memory_plan.py                      # ~10-15 min on 2 cores
    python bench/memory_plan.py --only zero3-full,fsdp-lora --steps 2
    python bench/memory_plan.py --json bench/memory_plan.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

# ~101M parameters with the demo's character tokenizer (a vocabulary of ~100: the logits are small)
MODEL_100M = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=16, num_attention_heads=12,
                  num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=False)

FULL = ["train.method=full"]
LORA = ["train.method=lora", "train.lora.r=16", "train.lora.target_modules=all-linear"]
CKPT = ["train.activation_checkpointing=true"]
CONFIGS: dict[str, list[str]] = {
    "zero1-full": ["parallel.strategy=zero", "parallel.zero_stage=1", *FULL],
    "zero2-full": ["parallel.strategy=zero", "parallel.zero_stage=2", *FULL],
    "zero3-full": ["parallel.strategy=zero", "parallel.zero_stage=3", *FULL],
    "fsdp-full": ["parallel.strategy=fsdp", *FULL],
    "zero2-lora": ["parallel.strategy=zero", "parallel.zero_stage=2", *LORA],
    "zero3-lora": ["parallel.strategy=zero", "parallel.zero_stage=3", *LORA],
    "fsdp-lora": ["parallel.strategy=fsdp", *LORA],
    "zero2-full-ckpt": ["parallel.strategy=zero", "parallel.zero_stage=2", *FULL, *CKPT],
    "zero3-lora-ckpt": ["parallel.strategy=zero", "parallel.zero_stage=3", *LORA, *CKPT],
    "fsdp-full-ckpt": ["parallel.strategy=fsdp", *FULL, *CKPT],
}

JOB = """\
name: memplan
model: {{path: {model}, dtype: fp32}}
data: {{path: {data}, format: instruction, max_seq_len: {seq}, packing: true, eval_fraction: 0.0}}
train: {{micro_batch_size: {micro}, global_batch_size: {glob}, lr: 1.0e-4, warmup_ratio: 0.0,
        eval_every_steps: null, eval_accuracy_samples: 0, save_every_steps: null}}
cluster: {{nodes: 1, cpu_procs_per_node: 2, device: cpu}}
"""


def _err(planned, measured):
    if planned is None or measured is None or measured == 0:
        return None
    return (planned - measured) / measured


def measure(run_dir: Path) -> dict:
    """The plan's estimate and the run's memory records, compared (see the module docstring)."""
    from launcher.rundir import MemoryRecord, read_metrics, read_plan

    plan = read_plan(run_dir)
    d = plan.memory.per_device_bytes if plan.memory else None
    out: dict = {"strategy": plan.strategy, "zero_stage": plan.zero_stage, "method": plan.job.train.method,
                 "checkpointing": plan.job.train.activation_checkpointing,
                 "params": plan.params["total"] if plan.params else None,
                 "trainable": plan.params["trainable"] if plan.params else None}
    if d is None:
        out["error"] = "plan.json has no memory estimate"
        return out
    grads = d.step_grads if plan.strategy == "zero" else d.grads
    out.update(planned_states=d.params + d.optimizer + grads, planned_total=d.total,
               planned={k: getattr(d, k) for k in ("params", "grads", "optimizer", "step_grads", "activations",
                                                    "logits", "buffers", "overhead", "total")})
    recs = read_metrics(run_dir).of(MemoryRecord)
    end = [r for r in recs if r.phase == "end"] or recs
    if not end:
        out["error"] = "no memory record"
        return out
    ranks = end[-1].ranks
    counted = [(r.params_bytes or 0) + (r.grads_bytes or 0) + (r.optimizer_bytes or 0) for r in ranks]
    peaks = [r.rss_anon_peak_bytes - r.rss_anon_baseline_bytes for r in ranks]
    out.update(counted_states=counted, peak_above_baseline=peaks,
               counted_detail=[{"params": r.params_bytes, "grads": r.grads_bytes, "optimizer": r.optimizer_bytes}
                               for r in ranks],
               states_err=max((abs(_err(out["planned_states"], c)) for c in counted if c), default=None),
               total_err=_err(d.total, max(peaks)) if peaks else None)
    return out


def run_config(work: Path, name: str, overrides: list[str], steps: int) -> dict:
    run_dir = work / name
    shutil.rmtree(run_dir, ignore_errors=True)
    argv = ["launcher", "run", str(work / "job.yaml"), "--run-dir", str(run_dir), f"train.max_steps={steps}",
            *overrides]
    r = C.run_logged(argv, work / f"{name}.log", cwd=str(work), marker="launcher train", timeout=1800)
    out = {"name": name, "overrides": overrides, "rc": r["rc"], "wall_s": round(r["wall_s"], 1)}
    if not (run_dir / "plan.json").exists():
        out["error"] = C.tail(work / f"{name}.log", 5)
        return out
    out.update(measure(run_dir))
    return out


def _mib(x) -> str:
    return "n/a" if x is None else f"{x / 2**20:,.1f}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def table(rows: list[dict]) -> str:
    lines = ["| config | planned states MiB | counted per rank MiB | error | planned total MiB | "
             "peak above baseline per rank MiB | error |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "planned_states" not in r or "counted_states" not in r:
            lines.append(f"| {r['name']} | {_mib(r.get('planned_states'))} | {r.get('error', 'n/a')} | | "
                         f"{_mib(r.get('planned_total'))} | | |")
            continue
        lines.append(f"| {r['name']} | {_mib(r['planned_states'])} | "
                     f"{', '.join(_mib(c) for c in r['counted_states'])} | {_pct(r['states_err'])} | "
                     f"{_mib(r['planned_total'])} | {', '.join(_mib(p) for p in r['peak_above_baseline'])} | "
                     f"{_pct(r['total_err'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None, help="comma-separated names of CONFIGS")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--global-batch", type=int, default=8, help="2 ranks x micro 2 x accumulation 2 by default")
    ap.add_argument("--workdir", default="/tmp/launcher-bench-memory")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    names = a.only.split(",") if a.only else list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown config(s) {unknown}; known: {', '.join(CONFIGS)}")
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    from launcher.demo import resolve_model_path

    tok_dir = Path(resolve_model_path("demo:tiny-llama"))
    model = C.build_bench_model(work / "model-100m", tok_dir, MODEL_100M)
    data = C.build_varlen_data(work / "data.jsonl", n=600)
    (work / "job.yaml").write_text(JOB.format(model=json.dumps(str(model)), data=json.dumps(str(data)), seq=a.seq,
                                              micro=a.micro, glob=a.global_batch))
    info = C.machine_info()
    print(f"machine: {info['nproc']} cpus, {info['cpu']}, {info['mem_total_gib']} GiB; load {info['load_avg']}",
          flush=True)
    t0 = time.time()
    rows = []
    for name in names:
        r = run_config(work, name, CONFIGS[name], a.steps)
        rows.append(r)
        print(f"  {name}: rc={r['rc']} wall={r['wall_s']}s states {_pct(r.get('states_err'))} total "
              f"{_pct(r.get('total_err'))} {r.get('error', '')}", flush=True)
    print()
    print(table(rows))
    ok_states = [r for r in rows if r.get("states_err") is not None]
    ok_total = [r for r in rows if r.get("total_err") is not None]
    print(f"\nmodel states within 5%: {sum(r['states_err'] <= 0.05 for r in ok_states)} of {len(ok_states)}; "
          f"totals within 25%: {sum(abs(r['total_err']) <= 0.25 for r in ok_total)} of {len(ok_total)}; "
          f"{time.time() - t0:.0f} s; load after {C.load_avg()}")
    if a.json:
        C.write_json(Path(a.json), {"machine": info, "model": MODEL_100M, "steps": a.steps, "seq": a.seq,
                                    "micro": a.micro, "global_batch": a.global_batch, "runs": rows,
                                    "load_after": C.load_avg()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
