#!/usr/bin/env bash
# tests/slurm/setup.sh - bring up a real Slurm cluster on this one machine (Debian 12, run as root) for
# launcher's Slurm tests (tests/conftest.py runs it once per pytest session, teardown.sh at the end).
# It installs Debian's Slurm 22.05 packages if missing, then starts munged, MariaDB + slurmdbd (so that
# `sacct` works: `launcher status` falls back to it once a job has left slurmctld), slurmctld and N slurmd
# daemons (one per simulated node, distinct ports; Debian's build allows several slurmd per host). Each
# slurmd runs in its own UTS namespace so that `hostname` in a job prints n1, n2... (all resolve to 127.0.0.1,
# so a c10d rendezvous on the head node's name works over loopback).
# Idempotent: if the cluster is already up with the same config it only checks it; otherwise it stops the
# daemons it started before (by PID file) and starts a fresh cluster (job state and accounting DB wiped).
# Adapted from the slurm-ci reference recipe; changes: MinJobAge is short (knob below) so that tests see
# jobs leave slurmctld and reach the sacct fallback, and a failed package install exits 3 (tests skip
# on 3 outside CI, and fail on anything else).
#
# Env knobs (defaults in brackets):
#   SLURM_CI_DIR [/var/lib/slurm-ci]  state, spool, logs, PID files
#   SLURM_CI_NODES [2]                number of simulated nodes n1..nN
#   SLURM_CI_CPUS [nproc]             CPUs declared per node (may exceed real cores; jobs share the cores)
#   SLURM_CI_MEM [4000]               RealMemory (MB) declared per node
#   SLURM_CI_ACCOUNTING [1]           1: slurmdbd+MariaDB so `sacct` works; 0: no DB, `sacct -c` (jobcomp) only
#   SLURM_CI_UTS [1]                  1: each slurmd in its own UTS namespace (hostname nX, added to /etc/hosts)
#   SLURM_CI_SMOKE [1]                1: run an N-node smoke job (srun on every node) at the end
#   SLURM_CI_MIN_JOB_AGE [10]         seconds a finished job stays in slurmctld (Slurm's default: 300)
set -euo pipefail

DIR=${SLURM_CI_DIR:-/var/lib/slurm-ci}
NODES=${SLURM_CI_NODES:-2}
CPUS=${SLURM_CI_CPUS:-$(nproc)}
MEM=${SLURM_CI_MEM:-4000}
ACCT=${SLURM_CI_ACCOUNTING:-1}
UTS=${SLURM_CI_UTS:-1}
SMOKE=${SLURM_CI_SMOKE:-1}
MIN_JOB_AGE=${SLURM_CI_MIN_JOB_AGE:-10}
RUN=$DIR/run LOG=$DIR/log STATE=$DIR/state SPOOL=$DIR/spool
CTLD_PORT=6817 DBD_PORT=6819 NODE_PORT0=6821
HOST=$(hostname -s)
CONF=/etc/slurm/slurm.conf DBD_CONF=/etc/slurm/slurmdbd.conf
MYSQL_SOCK=/run/mysqld/mysqld.sock DB_NAME=slurm_ci_acct
T0=$(date +%s.%N)

