"""The GPU check's Python part (bench/gpu_check.sh installs, then runs this).

One GPU, a Llama-shaped model of about 1.1 B parameters with random weights built from a config
(hidden 2048, 16 layers, 32 heads / 8 kv heads, intermediate 8192, vocab 32000; nothing is
downloaded), bf16, seq len 2048, packed instruction data of widely varying lengths; runs, in this
order, while the time budget lasts:

  1. launcher FSDP2, full fine-tuning         5. launcher ZeRO-2, full
  2. HF Trainer + DeepSpeed ZeRO-2, full      6. launcher FSDP2, LoRA
     (launcher's ds_config.json, padded)       7. launcher ZeRO-2, LoRA
  3. launcher FSDP2, LoRA, Llama-3-8B shape   8. HF Trainer, LoRA (padded, no DeepSpeed)
  4. launcher ZeRO-3, LoRA, Llama-3-8B shape

Runs 3 and 4 are what only sharded loading makes possible on one card: Llama-3-8B's shape
(8.03 B parameters, random bf16 weights built on the GPU), LoRA r=16, seq len 1024, micro batch 1,
activation checkpointing, 5 steps; a second table puts the largest rank's peak GPU memory
(max_memory_reserved and max_memory_allocated) next to the plan's per-device estimate.

and prints one table: tokens/s per GPU (steps 3..N), MFU against the card's dense bf16 peak
(launcher.facts.hardware), peak GPU memory (NVML, polled, the same way for both tools),
energy from CodeCarbon (one tracker around each run, the same way for both tools), loss first ->
last (checked finite and falling), and the ratio to the Trainer run of the same method.

``--smoke`` runs the same code on CPU with tiny dimensions, 2 steps, one process: it proves the
script works where no GPU is lent (no MFU, no GPU memory there).

    python bench/gpu_check.py --smoke                 # CPU, ~3-5 min on 2 cores
    bash bench/gpu_check.sh                           # on the GPU machine (installs first)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False)
# Llama-3-8B's shape (8,030,261,248 parameters), random weights: what only sharded loading fits on one card
# as LoRA (bf16 base 16 GB; full fine-tuning's fp32 weights, grads and Adam states would need 128 GB)
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, tie_word_embeddings=False,
                rope_theta=500000.0)
LLAMA_SMOKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, tie_word_embeddings=False)


class Profile:
    def __init__(self, smoke: bool, steps: int | None):
        self.smoke = smoke
        self.device = "cpu" if smoke else "cuda"
        self.config = LLAMA_SMOKE if smoke else LLAMA_1B
        self.seq_len = 128 if smoke else 2048
        self.steps = steps or (2 if smoke else 20)
        self.micro_batch = 2
        self.grad_accum = 2
        self.dtype = "bf16"
        self.lr_full = 1e-4
        self.lr_lora = 1e-3
        # instruction rows "rev <s>=" -> reversed s: 2 len(s) + 7 tokens
        self.data = dict(n=400, median_chars=20, max_chars=50) if smoke else dict(n=1500, median_chars=300,
                                                                                   max_chars=1000)


# --------------------------------------------------------------------------- assets


def build_model(out: Path, prof: Profile, config: dict | None = None) -> Path:
    """Random-weight Llama from a config, saved in bf16 (launcher loads fp32 master weights from it)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from launcher.demo import ensure_demo_assets

    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(str(ensure_demo_assets().tokenizer_dir))
    cfg = LlamaConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      **(config or prof.config))
    assert len(tok) <= cfg.vocab_size
    t = time.time()
    dev = torch.device(prof.device)
    torch.manual_seed(0)
    with dev:
        torch.set_default_dtype(torch.bfloat16)  # built in bf16: an 8B model in fp32 would not fit the card
        try:
            model = LlamaForCausalLM(cfg)
        finally:
            torch.set_default_dtype(torch.float32)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    os.replace(tmp, out)
    n = sum(p.numel() for p in model.parameters())
    print(f"model: {n / 1e9:.3f} B parameters, built on {prof.device} in {time.time() - t:.0f} s", flush=True)
    del model
    return out


