"""Render the example batch scripts in slurm/examples/ from the one template
(launcher/templates/job.sbatch.j2), through `launcher slurm --dry-run`, as users would.

    python slurm/render_examples.py          # (re)write slurm/examples/*.sbatch
    python slurm/render_examples.py --check  # exit 1 when a file differs from a fresh render

Each example is the embedded default job with the overrides below, for a GPU cluster, with the
run directory on a shared file system (/shared/runs/NAME) and the nodes' python3. The scripts
are for reading and copying: `launcher slurm JOB` renders the same for your own job.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = {
    "one-node-8-gpus-zero3-full": [
        "cluster.nodes=1", "cluster.gpus_per_node=8", "parallel.strategy=zero", "parallel.zero_stage=3",
        "train.method=full", "train.global_batch_size=64", "cluster.slurm.time=\"04:00:00\""],
    "two-nodes-16-gpus-fsdp2-lora": [
        "cluster.nodes=2", "cluster.gpus_per_node=8", "parallel.strategy=fsdp", "train.method=lora",
        "train.global_batch_size=128", "train.micro_batch_size=4", "cluster.slurm.partition=gpu",
        "cluster.slurm.time=\"12:00:00\""],
}


def render(name: str, overrides: list[str]) -> str:
    out = subprocess.run([sys.executable, "-m", "launcher", "slurm", "--dry-run", "--run-dir", f"/shared/runs/{name}",
                          "--python", "python3", *overrides], capture_output=True, text=True, cwd=HERE)
    if out.returncode != 0:
        raise SystemExit(f"{name}: launcher slurm failed: {out.stderr.strip()}")
    return out.stdout


def main(check: bool) -> int:
    stale = []
    for name, overrides in EXAMPLES.items():
        path = HERE / "examples" / f"{name}.sbatch"
        text = render(name, overrides)
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run python slurm/render_examples.py): " + ", ".join(stale), file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(check="--check" in sys.argv[1:]))
