"""CLI start-up time: launcher's everyday commands against accelerate's.

Each command runs ``--repeats`` times (default 7), the commands interleaved round by round
(a b c d e, a b c d e, ...) so that other load on the machine hits them alike; the median wall
time of each is reported, and the ratio of each launcher command to ``accelerate --help`` and
to ``accelerate launch --help``.

    python bench/startup.py            # ~1-2 min on 2 cores
    python bench/startup.py --repeats 15 --json /tmp/startup.json

Commands (run in a temp folder where ``launcher init`` wrote the shipped starter job.yaml):

* ``launcher --help``
* ``launcher plan job.yaml``  (the starter job from ``launcher init``)
* ``launcher plan``           (the embedded default job)
* ``launcher run --dry-run``  (the embedded default; prints the launch script, starts nothing)
* ``accelerate --help``, ``accelerate launch --help``
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

LAUNCHER = [
    ("launcher --help", ["launcher", "--help"]),
    ("launcher plan job.yaml", ["launcher", "plan", "job.yaml"]),
    ("launcher plan", ["launcher", "plan"]),
    ("launcher run --dry-run", ["launcher", "run", "--dry-run"]),
]
ACCELERATE = [
    ("accelerate --help", ["accelerate", "--help"]),
    ("accelerate launch --help", ["accelerate", "launch", "--help"]),
]


def time_once(argv, cwd) -> float:
    t = time.perf_counter()
    p = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {p.returncode}: {p.stderr.decode(errors='replace')[-500:]}")
    return dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    for tool in ("launcher", "accelerate"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool}: not on PATH (pip install -e '.[bench]')")
    info = C.machine_info(import_versions=False)
    with tempfile.TemporaryDirectory(prefix="launcher-startup-") as tmp:
        subprocess.run(["launcher", "init"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        cmds = LAUNCHER + ACCELERATE
        for _, argv_ in cmds:  # one untimed warm-up each: page cache, .pyc files
            time_once(argv_, tmp)
        times: dict[str, list[float]] = {name: [] for name, _ in cmds}
        load_before = C.load_avg()
        for _ in range(a.repeats):
            for name, argv_ in cmds:
                times[name].append(time_once(argv_, tmp))
        load_after = C.load_avg()
    med = {k: C.median(v) for k, v in times.items()}
    print(f"machine: {info['nproc']} cpus, {info['cpu']}, {info['mem_total_gib']} GiB; "
          f"load {load_before} -> {load_after}; {info['versions']}")
    print(f"{a.repeats} runs each, interleaved; median wall time\n")
    print("| command | median s | min s | max s | / accelerate --help | / accelerate launch --help |")
    print("|---|---|---|---|---|---|")
    ratios = {}
    for name, _ in cmds:
        r1 = med[name] / med["accelerate --help"]
        r2 = med[name] / med["accelerate launch --help"]
        ratios[name] = {"vs_accelerate_help": r1, "vs_accelerate_launch_help": r2}
        print(f"| `{name}` | {med[name]:.3f} | {min(times[name]):.3f} | {max(times[name]):.3f} | {r1:.2f} | {r2:.2f} |")
    if a.json:
        C.write_json(Path(a.json), {"machine": info, "load_before": load_before, "load_after": load_after,
                                    "repeats": a.repeats, "times_s": times, "median_s": med, "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