def job_yaml(work: Path, prof: Profile) -> str:
    cluster = ("{device: cpu, cpu_procs_per_node: 1}" if prof.smoke
               else "{device: cuda, gpus_per_node: 1}")
    return f"""# generated by bench/gpu_check.py
name: gpucheck
output_dir: {work}/runs
model: {{path: {work}/model, dtype: {prof.dtype}}}
data: {{path: {work}/data.jsonl, format: instruction, max_seq_len: {prof.seq_len}, packing: true, eval_fraction: 0.0}}
train:
  method: full
  epochs: 1
  max_steps: {prof.steps}
  micro_batch_size: {prof.micro_batch}
  grad_accum_steps: {prof.grad_accum}
  lr: {prof.lr_full}
  warmup_ratio: 0.0
  lr_scheduler: constant
  max_grad_norm: 1.0
  save_every_steps: null
  eval_every_steps: null
  eval_accuracy_samples: 0
  seed: 0
parallel: {{strategy: fsdp, zero_stage: 2}}
cluster: {cluster}
report: {{country_iso_code: USA, pue: 1.0}}
"""


# --------------------------------------------------------------------------- measuring


class GpuMemPoller:
    """Largest NVML 'used' memory of GPU 0 while the run lasts (context and allocator cache
    included: what the card had to hold). None without NVML or GPU."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak = None
        self._stop = threading.Event()
        self._t = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._h = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nv = pynvml
        except Exception:  # noqa: BLE001 - no GPU: no figure
            self._nv = None

    def __enter__(self):
        if self._nv is not None:
            self._t = threading.Thread(target=self._loop, daemon=True)
            self._t.start()
        return self

    def _loop(self):
        while not self._stop.is_set():
            used = self._nv.nvmlDeviceGetMemoryInfo(self._h).used
            self.peak = max(self.peak or 0, used)
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        if self._t:
            self._t.join()

    @property
    def peak_gib(self):
        return self.peak / 2**30 if self.peak else None


def measured_run(argv, log: Path, work: Path, tag: str, env=None, gpu=True) -> dict:
    """Run argv with a CodeCarbon tracker (launcher's NodeEnergyTracker, the GPU included)
    and the GPU memory poller around it."""
    from launcher.train.energy import NodeEnergyTracker

    edir = work / "energy" / tag
    shutil.rmtree(edir, ignore_errors=True)
    tracker = NodeEnergyTracker(edir, node_name=tag, country_iso_code="USA", gpu_ids=[0] if gpu else None,
                                pue=1.0, measure_power_secs=1.0, flush_every_s=None)
    started = tracker.start()
    with GpuMemPoller() as mem:
        t0 = time.time()
        with open(log, "wb") as f:
            rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(work)).returncode
        wall = time.time() - t0
    summary = tracker.stop() if started else None
    energy = None
    if summary:
        e = summary.get("energy_kwh") or {}
        energy = {"kwh": e.get("total"), "gpu_kwh": e.get("gpu"), "measured": summary.get("measured")}
    return {"rc": rc, "wall_s": wall, "t0": t0, "peak_gpu_gib": mem.peak_gib, "energy": energy}


def steady_stats(steps: list[dict], skip: int) -> dict:
    steady = steps[skip:] if len(steps) > skip else steps[-1:]
    t = sum(s["step_time_s"] for s in steady)
    tok = sum(s["tokens"] for s in steady)
    losses = [s.get("loss") for s in steps]
    finite = all(x is not None and math.isfinite(x) for x in losses)
    k = max(1, min(3, len(losses) // 2))
    falling = finite and len(losses) >= 2 and sum(losses[-k:]) / k < sum(losses[:k]) / k
    return {"tok_s": tok / t if t > 0 else None, "steps": len(steps), "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None, "loss_finite": finite, "loss_falling": falling}


def run_launcher(work: Path, prof: Profile, strategy: str, method: str) -> dict:
    tag = f"launcher-{strategy}-{method}"
    run_dir = work / "runs" / tag
    shutil.rmtree(run_dir, ignore_errors=True)
    ov = [f"parallel.strategy={'fsdp' if strategy == 'fsdp2' else 'zero'}", "parallel.zero_stage=2",
          f"train.method={method}", f"train.lr={prof.lr_lora if method == 'lora' else prof.lr_full}"]
    argv = [sys.executable, "-m", "launcher", "run", str(work / "job.yaml"), "--run-dir", str(run_dir),
            "--device", prof.device, *ov]
    r = measured_run(argv, work / "logs" / f"{tag}.log", work, tag, gpu=not prof.smoke)
    out = {"tag": tag, "tool": "launcher", "strategy": strategy, "method": method, **r}
    m = run_dir / "metrics.jsonl"
    if not m.exists():
        out["error"] = C.tail(work / "logs" / f"{tag}.log", 8)
        return out
    recs = [json.loads(x) for x in m.read_text().splitlines() if x.strip()]
    start = next((x for x in recs if x.get("kind") == "start"), {})
    steps = [x for x in recs if x.get("kind") == "train"]
    out.update(steady_stats(steps, skip=2 if len(steps) > 4 else 1))
    out["flops_per_token"] = start.get("flops_per_token")
    out["accelerator"] = start.get("accelerator")
    out["n_params"] = start.get("n_params")
    out["n_trainable"] = start.get("n_trainable_params")
    out["time_to_first_step_s"] = steps[0]["time"] - r["t0"] if steps else None
    rep = run_dir / "report.json"
    if rep.exists():
        try:
            e = json.loads(rep.read_text()).get("energy") or {}
            out["launcher_report_energy_kwh"] = (e.get("energy_kwh") or {}).get("total")
            out["launcher_report_energy_measured"] = e.get("measured")
        except (ValueError, AttributeError):
            pass
    if (run_dir / "COMPLETED").exists() and r["rc"] != 0:
        out["note"] = f"exit {r['rc']} after COMPLETED"
    if not (run_dir / "COMPLETED").exists():
        out["error"] = C.tail(work / "logs" / f"{tag}.log", 8)
    return out


def run_launcher_8b(work: Path, prof: Profile, strategy: str) -> dict:
    """The 8B-shaped model (LoRA, bf16, packed, activation checkpointing) under FSDP2 or ZeRO-3 on
    one GPU: the largest rank's measured peak GPU memory next to the plan's per-device estimate."""
    tag = f"launcher-{strategy}-lora-8b"
    run_dir = work / "runs" / tag
    shutil.rmtree(run_dir, ignore_errors=True)
    model = build_model(work / "model-8b", prof, LLAMA_SMOKE if prof.smoke else LLAMA_8B)
    layout = ["parallel.strategy=fsdp"] if strategy == "fsdp2" else ["parallel.strategy=zero", "parallel.zero_stage=3"]
    argv = [sys.executable, "-m", "launcher", "run", str(work / "job.yaml"), "--run-dir", str(run_dir),
            "--device", prof.device, f"model.path={model}", "train.method=lora", f"train.lr={prof.lr_lora}",
            "train.micro_batch_size=1", "train.grad_accum_steps=1", f"train.max_steps={min(prof.steps, 5)}",
            f"data.max_seq_len={min(prof.seq_len, 1024)}", "train.activation_checkpointing=true", *layout]
    r = measured_run(argv, work / "logs" / f"{tag}.log", work, tag, gpu=not prof.smoke)
    out = {"tag": tag, "tool": "launcher", "strategy": strategy, "method": "lora-8b", **r}
    m, plan = run_dir / "metrics.jsonl", run_dir / "plan.json"
    if not m.exists() or not plan.exists():
        out["error"] = C.tail(work / "logs" / f"{tag}.log", 8)
        return out
    recs = [json.loads(x) for x in m.read_text().splitlines() if x.strip()]
    steps = [x for x in recs if x.get("kind") == "train"]
    out.update(steady_stats(steps, skip=1))
    start = next((x for x in recs if x.get("kind") == "start"), {})
    out["n_params"], out["n_trainable"] = start.get("n_params"), start.get("n_trainable_params")
    mem = next((x for x in recs if x.get("kind") == "memory" and x.get("phase") == "end"), None)
    ranks = mem["ranks"] if mem else []
    key = "cuda_max_reserved_bytes" if not prof.smoke else "rss_anon_peak_bytes"
    if ranks:
        largest = max(ranks, key=lambda x: x.get(key) or 0)
        out["measured_peak_gib"] = (largest.get(key) or 0) / 2**30
        out["measured_allocated_gib"] = (largest.get("cuda_max_allocated_bytes") or 0) / 2**30
        out["measured_rank"] = largest["rank"]
    planned = json.loads(plan.read_text())["memory"]["per_device_bytes"]
    out["planned_gib"] = planned["total"] / 2**30
    out["planned_split_gib"] = {k: round(v / 2**30, 2) for k, v in planned.items()}
    if out.get("measured_peak_gib"):
        out["measured_over_planned"] = out["measured_peak_gib"] / out["planned_gib"]
    if not (run_dir / "COMPLETED").exists():
        out["error"] = C.tail(work / "logs" / f"{tag}.log", 8)
    return out


def run_trainer(work: Path, prof: Profile, method: str, ds_config: Path | None) -> dict:
    tag = f"trainer-{'zero2' if ds_config else 'plain'}-{method}"
    out_dir = work / "runs" / tag
    shutil.rmtree(out_dir, ignore_errors=True)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "1",
            str(C.BENCH_DIR / "hf_trainer_baseline.py"), "--model", str(work / "model"), "--data",
            str(work / "data.jsonl"), "--out", str(out_dir), "--strategy", "zero" if ds_config else "ddp",
            "--dist-setup", "use_cpu" if prof.smoke else "plain", "--micro-batch", str(prof.micro_batch), "--grad-accum", str(prof.grad_accum),
            "--lr", str(prof.lr_lora if method == "lora" else prof.lr_full), "--max-steps", str(prof.steps),
            "--max-seq-len", str(prof.seq_len), "--dtype", prof.dtype, "--method", method]
    if ds_config:
        argv += ["--ds-config", str(ds_config)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if prof.smoke:
        env["OMP_NUM_THREADS"] = str(os.cpu_count() or 1)
    r = measured_run(argv, work / "logs" / f"{tag}.log", work, tag, env=env, gpu=not prof.smoke)
    out = {"tag": tag, "tool": "trainer", "strategy": "zero2" if ds_config else "none", "method": method, **r}
    f = out_dir / "rank0.jsonl"
    if not f.exists() or r["rc"] != 0:
        out["error"] = C.tail(work / "logs" / f"{tag}.log", 8)
    if not f.exists():
        return out
    recs = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    steps = [x for x in recs if x.get("kind") == "step"]
    out.update(steady_stats(steps, skip=2 if len(steps) > 4 else 1))
    out["time_to_first_step_s"] = steps[0]["time"] - r["t0"] if steps else None
    out["padding_share"] = (1 - sum(s["tokens"] for s in steps) / max(1, sum(s["padded_tokens"] for s in steps)))
    setup = next((x for x in recs if x.get("kind") == "setup"), {})
    out["wrapped"] = setup.get("model_wrapped")
    return out


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU, 2 steps: proves the script runs")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 20; smoke 2)")
    ap.add_argument("--workdir", default=None, help="default /tmp/launcher-gpu-check[-smoke]")
    ap.add_argument("--budget-s", type=float, default=480, help="start no run after this many seconds")
    ap.add_argument("--only", default=None, help="comma list of run tags to run (default all)")
    ap.add_argument("--json", default=None, help="write results here (default $OUT/gpu_check.json if $OUT is set)")
    a = ap.parse_args(argv)
    t_start = time.time()
    prof = Profile(a.smoke, a.steps)
    work = Path(a.workdir or ("/tmp/launcher-gpu-check-smoke" if a.smoke else "/tmp/launcher-gpu-check")).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)

    import torch

    from launcher.facts.hardware import match_accelerator

    if not a.smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible: run with --smoke on a machine without a GPU")
    dev_name = torch.cuda.get_device_name(0) if not a.smoke else "cpu"
    acc = match_accelerator(dev_name) if not a.smoke else None
    peak = acc.peak_tflops("bf16") if acc else None
    print(f"device: {dev_name}; bf16 dense peak {peak} TFLOP/s ({acc.key if acc else 'unknown'}); "
          f"versions {C.module_versions_cheap()}", flush=True)

    build_model(work / "model", prof)
    C.build_varlen_data(work / "data.jsonl", **prof.data)
    (work / "job.yaml").write_text(job_yaml(work, prof))
    ds = work / "ds_config-zero2.json"
    subprocess.run([sys.executable, "-m", "launcher", "ds-config", str(work / "job.yaml"), "parallel.strategy=zero",
                    "parallel.zero_stage=2", "--device", prof.device, "-o", str(ds)], check=True, cwd=str(work))

    plan = [
        ("launcher-fsdp2-full", lambda: run_launcher(work, prof, "fsdp2", "full")),
        ("trainer-zero2-full", lambda: run_trainer(work, prof, "full", ds)),
        # Llama-3-8B's shape, LoRA: only sharded loading (meta device / zero.Init) makes it start
        ("launcher-fsdp2-lora-8b", lambda: run_launcher_8b(work, prof, "fsdp2")),
        ("launcher-zero3-lora-8b", lambda: run_launcher_8b(work, prof, "zero3")),
        ("launcher-zero2-full", lambda: run_launcher(work, prof, "zero2", "full")),
        ("launcher-fsdp2-lora", lambda: run_launcher(work, prof, "fsdp2", "lora")),
        ("launcher-zero2-lora", lambda: run_launcher(work, prof, "zero2", "lora")),
        ("trainer-plain-lora", lambda: run_trainer(work, prof, "lora", None)),
    ]
    only = set(a.only.split(",")) if a.only else None
    results, longest = [], 0.0
    for tag, fn in plan:
        if only and tag not in only:
            continue
        elapsed = time.time() - t_start
        if elapsed + max(longest, 60.0) > a.budget_s:
            print(f"skip {tag}: {elapsed:.0f} s spent of the {a.budget_s:.0f} s budget", flush=True)
            results.append({"tag": tag, "skipped": True})
            continue
        r = fn()
        longest = max(longest, r["wall_s"])
        results.append(r)
        print(f"{tag}: rc={r['rc']} wall={r['wall_s']:.0f}s tok/s={C.fmt(r.get('tok_s'))} "
              f"loss {C.fmt(r.get('loss_first'), 4)} -> {C.fmt(r.get('loss_last'), 4)} "
              f"{('ERROR ' + r['error'][-400:]) if r.get('error') else ''}", flush=True)

    # MFU: launcher's FLOPs per token of the same method (the Trainer trains the same model)
    fpt = {r["method"]: r["flops_per_token"] for r in results if r.get("flops_per_token")}
    base = {r["method"]: r for r in results if r.get("tool") == "trainer" and r.get("tok_s")}
    print(f"\n| run | tokens/s per GPU | MFU (bf16 peak {peak or 'n/a'}) | peak GPU GiB | energy Wh (CodeCarbon) | "
          f"Wh per 1M tokens | first step s | loss first -> last | finite & falling | vs Trainer ({'same method'}) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ok_all = True
    for r in results:
        if r.get("skipped"):
            print(f"| {r['tag']} | skipped (time budget) | | | | | | | | |")
            continue
        tok_s = r.get("tok_s")
        f = fpt.get(r.get("method"))
        mfu = (tok_s * f / (peak * 1e12)) if (tok_s and f and peak) else None
        r["mfu"] = mfu
        e_kwh = (r.get("energy") or {}).get("kwh")
        b = base.get(r.get("method"))
        ratio = tok_s / b["tok_s"] if (tok_s and b and r.get("tool") == "launcher") else None
        r["ratio_to_trainer"] = ratio
        trained = (r.get("steps") or 0) * prof.micro_batch * prof.grad_accum * prof.seq_len
        wh_per_m = (e_kwh * 1000 / (trained / 1e6)) if (e_kwh and trained and r.get("tool") == "launcher") else None
        # falling is judged over >= 6 steps (2 padded steps of different rows can go either way)
        falling_ok = r.get("loss_falling") or (r.get("steps") or 0) < 6
        good = bool(r.get("loss_finite") and falling_ok and r.get("rc") == 0 and not r.get("error"))
        ok_all &= good
        print(f"| {r['tag']} | {C.fmt(tok_s)} | {f'{mfu * 100:.1f}%' if mfu else 'n/a'} | "
              f"{C.fmt(r.get('peak_gpu_gib'))} | {C.fmt(e_kwh * 1000 if e_kwh else None)} | {C.fmt(wh_per_m)} | "
              f"{C.fmt(r.get('time_to_first_step_s'))} | {C.fmt(r.get('loss_first'), 4)} -> "
              f"{C.fmt(r.get('loss_last'), 4)} | {('yes' if r.get('loss_falling') else 'finite; too few steps to judge') if good else 'NO'} | {C.fmt(ratio)} |")
    big = [r for r in results if str(r.get("method")) == "lora-8b" and not r.get("skipped")]
    if big:
        print("\n| 8B-shaped LoRA run | params (trainable) | planned per device GiB | measured peak GiB "
              "(max_memory_reserved; allocated) | measured / planned | tokens/s | loss first -> last |")
        print("|---|---|---|---|---|---|---|")
        for r in big:
            print(f"| {r['tag']} | {C.fmt(r.get('n_params'))} ({C.fmt(r.get('n_trainable'))}) | "
                  f"{C.fmt(r.get('planned_gib'))} | {C.fmt(r.get('measured_peak_gib'))}; "
                  f"{C.fmt(r.get('measured_allocated_gib'))} | {C.fmt(r.get('measured_over_planned'))} | "
                  f"{C.fmt(r.get('tok_s'))} | {C.fmt(r.get('loss_first'), 4)} -> {C.fmt(r.get('loss_last'), 4)} |")
    print("\nnotes: tokens/s counts non-padding tokens over steps 3..N (step 2 only with <= 4 steps); launcher rows are packed (no padding), "
          "Trainer rows are padded (DataCollatorForSeq2Seq); energy is the whole run (start-up included), "
          "one CodeCarbon tracker around each process tree; 'Wh per 1M tokens' only for packed launcher runs, "
          "whose tokens per step are exact.")
    out = a.json or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    if out:
        C.write_json(Path(out), {"device": dev_name, "peak_bf16_tflops": peak, "smoke": a.smoke,
                                 "profile": vars(prof), "results": results, "total_s": time.time() - t_start})
    print(f"total {time.time() - t_start:.0f} s; all checks {'passed' if ok_all else 'FAILED'}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
