#!/usr/bin/env bash
# Stop the test cluster of scripts/slurm-local/start.sh and undo what it changed outside its state
# directory. Safe to run any number of times, also after a start that failed halfway.
#
#   scripts/slurm-local/stop.sh           # stop; keep $SLURM_LOCAL_DIR (logs, accounting DB)
#   scripts/slurm-local/stop.sh --purge   # stop and delete $SLURM_LOCAL_DIR
#
# Only processes whose pids start.sh recorded in $SLURM_LOCAL_DIR/pids are signalled, and only while
# that pid still runs the expected program (a recycled pid is left alone); nothing is killed by
# name. Running jobs are cancelled first so that slurmd leaves no job steps behind.
set -uo pipefail

STATE=${SLURM_LOCAL_DIR:-/tmp/hpa-slurm-local}
MARKER=.hpa-slurm-local
PURGE=0
case "${1:-}" in
  "") ;;
  --purge) PURGE=1 ;;
  *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac
[[ "$STATE" == /* && "$STATE" != / ]] || { echo "SLURM_LOCAL_DIR must be an absolute path other than /" >&2; exit 2; }
export SLURM_CONF="$STATE/etc/slurm.conf"

recorded_pid() {  # recorded_pid NAME: the pid start.sh recorded, if that process still runs NAME
  local pid comm
  pid=$(cat "$STATE/pids/$1" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  # setpriv/setsid exec the daemon in place, so the recorded pid carries the daemon's name
  # (comm is cut to 15 characters).
  [[ "$comm" == "${1:0:15}" ]] || return 1
  echo "$pid"
}

stop_daemon() {  # stop_daemon NAME: SIGTERM, up to 15 s grace, then SIGKILL
  local name=$1 pid
  if pid=$(recorded_pid "$name"); then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 75); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null
      echo "[slurm-local] killed $name ($pid) after 15 s"
    else
      echo "[slurm-local] stopped $name ($pid)"
    fi
  fi
  rm -f "$STATE/pids/$name"
}

# Cancel the cluster's jobs while the controller still runs, and give them a moment to end.
if recorded_pid slurmctld > /dev/null && command -v scancel > /dev/null; then
  timeout 10 scancel --quiet --full --user=root 2>/dev/null || true
  for _ in $(seq 50); do
    [[ -z "$(timeout 5 squeue -h -t RUNNING,COMPLETING,CONFIGURING -o %i 2>/dev/null)" ]] && break
    sleep 0.2
  done
fi

# Reverse order of start: node and controller, then accounting, database and authentication.
for name in slurmd slurmctld slurmdbd mariadbd munged; do
  stop_daemon "$name"
done

# /etc/slurm/slurm.conf: remove our symlink (only while it still points into this state dir),
# and /etc/slurm if start.sh created it and it is empty now.
if [[ -L /etc/slurm/slurm.conf && "$(readlink /etc/slurm/slurm.conf)" == "$STATE/"* ]]; then
  rm -f /etc/slurm/slurm.conf
  echo "[slurm-local] removed the /etc/slurm/slurm.conf symlink"
fi
rm -f "$STATE/run/made-etc-link"
if [[ -f "$STATE/run/made-etc-dir" ]]; then
  rmdir /etc/slurm 2>/dev/null && echo "[slurm-local] removed /etc/slurm"
  rm -f "$STATE/run/made-etc-dir"
fi

if ((PURGE)) && [[ -d "$STATE" ]]; then
  if [[ -f "$STATE/$MARKER" ]]; then
    rm -rf "$STATE"
    echo "[slurm-local] removed $STATE"
  else
    echo "[slurm-local] $STATE has no $MARKER marker: not deleting it" >&2
    exit 1
  fi
fi
exit 0
