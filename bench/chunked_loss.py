"""Peak memory of one loss step (forward + backward of the cross-entropy over the logits), whole
tensor against launcher's chunked loss, at vocab 32k and 1024 tokens.

    python bench/chunked_loss.py [--rounds 5]

Each variant runs in a fresh process (so one's freed memory cannot hide the other's peak), with
the malloc setting launcher gives CPU ranks (MALLOC_MMAP_THRESHOLD_), and reports the peak
anonymous memory above the process's memory with the logits already made (sampled every 1 ms by
a thread, as launcher's MemoryMonitor does every 20 ms). Rounds alternate the variants; the
figure is the median over rounds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, threading, time, torch, torch.nn.functional as F
from launcher.train.loss import token_loss_sum
from launcher.train.memory import read_status
variant, dtype = sys.argv[1], getattr(torch, sys.argv[2])
torch.manual_seed(0)
logits = torch.randn(1, 1024, 32000, dtype=dtype).requires_grad_(True)
labels = torch.randint(0, 32000, (1, 1024))
peak = [0]; stop = threading.Event()
def watch():
    while not stop.is_set():
        peak[0] = max(peak[0], read_status()["RssAnon"]); time.sleep(0.001)
base = read_status()["RssAnon"]; t = threading.Thread(target=watch); t.start()
t0 = time.perf_counter()
if variant == "whole":  # launcher's loss before the change: the whole tensor upcast to fp32
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, 32000), labels[:, 1:].reshape(-1), reduction="sum")
else:
    loss = token_loss_sum(logits, labels)
loss.backward()
dt = time.perf_counter() - t0
stop.set(); t.join()
print(json.dumps({"peak_mib": (max(peak[0], read_status()["RssAnon"]) - base) / 2**20, "s": dt, "loss": float(loss)}))
"""


def run(variant: str, dtype: str) -> dict:
    import os

    from launcher.render.torchrun import MALLOC_MMAP_THRESHOLD

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MALLOC_MMAP_THRESHOLD)}
    out = subprocess.run([sys.executable, "-c", CHILD, variant, dtype], capture_output=True, text=True, check=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    logits_mib = {"float32": 1024 * 32000 * 4 / 2**20, "bfloat16": 1024 * 32000 * 2 / 2**20}
    print("| logits dtype | logits MiB | variant | peak above the logits, MiB (median) | time s (median) | loss |")
    print("|---|---|---|---|---|---|")
    for dtype in ("float32", "bfloat16"):
        res: dict[str, list[dict]] = {"whole": [], "chunked": []}
        for _ in range(a.rounds):
            for v in res:
                res[v].append(run(v, dtype))
        for v, rs in res.items():
            print(f"| {dtype} | {logits_mib[dtype]:.0f} | {v} | {statistics.median(r['peak_mib'] for r in rs):.0f} "
                  f"| {statistics.median(r['s'] for r in rs):.3f} | {rs[0]['loss']:.1f} |")
        ratio = statistics.median(c["peak_mib"] / w["peak_mib"] for c, w in zip(res["chunked"], res["whole"]))
        print(f"| {dtype} | | chunked / whole | {ratio:.2f} | | |")


if __name__ == "__main__":
    main()