log() { printf '[setup_slurm %6.1fs] %s\n' "$(awk "BEGIN{print $(date +%s.%N) - $T0}")" "$*"; }
die() { log "ERROR: $*"; for f in "$LOG"/*.log; do [ -f "$f" ] && { echo "--- tail $f"; tail -n 15 "$f"; }; done; exit 1; }
# alive PIDFILE COMM: true if the PID in PIDFILE runs a program whose name starts with COMM
alive() { local p; [ -s "$1" ] && p=$(cat "$1") && [ -r "/proc/$p/comm" ] && [[ $(cat "/proc/$p/comm") == "$2"* ]]; }
stop_pidfile() { # stop_pidfile FILE COMM : SIGTERM, wait, SIGKILL; only the PID recorded in FILE
  local f=$1 c=$2 p i
  if alive "$f" "$c"; then
    p=$(cat "$f"); kill -TERM "$p" 2>/dev/null || true
    for i in $(seq 1 100); do alive "$f" "$c" || break; [ -d "/proc/$p" ] || break; sleep 0.2; done
    if [ -d "/proc/$p" ] && [[ $(cat "/proc/$p/comm" 2>/dev/null) == "$c"* ]]; then kill -KILL "$p" 2>/dev/null || true; fi
  fi
  rm -f "$f"
}
wait_for() { # wait_for SECONDS CMD... : poll until CMD succeeds
  local t=$1 i; shift
  for i in $(seq 1 $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1
}

# ---------------------------------------------------------------- 1. packages
pkgs=(munge slurm-client slurmctld slurmd)
if [ "$ACCT" = 1 ]; then pkgs+=(slurmdbd slurm-wlm-mysql-plugin mariadb-server); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then  # keep package scripts from starting daemons themselves
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1
  fi
  apt_log="${TMPDIR:-/tmp}/setup_slurm_apt.log"
  # exit 3 (not 1) when the packages cannot be installed: the test fixture tells "no Slurm here" from "broken"
  { apt-get update -qq >"$apt_log" 2>&1 \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$apt_log" 2>&1; } \
    || { if [ $made_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; tail -n 30 "$apt_log"; log "ERROR: apt-get install failed"; exit 3; }
  if [ $made_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  log "packages installed ($(dpkg-query -W -f='${Version}' slurmctld))"
fi

# ---------------------------------------------------------------- 2. config
mkdir -p "$RUN" "$LOG" "$STATE" "$SPOOL" /etc/slurm
nodes_conf=""
for i in $(seq 1 "$NODES"); do
  if [ "$UTS" = 1 ]; then nh=n$i; else nh=$HOST; fi
  nodes_conf+="NodeName=n$i NodeHostname=$nh NodeAddr=127.0.0.1 Port=$((NODE_PORT0 + i - 1)) CPUs=$CPUS RealMemory=$MEM State=UNKNOWN"$'\n'
done
if [ "$ACCT" = 1 ]; then
  acct_conf="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT"
else
  acct_conf="AccountingStorageType=accounting_storage/none"
fi
new_conf=$(cat <<EOF
# generated by setup_slurm.sh
ClusterName=ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
SlurmctldPort=$CTLD_PORT
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5,sched_interval=5
MpiDefault=none
ReturnToService=2
KillWait=5
InactiveLimit=0
MinJobAge=$MIN_JOB_AGE
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.txt
$acct_conf
${nodes_conf}PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)

all_up() {
  alive "$RUN/slurmctld.pid" slurmctld || return 1
  if [ "$ACCT" = 1 ]; then alive "$RUN/slurmdbd.pid" slurmdbd || return 1; fi
  for i in $(seq 1 "$NODES"); do alive "$RUN/slurmd-n$i.pid" slurmd || return 1; done
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || return 1
  scontrol ping 2>/dev/null | grep -q 'is UP'
}
if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$new_conf" ] && all_up; then
  log "cluster already up with the same config; nothing to start"
  sinfo
  exit 0
fi

# stop whatever this script started before (PID files only), keep munged/mariadbd
for f in "$RUN"/slurmd-*.pid; do [ -e "$f" ] && stop_pidfile "$f" slurmd; done
stop_pidfile "$RUN/slurmctld.pid" slurmctld
stop_pidfile "$RUN/slurmdbd.pid" slurmdbd
printf '%s\n' "$new_conf" > "$CONF"
chmod 644 "$CONF"
rm -rf "${STATE:?}"/* "${SPOOL:?}"/* "$LOG/prev"        # fresh cluster: job ids restart at 1
mkdir -p "$LOG/prev"; for f in "$LOG"/*.log "$LOG"/*.txt "$LOG"/*.out; do [ -e "$f" ] && mv "$f" "$LOG/prev/"; done
for i in $(seq 1 "$NODES"); do mkdir -p "$SPOOL/n$i"; done

if [ "$UTS" = 1 ]; then  # make n1..nN resolvable (to 127.0.0.1) inside and outside the jobs
  want="127.0.0.1 $(for i in $(seq 1 "$NODES"); do printf 'n%s ' "$i"; done)# slurm-ci"
  if ! grep -qxF "$want" /etc/hosts; then
    hosts=$(grep -v '# slurm-ci$' /etc/hosts || true)
    printf '%s\n%s\n' "$hosts" "$want" > /etc/hosts   # rewrite in place (keeps inode/bind mounts)
  fi
fi

# ---------------------------------------------------------------- 3. munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "munged already answering; reusing it"
else
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 sh -c 'munge -n | unmunge' || die "munged did not start"
  cp /run/munge/munged.pid "$RUN/munged.pid"   # marks it as ours for teardown.sh
  log "munged started (pid $(cat "$RUN/munged.pid"))"
fi

# ---------------------------------------------------------------- 4. accounting DB (optional)
if [ "$ACCT" = 1 ]; then
  if mariadb-admin --socket=$MYSQL_SOCK ping >/dev/null 2>&1; then
    log "mariadb already answering; reusing it"
  else
    install -d -o mysql -g mysql -m 0755 /run/mysqld "$LOG/mysql"
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >"$LOG/mariadb-install.log" 2>&1
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --socket=$MYSQL_SOCK --pid-file=/run/mysqld/mysqld.pid \
      --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
      --log-error="$LOG/mysql/mariadb.err" </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadb-admin --socket=$MYSQL_SOCK ping || die "mariadbd did not start"
    cp /run/mysqld/mysqld.pid "$RUN/mariadbd.pid"
    log "mariadbd started (pid $(cat "$RUN/mariadbd.pid"))"
  fi
  mariadb --socket=$MYSQL_SOCK -e "DROP DATABASE IF EXISTS $DB_NAME"
  cat > "$DBD_CONF" <<EOF
# generated by setup_slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=$DB_NAME
EOF
  chmod 600 "$DBD_CONF"
  slurmdbd
  wait_for 30 sacctmgr -n -P list cluster format=cluster || die "slurmdbd did not answer"
  sacctmgr -i -Q add cluster ci >/dev/null
  log "slurmdbd started (pid $(cat "$RUN/slurmdbd.pid")), cluster 'ci' registered"
fi

# ---------------------------------------------------------------- 5. slurmctld + slurmd
slurmctld
wait_for 30 sh -c 'scontrol ping | grep -q "is UP"' || die "slurmctld did not come up"
log "slurmctld started (pid $(cat "$RUN/slurmctld.pid"))"
for i in $(seq 1 "$NODES"); do
  if [ "$UTS" = 1 ]; then
    unshare --uts /bin/sh -c "hostname n$i && exec slurmd -N n$i"
  else
    slurmd -N "n$i"
  fi
done
nodes_idle() { [ "$(sinfo -h -N -t idle -o '%N' | sort -u | wc -l)" -eq "$NODES" ]; }
wait_for 60 nodes_idle || { sinfo -N; die "nodes did not become idle"; }
log "slurmd x$NODES started; all nodes idle"
sinfo

# ---------------------------------------------------------------- 6. smoke test
if [ "$SMOKE" = 1 ]; then  # (polls scontrol itself: `sbatch --wait` polls slowly, up to ~10 s late)
  out=$LOG/smoke.out
  rm -f "$out"
  jid=$(sbatch --parsable -N "$NODES" -t 2 -J smoke -o "$out" \
    --wrap 'echo "nodes=$SLURM_JOB_NODELIST"; srun -N '"$NODES"' hostname | sort')
  job_state() { scontrol -o show job "$jid" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
  for i in $(seq 1 600); do st=$(job_state); case $st in PENDING|CONFIGURING|RUNNING|COMPLETING|"") sleep 0.2;; *) break;; esac; done
  [ "$st" = COMPLETED ] || { cat "$out" 2>/dev/null; die "smoke job $jid ended in state '$st'"; }
  log "smoke job ok: $(tr '\n' ' ' < "$out")"
fi
log "cluster ready (config $CONF, logs $LOG)"
