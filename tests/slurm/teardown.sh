#!/usr/bin/env bash
# tests/slurm/teardown.sh - stop only the daemons that setup.sh started, by their PID files in $SLURM_CI_DIR/run
# (tests/conftest.py runs it at the end of a pytest session that brought the cluster up).
# munged / mariadbd are stopped only if setup.sh started them (it then left munged.pid / mariadbd.pid).
set -uo pipefail
DIR=${SLURM_CI_DIR:-/var/lib/slurm-ci}
RUN=$DIR/run

alive() { local p; [ -s "$1" ] && p=$(cat "$1") && [ -r "/proc/$p/comm" ] && [[ $(cat "/proc/$p/comm") == "$2"* ]]; }
stop_pidfiles() { # stop_pidfiles COMM FILE... : SIGTERM each PID still running COMM, wait for all, SIGKILL leftovers
  local c=$1 f p i pids=(); shift
  for f in "$@"; do
    if alive "$f" "$c"; then p=$(cat "$f"); echo "teardown: stopping $c (pid $p)"; kill -TERM "$p" 2>/dev/null && pids+=("$p"); fi
  done
  for i in $(seq 1 100); do
    local left=0; for p in "${pids[@]}"; do [ -d "/proc/$p" ] && left=1; done
    [ $left = 0 ] && break; sleep 0.1
  done
  for p in "${pids[@]}"; do
    if [ -d "/proc/$p" ] && [[ $(cat "/proc/$p/comm" 2>/dev/null) == "$c"* ]]; then
      echo "teardown: $c (pid $p) ignored SIGTERM for 10 s, sending SIGKILL"; kill -KILL "$p" 2>/dev/null || true
    fi
  done
  rm -f "$@"
}

[ -d "$RUN" ] || { echo "teardown: nothing to do ($RUN absent)"; exit 0; }

# cancel the jobs of this cluster first, so that no slurmstepd outlives its slurmd
if alive "$RUN/slurmctld.pid" slurmctld; then
  jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    echo "teardown: cancelling jobs $jobs"; scancel $jobs 2>/dev/null || true
    for i in $(seq 1 100); do [ -z "$(squeue -h -t R,CG,PD -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi
shopt -s nullglob
# each daemon takes ~2 s to exit on SIGTERM, so stop independent ones in parallel
stop_pidfiles slurmd "$RUN"/slurmd-*.pid & stop_pidfiles slurmctld "$RUN/slurmctld.pid" & wait
stop_pidfiles slurmdbd "$RUN/slurmdbd.pid"
# mariadbd.pid / munged.pid exist only if setup.sh started those daemons itself
stop_pidfiles mariadbd "$RUN/mariadbd.pid" & stop_pidfiles munged "$RUN/munged.pid" & wait

if grep -q '# slurm-ci$' /etc/hosts; then  # drop the n1..nN line setup.sh added (rewrite in place)
  hosts=$(grep -v '# slurm-ci$' /etc/hosts); printf '%s\n' "$hosts" > /etc/hosts
fi
echo "teardown: done"
