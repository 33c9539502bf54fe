#!/usr/bin/env bash
# Stop exactly the daemons .ci/start_slurm.sh started (PIDs in
# $EMLAB_SLURM_DIR/pids): slurmd, slurmctld, munged, in that order, then
# slurmctld's helper slurmscriptd if slurmctld left it behind. A PID that now
# belongs to another program is left alone. Safe to run twice.
set -uo pipefail

DIR=${EMLAB_SLURM_DIR:-/tmp/emlab-slurm}
PIDS=$DIR/pids
[ -f "$PIDS" ] || exit 0

stop() {  # name pid
    local name=$1 pid=$2
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || break; sleep 0.2; done
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
        echo "stop_slurm: $name (pid $pid) ignored SIGTERM for 20 s, killing" >&2
        kill -KILL "$pid" 2>/dev/null
    fi
    echo "stop_slurm: stopped $name (pid $pid)" >&2
}

pid_of() { awk -v n="$1" '$1 == n {print $2}' "$PIDS"; }
for name in slurmd slurmctld munged slurmscriptd; do
    for pid in $(pid_of "$name"); do stop "$name" "$pid"; done
done
rm -f "$PIDS"
