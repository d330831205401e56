"""launcher against the Hugging Face Trainer on identical work (issue 28), alternating rounds.

The work, the same on both sides:

* model: a Llama of hidden 256, 4 layers, 4 heads (4 kv), intermediate 688, vocabulary 2,048,
  untied embeddings: 4.2M parameters, fp32, random weights (seed 0), sdpa attention;
* data: 2,000 instruction documents of 32-512 tokens (uniform), words of a 2,048-token
  word-level tokenizer; loss on the response;
* the rows: each case's launcher run tokenizes (and packs, or not) into its run directory's cache;
  the Trainer of the same round trains on exactly those rows, in the same micro batches in the
  same order (``hf_trainer_baseline.py --rows --same-batches``), batched by launcher's own ``collate`` (packed: without attention_mask, documents kept apart by
  position_ids; padded: one document per row, padded to the longest of the micro batch);
* batch: micro 2 x accumulation 2 x 2 CPU ranks, one thread each; AdamW, lr 1e-3 constant, grad
  clip 1.0;
* DeepSpeed, each side its own engine start: launcher its own ds_config.json; the Trainer, by
  default, the config a Trainer user writes (``--trainer-config hf-auto``: transformers' guide,
  sizes "auto"), or exactly launcher's (``--trainer-config launcher``: the engine loop alone);
* counted: useful (non-padding) tokens per second over the timed steps (``--steps`` after
  ``--warmup``), rank 0's step clock on both sides.

Cases: ZeRO-2 and ZeRO-3, padded and packed (``--cases``). Order per round: for each case,
launcher then the Trainer, rounds repeated (``--rounds``), so load from elsewhere hits both
alike; the ratio launcher / Trainer is taken per round, then its median per case. FSDP2: the
Trainer's FSDP does not run on CPU with these versions (bench/RESULTS.md, "Findings: the HF
Trainer on CPU"), so no Trainer figure is made up for it.

    python bench/vs_trainer.py                                   # 4 cases x 3 rounds (~35 min here)
    python bench/vs_trainer.py --cases zero3-padded --rounds 1 --steps 10
    python bench/vs_trainer.py --trainer-config launcher                  # the same ds_config on both sides
    python bench/vs_trainer.py --cases zero2-packed --ablate off:memory_thread env:LAUNCHER_GLOO_GATHER=gloo \
        set:parallel.host_memory=lean        # launcher only: each variant against its default, same round
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import throughput as T  # noqa: E402

LLAMA = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
             intermediate_size=688, max_position_embeddings=1024, tie_word_embeddings=False)
VOCAB = 2048
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
CASES = {"zero2-padded": (2, False), "zero2-packed": (2, True), "zero3-padded": (3, False), "zero3-packed": (3, True)}


def build_model(folder: Path) -> Path:
    """The issue's Llama and a word-level tokenizer of 2,048 tokens, saved together."""
    if (folder / "model.safetensors").exists():
        return folder
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for i in range(VOCAB - len(SPECIALS)):
        vocab[f"w{i}"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=VOCAB, bos_token_id=2, eos_token_id=3, pad_token_id=0, **LLAMA)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(torch.float32)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    os.replace(tmp, folder)
    return folder


