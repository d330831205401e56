#!/usr/bin/env bash
# Ranks forked from launcher.forkrun against torchrun's own start (cluster.start_method fork|spawn):
# the same `launcher run` of the embedded default both ways, alternating, ROUNDS rounds (default 3);
# for each run the CPU seconds of the whole launch (/usr/bin/time: the command and the children it
# waited for), its wall time and the median step (metrics.jsonl, the first step left out).
#   bash bench/start_method.sh [ROUNDS]    # run it alone on the machine; the table is in RESULTS.md
set -euo pipefail
ROUNDS=${1:-3}
WORK=${WORK:-/tmp/launcher-bench-start-method}
mkdir -p "$WORK"
export LAUNCHER_CACHE="$WORK/cache"
COMMON="data.num_samples=400 train.eval_accuracy_samples=0 train.global_batch_size=8 train.micro_batch_size=2 cluster.device=cpu"
TWO="$COMMON cluster.cpu_procs_per_node=2 parallel.strategy=zero parallel.zero_stage=2"
ONE="$COMMON cluster.cpu_procs_per_node=1 parallel.strategy=zero parallel.zero_stage=0"
for case in "2-ranks-6-steps:$TWO train.max_steps=6" \
            "2-ranks-60-steps:$TWO train.max_steps=60 train.eval_every_steps=null" \
            "1-rank-60-steps:$ONE train.max_steps=60 train.eval_every_steps=null"; do
  name=${case%%:*}; args=${case#*:}
  for round in $(seq "$ROUNDS"); do
    for m in fork spawn; do
      d="$WORK/$name-$m-$round"; rm -rf "$d"
      # shellcheck disable=SC2086
      /usr/bin/time -f "%e %U %S" -o "$WORK/time.txt" python3 -m launcher run --run-dir "$d" $args \
        "cluster.start_method=$m" > "$d.log" 2>&1
      read -r wall user sys < "$WORK/time.txt"
      python3 - "$d" "$name" "$m" "$round" "$wall" "$user" "$sys" <<'PY'
import json, statistics, sys
d, name, m, rnd, wall, user, sys_ = sys.argv[1:]
steps = [r["step_time_s"] for r in map(json.loads, open(f"{d}/metrics.jsonl")) if r.get("kind") == "train"][1:]
print(f"{name} {m} round {rnd}: wall {float(wall):.2f} s, cpu {float(user) + float(sys_):.2f} s, "
      f"median step {statistics.median(steps):.4f} s")
PY
    done
  done
done
