"""Helpers shared by the benchmarks: machine facts, process-tree memory polling, statistics,
and the benchmark's own model and data (built locally with random weights; nothing downloaded).

Imported by scripts in this folder (``python bench/x.py`` puts bench/ on sys.path). torch and
transformers are imported inside functions only.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Optional

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

# The throughput benchmark's model: Llama-shaped, bigger than the demo's (hidden 128, 2 layers) so
# that compute, not framework overhead alone, is measured; random weights from a fixed seed.
BENCH_LLAMA = dict(
    hidden_size=128,
    intermediate_size=344,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)


# --------------------------------------------------------------------------- machine


def machine_info(import_versions: bool = True) -> dict:
    """Facts recorded beside every figure. ``import_versions=False`` reads versions from the
    package metadata instead of importing the packages (for start-up timings)."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions = {}
    if not import_versions:
        versions = module_versions_cheap()
    for mod in ("torch", "transformers", "accelerate", "deepspeed", "peft") if import_versions else ():
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - reported as missing
            versions[mod] = None
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_total_gib": mem_gib,
        "python": platform.python_version(),
        "load_avg": load_avg(),
        "versions": versions,
    }


def load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def module_versions_cheap() -> dict:
    """Versions from package metadata (no import: cheap, no side effects)."""
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "accelerate", "deepspeed", "peft"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# --------------------------------------------------------------------------- statistics


def median(xs: Iterable[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(xs) if xs else None


def fmt(x, nd=3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{nd}g}"
    return str(x)


# --------------------------------------------------------------------------- peak RSS per rank


def _status_kib(pid: int, key: str) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
            except OSError:
                continue
    except OSError:
        pass
    return out


class PeakRSS:
    """Polls the process tree under ``root_pid`` and keeps, per process whose command line
    contains ``marker`` (and none of ``exclude``: the torchrun agent itself names the script; under
    launcher.forkrun, the processes it named rank<R>), the largest ``VmHWM`` (the kernel's own peak
    resident set) seen.
    The same method for every tool measured, so the figures compare."""

    def __init__(self, root_pid: int, marker: str, interval: float = 0.25,
                 exclude: tuple = ("torch.distributed.run", "torchrun")):
        self.root = root_pid
        self.marker = marker
        self.exclude = exclude
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def _loop(self):
        while not self._stop.is_set():
            stack, seen = [(self.root, False)], set()
            while stack:
                p, parent_is_rank = stack.pop()
                if p in seen:
                    continue
                seen.add(p)
                cmd = _cmdline(p)
                if "launcher.forkrun" in cmd:  # the agent and the ranks it forked share its command line;
                    is_rank = self.marker in cmd and _comm(p).startswith("rank")  # a forked rank is named rank<R>
                else:
                    is_rank = self.marker in cmd and not any(x in cmd for x in self.exclude)
                # a rank's own short-lived forks (subprocess before exec) carry its command line
                # and a copy of its peak: they are not ranks
                if is_rank and not parent_is_rank:
                    hwm = _status_kib(p, "VmHWM")
                    if hwm:
                        self.peaks[p] = max(self.peaks.get(p, 0), hwm)
                stack += [(c, is_rank or parent_is_rank) for c in _children(p)]
            self._stop.wait(self.interval)

    def per_rank_mib(self) -> list[float]:
        return sorted((round(v / 1024, 1) for v in self.peaks.values()), reverse=True)


# --------------------------------------------------------------------------- model and data


def build_bench_model(out_dir: Path, tokenizer_dir: Path, config: Optional[dict] = None, seed: int = 0) -> Path:
    """A Llama-shaped model with random weights (fp32, safetensors) and the demo's character
    tokenizer copied beside it, so the folder loads as model and tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and (out_dir / "model.safetensors").exists():
        return out_dir
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **(config or BENCH_LLAMA))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).to(torch.float32)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    os.replace(tmp, out_dir)
    return out_dir


def build_varlen_data(path: Path, n: int = 3000, seed: int = 0, median_chars: int = 30,
                      max_chars: int = 120) -> Path:
    """Instruction rows ``rev <s>=`` -> reversed ``s`` with widely varying lengths: ``len(s)``
    is log-normal (median ``median_chars``), clipped to [4, max_chars]. With the character
    tokenizer a row is ``2 len(s) + 7`` tokens: 15 to 247 for the defaults (median about 67)."""
    path = Path(path)
    if path.exists():
        return path
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    lines = []
    for _ in range(n):
        k = int(min(max_chars, max(4, rng.lognormvariate(math.log(median_chars), 0.8))))
        s = "".join(rng.choice(letters) for _ in range(k))
        lines.append(json.dumps({"prompt": f"rev {s}=", "response": s[::-1]}))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- subprocess


def run_logged(argv: list[str], log: Path, env: Optional[dict] = None, cwd: Optional[str] = None,
               marker: Optional[str] = None, timeout: float = 600) -> dict:
    """Run ``argv`` with output to ``log``; wall time, exit code and (with ``marker``) the peak
    RSS of each process in the tree whose command line contains it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "wb") as f:
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        watcher = PeakRSS(p.pid, marker) if marker else None
        if watcher:
            watcher.__enter__()
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            rc = p.wait()
        finally:
            if watcher:
                watcher.__exit__(None, None, None)
    return {"rc": rc, "t0": t0, "wall_s": time.time() - t0,
            "peak_rss_mib": watcher.per_rank_mib() if watcher else None}


# what a throughput run turns off: eval, the accuracy check and checkpoints are not training
NO_EVAL = ["train.eval_every_steps=null", "train.eval_accuracy_samples=0", "train.save_every_steps=null"]


def launcher_run(work: Path, tag: str, overrides: list[str]) -> tuple[dict, list[dict]]:
    """`launcher run` of the embedded default (CPU, no eval) into ``work/tag``: the run's
    outcome (rc, wall time, peak RSS per rank, error tail) and its metrics.jsonl records."""
    run_dir = work / tag
    shutil.rmtree(run_dir, ignore_errors=True)
    argv = ["launcher", "run", "--run-dir", str(run_dir), "cluster.device=cpu", *NO_EVAL, *overrides]
    r = run_logged(argv, work / f"{tag}.log", cwd=str(work), marker="launcher train")
    m = run_dir / "metrics.jsonl"
    recs = [json.loads(x) for x in m.read_text().splitlines() if x.strip()] if m.exists() else []
    if not recs:
        r["error"] = tail(work / f"{tag}.log", 5)
    return r, recs


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def write_json(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def python() -> str:
    return sys.executable