def build_data(path: Path, n: int = 2000, seed: int = 0) -> Path:
    """``n`` documents of 32-512 tokens (bos, prompt, response, eos), a quarter of them prompt."""
    if path.exists():
        return path
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(VOCAB - len(SPECIALS))]
    lines = []
    for _ in range(n):
        total = rng.randint(32, 512) - 2  # bos and eos
        p = max(1, total // 4)
        lines.append(json.dumps({"prompt": " ".join(rng.choice(words) for _ in range(p)),
                                 "response": " ".join(rng.choice(words) for _ in range(total - p))}))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def job_yaml(work: Path, a) -> str:
    return f"""# generated by bench/vs_trainer.py
name: vs-trainer
output_dir: {work}/runs
model: {{path: {work}/model, dtype: fp32}}
data: {{path: {work}/data.jsonl, format: instruction, max_seq_len: 512, packing: true, eval_fraction: 0.0}}
train:
  method: full
  epochs: 1
  max_steps: {a.warmup + a.steps}
  micro_batch_size: 2
  grad_accum_steps: 2
  lr: 0.001
  warmup_ratio: 0.0
  lr_scheduler: constant
  weight_decay: 0.0
  max_grad_norm: 1.0
  save_every_steps: null
  eval_every_steps: null
  eval_accuracy_samples: 0
  seed: 0
parallel: {{strategy: zero, zero_stage: 2}}
cluster: {{device: cpu, cpu_procs_per_node: 2}}
"""


def steady(steps: list[dict], warmup: int) -> dict:
    timed = [s for s in steps if s["step"] > warmup]
    t = sum(s["step_time_s"] for s in timed)
    tok = sum(s["tokens"] for s in timed)
    return {"timed_steps": len(timed), "useful_tok_s": tok / t if t > 0 else None,
            "tokens_per_step": C.median(s["tokens"] for s in timed) if timed else None,
            "losses": [s.get("loss") for s in steps]}


ABLATE_DIR = Path(__file__).resolve().parent / "ablate"


def variant_settings(variant: str) -> tuple[dict, list[str]]:
    """(environment, job overrides) of an ablation variant: ``default``, ``off:NAME[+NAME]`` (a
    mechanism switched off by bench/ablate/sitecustomize.py), ``env:K=V`` or ``set:key=value``."""
    kind, _, what = variant.partition(":")
    if variant == "default":
        return {}, []
    if kind == "off":
        path = os.pathsep.join(x for x in (str(ABLATE_DIR), os.environ.get("PYTHONPATH", "")) if x)
        return {"LAUNCHER_ABLATE": what.replace("+", ","), "PYTHONPATH": path}, []
    if kind == "env":
        k, _, v = what.partition("=")
        return {k: v}, []
    if kind == "set":
        return {}, [what]
    raise SystemExit(f"--ablate: unknown variant {variant!r} (default, off:NAME, env:K=V, set:key=value)")


def run_launcher(work: Path, case: str, tag: str, a, variant: str = "default") -> dict:
    stage, packed = CASES[case]
    run_dir = work / "runs" / tag
    shutil.rmtree(run_dir, ignore_errors=True)
    extra_env, overrides = variant_settings(variant)
    argv = ["launcher", "run", str(work / "job.yaml"), "--run-dir", str(run_dir), f"parallel.zero_stage={stage}",
            f"data.packing={'true' if packed else 'false'}", *overrides]
    env = dict(os.environ, **dict(kv.split("=", 1) for kv in a.launcher_env), **extra_env)
    r = C.run_logged(argv, work / "logs" / f"{tag}.log", env=env, cwd=str(work), marker="launcher train")
    out = {"tool": "launcher", "tag": tag, "rc": r["rc"], "wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"]}
    m = run_dir / "metrics.jsonl"
    if not m.exists():
        out["error"] = C.tail(work / "logs" / f"{tag}.log", 5)
        return out
    recs = [json.loads(x) for x in m.read_text().splitlines() if x.strip()]
    steps = [{"step": x["step"], "step_time_s": x["step_time_s"], "tokens": x["tokens"], "loss": x["loss"]}
             for x in recs if x.get("kind") == "train"]
    out.update(steady(steps, a.warmup))
    out["cache"] = str(next((run_dir / "cache").glob("data-*/")))
    out["ds_config"] = str(run_dir / "ds_config.json")
    return out


