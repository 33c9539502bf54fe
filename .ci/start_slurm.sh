#!/usr/bin/env bash
# A single-node SLURM cluster with two fake GPUs, for tests/workflow/test_slurm.py.
# Run as root. Idempotent: installs slurm-wlm and munge if missing, (re)writes
# /etc/slurm/slurm.conf and gres.conf, starts munged, slurmctld and slurmd
# unless the ones it started before are still alive, records their PIDs in
# $EMLAB_SLURM_DIR/pids (stop them with .ci/stop_slurm.sh) and waits until the
# node is idle. Logs and state live under $EMLAB_SLURM_DIR (/tmp/emlab-slurm).
# See docs/cluster.md for why each setting is what it is.
set -euo pipefail

DIR=${EMLAB_SLURM_DIR:-/tmp/emlab-slurm}
PIDS=$DIR/pids
WAIT_S=${EMLAB_SLURM_WAIT_S:-120}

mkdir -p "$DIR"

log() { echo "start_slurm: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

# name pid: the process is alive and is that daemon (not a reused PID).
alive() { [ -n "${2:-}" ] && [ "$(cat "/proc/$2/comm" 2>/dev/null)" = "$1" ]; }

node_idle() {
    # State of our node, e.g. "idle", "mixed", "alloc", "down*", "drain".
    local state
    state=$(sinfo -h -N -n "$HOST" -o '%t' 2>/dev/null | head -n1) || return 1
    case "$state" in idle | mix | mixed | alloc | allocated) return 0 ;; *) return 1 ;; esac
}

# --- packages ---------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v sinfo >/dev/null; then
    command -v apt-get >/dev/null || die "slurm-wlm/munge missing and no apt-get to install them"
    log "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$DIR/apt.log" 2>&1 || { cat "$DIR/apt.log" >&2; die "apt-get update failed"; }
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >>"$DIR/apt.log" 2>&1 \
        || { tail -n 50 "$DIR/apt.log" >&2; die "apt-get install slurm-wlm munge failed"; }
fi

HOST=$(hostname -s)

# --- already running? -------------------------------------------------------
if [ -f "$PIDS" ]; then
    all_alive=1
    while read -r name pid; do
        alive "$name" "$pid" || all_alive=0
    done <"$PIDS"
    if [ "$all_alive" = 1 ] && node_idle; then
        log "already running ($(tr '\n' ' ' <"$PIDS"))"
        exit 0
    fi
    log "stale or partial cluster from an earlier start: stopping it"
    "$(dirname "$0")/stop_slurm.sh" || true
fi

# A controller this script did not start (or lost track of) would fight ours
# for the ports: refuse rather than start a second one.
if scontrol ping 2>/dev/null | grep -q 'is UP'; then
    die "a slurmctld not started by this script is already running; stop it first"
fi

# --- configuration -------------------------------------------------------------
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
REAL_MB=$((MEM_MB * 85 / 100))  # below the real memory, else the node drains
mkdir -p /etc/slurm "$DIR/state" "$DIR/spool"

cat >/etc/slurm/slurm.conf <<EOF
# Written by emlab .ci/start_slurm.sh: single-node test cluster, fake GPUs.
ClusterName=emlab
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
SlurmdTimeout=300
InactiveLimit=0
KillWait=10
Waittime=0
GresTypes=gpu
NodeName=$HOST CPUs=$CPUS RealMemory=$REAL_MB Gres=gpu:fake:2 State=UNKNOWN
PartitionName=main Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

cat >/etc/slurm/gres.conf <<EOF
# Written by emlab .ci/start_slurm.sh: two fake GPUs backed by tty devices.
NodeName=$HOST Name=gpu Type=fake File=/dev/tty[0-1]
EOF

# --- munged -----------------------------------------------------------------
id munge >/dev/null 2>&1 || die "user munge missing (the munge package creates it)"
if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then mungekey --create --force; else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge

: >"$PIDS"
rm -f "$DIR"/{munged,slurmctld,slurmd}.{log,out}  # logs of this cluster only
# On any failure from here on, stop what this run started.
trap 'rc=$?; [ "$rc" = 0 ] || "$(dirname "$0")/stop_slurm.sh"' EXIT
start() {  # name, command...: run in the foreground of a background job; $! is the daemon itself
    local name=$1
    shift
    "$@" >>"$DIR/$name.out" 2>&1 </dev/null &
    echo "$name $!" >>"$PIDS"
    log "started $name (pid $!)"
}

if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "using the munged that is already running (not ours: left running on stop)"
else
    # setpriv execs munged, so $! is munged's own PID. --force: a stale socket
    # from an earlier, killed munged must not stop it.
    start munged setpriv --reuid=munge --regid=munge --init-groups \
        /usr/sbin/munged --foreground --force --log-file="$DIR/munged.log"
    for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.2; done
    munge -n | unmunge >/dev/null 2>&1 || die "munged does not answer; see $DIR/munged.out"
fi

start slurmctld slurmctld -D -c  # -c: no jobs carried over from an earlier cluster
ctld=$!
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.3; done
# slurmctld's helper child; it can outlive a slurmctld that dies abnormally.
for pid in $(pgrep -P "$ctld" -x slurmscriptd || true); do echo "slurmscriptd $pid" >>"$PIDS"; done
start slurmd slurmd -D

# --- wait for the node ------------------------------------------------------
for ((i = 0; i < WAIT_S * 2; i++)); do
    if node_idle; then
        log "node $HOST is up: $(sinfo -h -N -o '%N %t cpus=%c mem=%m gres=%G' | head -n1)"
        exit 0
    fi
    while read -r name pid; do
        alive "$name" "$pid" || { tail -n 30 "$DIR/$name.log" "$DIR/$name.out" >&2 2>/dev/null || true; die "$name (pid $pid) exited"; }
    done <"$PIDS"
    # A node that came up down or drained (e.g. after an earlier crash) is resumed once.
    if [ "$i" = 20 ]; then scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true; fi
    sleep 0.5
done
sinfo -N -l >&2 || true
tail -n 30 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
die "node $HOST not idle after ${WAIT_S}s"