def hf_auto_config(work: Path, stage: int) -> str:
    """The DeepSpeed config a Trainer user writes: the ZeRO-2 / ZeRO-3 examples of transformers'
    DeepSpeed guide without their CPU offload, every size "auto" (the Trainer fills the buckets
    from hidden_size: reduce hidden^2, prefetch 0.9 hidden^2, persistence 10 hidden) or the guide's
    number (allgather 2e8; ZeRO-3's live parameters and reuse distance 1e9, sub groups 1e9).
    One change: ``torch_adam`` (on CPU DeepSpeed would JIT-build its fused Adam; launcher's config
    asks for the same)."""
    zero = ({"stage": 2, "allgather_partitions": True, "allgather_bucket_size": 2e8, "overlap_comm": True,
             "reduce_scatter": True, "reduce_bucket_size": "auto", "contiguous_gradients": True} if stage == 2 else
            {"stage": 3, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 1e9,
             "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
             "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
             "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True})
    cfg = {"bf16": {"enabled": "auto"},
           "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                     "weight_decay": "auto", "torch_adam": True}},
           "zero_optimization": zero, "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
           "steps_per_print": 2000, "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
           "wall_clock_breakdown": False}
    path = work / f"hf-auto-zero{stage}.json"
    path.write_text(json.dumps(cfg, indent=2))
    return str(path)


def run_trainer(work: Path, case: str, tag: str, rows: str, ds_config: str, a) -> dict:
    out_dir = work / "runs" / tag
    shutil.rmtree(out_dir, ignore_errors=True)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
            str(T.TRAINER_SCRIPT), "--model", str(work / "model"), "--data", str(work / "data.jsonl"),
            "--rows", rows, "--same-batches", "--out", str(out_dir), "--strategy", "zero", "--ds-config", ds_config,
            "--dist-setup", "configured", "--micro-batch", "2", "--grad-accum", "2", "--lr", "1e-3",
            "--max-steps", str(a.warmup + a.steps), "--max-seq-len", "512"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    r = C.run_logged(argv, work / "logs" / f"{tag}.log", env=env, cwd=str(work), marker=T.TRAINER_SCRIPT.name)
    out = {"tool": "trainer", "tag": tag, "rc": r["rc"], "wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"]}
    by_step: dict[int, dict] = {}
    for p in sorted(out_dir.glob("rank*.jsonl")):
        for x in (json.loads(y) for y in p.read_text().splitlines() if y.strip()):
            if x.get("kind") != "step":
                continue
            s = by_step.setdefault(x["step"], {"step": x["step"], "tokens": 0})
            s["tokens"] += x["tokens"]
            if p.stem == "rank0":
                s.update(step_time_s=x["step_time_s"], loss=x.get("loss"))
    steps = [by_step[k] for k in sorted(by_step) if "step_time_s" in by_step[k]]
    if not steps:
        out["error"] = C.tail(work / "logs" / f"{tag}.log", 5)
        return out
    out.update(steady(steps, a.warmup))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    ap.add_argument("--launcher-env", nargs="*", default=[], metavar="K=V",
                    help="environment for the launcher runs only (an ablation)")
    ap.add_argument("--trainer-config", choices=["hf-auto", "launcher"], default="hf-auto",
                    help="the Trainer's DeepSpeed config: hf-auto, what a Trainer user writes (transformers' guide, "
                         "sizes \"auto\"), or launcher, the very ds_config.json launcher wrote for the run (the "
                         "engine loop alone compared)")
    ap.add_argument("--ablate", nargs="+", default=None, metavar="VARIANT",
                    help="launcher only, no Trainer: per round the default, then each variant (off:NAME, "
                    "env:K=V, set:key=value); the ratio is variant / default of the same round")
    ap.add_argument("--workdir", default="/tmp/launcher-bench-vs-trainer")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    work = Path(a.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    info = C.machine_info()
    print(f"machine: {info['nproc']} cpus, {info['cpu']}, {info['mem_total_gib']} GiB; load {info['load_avg']}; "
          f"{info['versions']}", flush=True)
    build_model(work / "model")
    build_data(work / "data.jsonl")
    (work / "job.yaml").write_text(job_yaml(work, a))
    t_all = time.time()
    if a.ablate:
        return ablate(work, a, info, t_all)
    results: dict[str, list[dict]] = {c: [] for c in a.cases}
    for i in range(a.rounds):
        for case in a.cases:
            lr = run_launcher(work, case, f"{case}-launcher-{i}", a)
            ds = lr.get("ds_config") if a.trainer_config == "launcher" else hf_auto_config(work, CASES[case][0])
            tr = (run_trainer(work, case, f"{case}-trainer-{i}", lr["cache"], ds, a)
                  if lr.get("cache") else {"error": "no launcher rows to train on"})
            ratio = (lr["useful_tok_s"] / tr["useful_tok_s"]) if lr.get("useful_tok_s") and tr.get("useful_tok_s") else None
            results[case].append({"launcher": lr, "trainer": tr, "ratio": ratio})
            print(f"  round {i} {case}: launcher {C.fmt(lr.get('useful_tok_s'), 0)} tok/s "
                  f"({lr.get('tokens_per_step')} tok/step), Trainer {C.fmt(tr.get('useful_tok_s'), 0)} tok/s "
                  f"({tr.get('tokens_per_step')} tok/step), ratio {C.fmt(ratio)}"
                  + "".join(f"; {k} error: {x['error']}" for k, x in (("launcher", lr), ("trainer", tr)) if x.get("error")),
                  flush=True)
    summary = {}
    print("\n| case | launcher tok/s (rounds) | Trainer tok/s (rounds) | launcher / Trainer per round | median |")
    print("|---|---|---|---|---|")
    for case, rs in results.items():
        ratios = [r["ratio"] for r in rs if r["ratio"]]
        summary[case] = {"median_ratio": C.median(ratios), "ratios": ratios}
        print(f"| {case} | {' / '.join(C.fmt(r['launcher'].get('useful_tok_s'), 0) for r in rs)} | "
              f"{' / '.join(C.fmt(r['trainer'].get('useful_tok_s'), 0) for r in rs)} | "
              f"{' / '.join(C.fmt(x) for x in ratios)} | **{C.fmt(C.median(ratios))}** |")
    return save(work / "vs_trainer.json", a, info, summary, results, t_all)


def ablate(work: Path, a, info: dict, t_all: float) -> int:
    """Each variant against the default launcher of the same round (alternating), per case."""
    variants = ["default", *a.ablate]
    res: dict[str, dict[str, list[dict]]] = {c: {v: [] for v in variants} for c in a.cases}
    for i in range(a.rounds):
        for case in a.cases:
            order = variants if i % 2 == 0 else [variants[0], *reversed(variants[1:])]
            for v in order:
                tag = f"{case}-{v.replace(':', '-').replace('=', '-').replace('+', '-')}-{i}"
                r = run_launcher(work, case, tag, a, v)
                res[case][v].append(r)
                print(f"  round {i} {case} {v}: {C.fmt(r.get('useful_tok_s'), 0)} tok/s"
                      + (f"; error: {r['error']}" if r.get("error") else ""), flush=True)
    summary: dict = {}
    print("\n| case | variant | tok/s (rounds) | / default, per round | median | cost of the mechanism |")
    print("|---|---|---|---|---|---|")
    for case in a.cases:
        base = res[case]["default"]
        summary[case] = {}
        for v in variants:
            rs = res[case][v]
            ratios = [x.get("useful_tok_s") / b.get("useful_tok_s") for x, b in zip(rs, base)
                      if x.get("useful_tok_s") and b.get("useful_tok_s")]
            med = C.median(ratios) if ratios else None
            summary[case][v] = {"tok_s": [x.get("useful_tok_s") for x in rs], "ratios": ratios, "median_ratio": med}
            cost = f"{(1 - 1 / med) * 100:+.1f}%" if med and v.startswith("off:") else ""
            print(f"| {case} | {v} | {' / '.join(C.fmt(x.get('useful_tok_s'), 0) for x in rs)} | "
                  f"{' / '.join(C.fmt(x) for x in ratios)} | **{C.fmt(med)}** | {cost} |")
    return save(work / "vs_trainer_ablate.json", a, info, summary, res, t_all)


def save(default: Path, a, info: dict, summary: dict, results: dict, t_all: float) -> int:
    """Every figure into ``--json`` (or ``default``), and the closing line."""
    out = Path(a.json) if a.json else default
    C.write_json(out, {"machine": info, "args": vars(a), "summary": summary, "results": results,
                       "total_wall_s": time.time() - t_all, "load_after": C.load_avg()})
    print(f"\ntotal {time.time() - t_all:.0f} s; load after {C.load_avg()}; results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
