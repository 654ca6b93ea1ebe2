#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on this machine, for testing the workflow's SLURM profile:
# munged + MariaDB + slurmdbd (accounting, so `sacct` answers) + slurmctld + slurmd, with a few
# fake GPUs declared as generic resources (GRES). Debian 12 (Slurm 22.05), run as root.
#
#   scripts/slurm-local/start.sh      # then: source "$SLURM_LOCAL_DIR/env.sh"; sinfo; sbatch ...
#   scripts/slurm-local/stop.sh       # stops exactly what this started; --purge deletes the state
#
# Everything (configs, keys, database, logs, pid files, fake GPU devices) lives in one state
# directory. Outside it, start.sh only (1) installs the Debian packages when they are missing, with
# a temporary /usr/sbin/policy-rc.d so that no system service starts, and (2) points
# /etc/slurm/slurm.conf at the generated config with a symlink, because the Snakemake job step
# drops SLURM_CONF before its inner `srun`, which then only finds the default path. stop.sh undoes
# (2); packages stay installed. If start.sh fails halfway it runs stop.sh itself (keeping the logs).
#
# Environment (all optional):
#   SLURM_LOCAL_DIR        state directory (default /tmp/hpa-slurm-local); its parents must be
#                          world-searchable (o+x): munged and mariadbd run as munge and mysql
#   SLURM_LOCAL_CPUS       CPUs the node declares (default 8; may exceed the real count)
#   SLURM_LOCAL_MEM_MB     memory the node declares in MB (default 65536; not enforced)
#   SLURM_LOCAL_GPUS       number of fake GPUs (default 2; 0 = none)
#   SLURM_LOCAL_GPU_TYPE   their GRES type, usable as Snakemake's gpu_model (default fake)
#   SLURM_LOCAL_PARTITION  the one partition (default main)
#   SLURM_LOCAL_ACCOUNT    the account root submits under (default hpa)
#   SLURM_LOCAL_PORT_BASE  slurmctld, slurmd, slurmdbd, mariadbd listen on BASE..BASE+3
#                          (default 6817, i.e. Slurm's standard 6817-6819 and 6820)
#   SLURM_LOCAL_INSTALL    auto (default: apt-get install missing packages), never
#
# Exit status: 0 cluster up, 3 packages missing and not installable, 1 any other failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${SLURM_LOCAL_DIR:-/tmp/hpa-slurm-local}
CPUS=${SLURM_LOCAL_CPUS:-8}
MEM_MB=${SLURM_LOCAL_MEM_MB:-65536}
NGPU=${SLURM_LOCAL_GPUS:-2}
GPU_TYPE=${SLURM_LOCAL_GPU_TYPE:-fake}
PARTITION=${SLURM_LOCAL_PARTITION:-main}
ACCOUNT=${SLURM_LOCAL_ACCOUNT:-hpa}
PORT_BASE=${SLURM_LOCAL_PORT_BASE:-6817}
INSTALL=${SLURM_LOCAL_INSTALL:-auto}
CLUSTER=hpalocal
NODE=localnode
MARKER=.hpa-slurm-local   # marks a state directory as ours (stop.sh --purge checks it)
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)

CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
DB_PORT=$((PORT_BASE + 3))
T0=$SECONDS

say() { echo "[slurm-local +$((SECONDS - T0))s] $*"; }
die() { echo "[slurm-local] error: $*" >&2; exit 1; }

# ------------------------------------------------------------------------------------- checks
[[ $(id -u) -eq 0 ]] || die "must run as root (the daemons run as root; packages may be installed)"
if [[ ! -r /etc/debian_version ]] || ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
  die "needs Debian (apt-get, dpkg-query)"
fi
[[ "$STATE" == /* && "$STATE" != / ]] || die "SLURM_LOCAL_DIR must be an absolute path other than /"
[[ "$NGPU" =~ ^[0-9]+$ && "$CPUS" =~ ^[1-9][0-9]*$ && "$MEM_MB" =~ ^[1-9][0-9]*$ ]] \
  || die "SLURM_LOCAL_GPUS, SLURM_LOCAL_CPUS and SLURM_LOCAL_MEM_MB must be numbers"

alive() {  # alive DIR NAME: the daemon that the cluster in DIR recorded as NAME still runs it
  local pid
  pid=$(cat "$1/pids/$2" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "${2:0:15}" ]]
}
any_alive() {  # any_alive DIR: some daemon of the cluster in DIR still runs
  local name
  for name in munged mariadbd slurmdbd slurmctld slurmd; do
    alive "$1" "$name" && return 0
  done
  return 1
}
any_alive "$STATE" && die "a cluster from $STATE is already running; run stop.sh first"
# A cluster of this script that died without stop.sh (its test run or machine session was killed)
# leaves its symlink behind. When the link's state directory is ours (it has the marker) and none of
# its daemons runs, that cluster's own stop.sh removes the link; anything else is left alone.
link_target=$(readlink /etc/slurm/slurm.conf 2>/dev/null || true)
if [[ -L /etc/slurm/slurm.conf && "$link_target" != "$STATE/etc/slurm.conf" && "$link_target" == /*/etc/slurm.conf ]]; then
  stale=${link_target%/etc/slurm.conf}
  if [[ -f "$stale/$MARKER" ]] && ! any_alive "$stale"; then
    say "removing the symlink of a test cluster that no longer runs ($stale)"
    SLURM_LOCAL_DIR="$stale" "$HERE/stop.sh" > /dev/null
  fi
fi
if [[ -e /etc/slurm/slurm.conf || -L /etc/slurm/slurm.conf ]] \
   && [[ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" != "$STATE/etc/slurm.conf" ]]; then
  die "/etc/slurm/slurm.conf exists and is not this cluster's symlink: this machine has its own \
Slurm configuration (or another test cluster runs); refusing to replace it"
fi
for port in "$CTLD_PORT" "$SLURMD_PORT" "$DBD_PORT" "$DB_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port on 127.0.0.1 is in use (set SLURM_LOCAL_PORT_BASE)"
  fi
done

# ----------------------------------------------------------------------------------- packages
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  if [[ "$INSTALL" == never ]]; then
    echo "[slurm-local] error: missing Debian packages: ${missing[*]} (SLURM_LOCAL_INSTALL=never)" >&2
    exit 3
  fi
  say "installing ${missing[*]}"
  # Package scripts must not start the system's munge/mariadb/slurm services: invoke-rc.d asks
  # /usr/sbin/policy-rc.d, and exit status 101 means "action forbidden".
  policy_made=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\n# temporary, from hpa-pipeline scripts/slurm-local/start.sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_made=1
  fi
  install_rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
         -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
  } > /tmp/hpa-slurm-local-apt.log 2>&1 || install_rc=$?
  ((policy_made)) && rm -f /usr/sbin/policy-rc.d
  if ((install_rc)); then
    tail -n 20 /tmp/hpa-slurm-local-apt.log >&2
    echo "[slurm-local] error: apt-get failed (full log: /tmp/hpa-slurm-local-apt.log)" >&2
    exit 3   # distinct status: the packages could not be installed (tests skip on it)
  fi
  rm -f /tmp/hpa-slurm-local-apt.log
  say "packages installed"
fi
for binary in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct sacctmgr setpriv; do
  command -v "$binary" >/dev/null || die "$binary not found after installing ${PACKAGES[*]}"
done

# ------------------------------------------------------------------ from here on: undo on error
mkdir -p "$STATE"
touch "$STATE/$MARKER"
on_error() {
  local rc=$rc
  trap - EXIT
  echo "[slurm-local] start failed (exit $rc); last lines of the daemons' output:" >&2
  for log in "$STATE"/log/*.out; do   # each daemon's stdout/stderr (it also logs there with -D)
    [[ -s "$log" ]] && { echo "--- $log" >&2; tail -n 5 "$log" >&2; }
  done
  echo "[slurm-local] stopping what was started (logs stay in $STATE/log)" >&2
  SLURM_LOCAL_DIR="$STATE" "$HERE/stop.sh" >&2 || true
  exit "$rc"
}
trap 'rc=$?; ((rc == 0)) || on_error' EXIT

mkdir -p "$STATE"/{etc,run,pids,log,ctld,spool,munge,db,dbrun,dev}
# munged and mariadbd run as the munge and mysql users and must reach their files.
chmod 755 "$STATE"
for user in munge mysql; do
  setpriv --reuid="$user" --regid="$user" --clear-groups test -x "$STATE/run" \
    || die "user $user cannot reach $STATE: a parent directory is not world-searchable (o+x)"
done

# -------------------------------------------------------------------------------------- config
DB_PASS_FILE="$STATE/etc/db-password"
[[ -s "$DB_PASS_FILE" ]] || (umask 077; od -An -N12 -tx1 /dev/urandom | tr -d ' \n' > "$DB_PASS_FILE")
DB_PASS=$(cat "$DB_PASS_FILE")
HOST=$(hostname -s)
NODE_GRES=""
LAST_GPU=0
if ((NGPU > 0)); then
  NODE_GRES="Gres=gpu:$GPU_TYPE:$NGPU"
  LAST_GPU=$((NGPU - 1))
fi
render() {  # render TEMPLATE OUTPUT
  sed -e "s|@STATE@|$STATE|g" -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@HOST@|$HOST|g" \
      -e "s|@NODE@|$NODE|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM_MB@|$MEM_MB|g" \
      -e "s|@NODE_GRES@|$NODE_GRES|g" -e "s|@NGPU@|$NGPU|g" -e "s|@LAST_GPU@|$LAST_GPU|g" \
      -e "s|@GPU_TYPE@|$GPU_TYPE|g" -e "s|@PARTITION@|$PARTITION|g" \
      -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
      -e "s|@DBD_PORT@|$DBD_PORT|g" -e "s|@DB_PORT@|$DB_PORT|g" -e "s|@DB_PASS@|$DB_PASS|g" \
      "$HERE/$1" > "$2"
  if grep -q '@[A-Z_]*@' "$2"; then die "unfilled field in $2"; fi
}
render slurm.conf.in "$STATE/etc/slurm.conf"
render slurmdbd.conf.in "$STATE/etc/slurmdbd.conf"
chmod 600 "$STATE/etc/slurmdbd.conf"   # slurmdbd refuses a readable file (it holds a password)
if ((NGPU > 0)); then
  render gres.conf.in "$STATE/etc/gres.conf"
  for ((i = 0; i < NGPU; i++)); do
    # slurmd wants character devices: clones of /dev/null (major 1, minor 3).
    [[ -c "$STATE/dev/nvidia$i" ]] || { rm -f "$STATE/dev/nvidia$i"; mknod "$STATE/dev/nvidia$i" c 1 3; }
  done
else
  echo "# no fake GPUs (SLURM_LOCAL_GPUS=0)" > "$STATE/etc/gres.conf"
fi
export SLURM_CONF="$STATE/etc/slurm.conf"
cat > "$STATE/env.sh" <<EOF
# source this file to use the test cluster's client commands (sinfo, sbatch, sacct, ...)
export SLURM_CONF=$SLURM_CONF
export SLURM_LOCAL_DIR=$STATE
EOF

# /etc/slurm/slurm.conf -> our config (recorded, so that stop.sh removes exactly this).
if [[ ! -d /etc/slurm ]]; then
  mkdir /etc/slurm
  echo /etc/slurm > "$STATE/run/made-etc-dir"
fi
ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
echo /etc/slurm/slurm.conf > "$STATE/run/made-etc-link"

# ------------------------------------------------------------------------------------- daemons
launch() {  # launch NAME COMMAND...: start a daemon in the foreground mode, in its own session
  local name=$1
  shift
  # From a script (no job control) the background child is no process-group leader, so setsid
  # execs the daemon in place and $! is the daemon's own pid: recorded before anything can fail.
  setsid "$@" < /dev/null >> "$STATE/log/$name.out" 2>&1 &
  local pid=$!
  echo "$pid" > "$STATE/pids/$name"
  # stop.sh only signals a recorded pid that runs the daemon: check that it does.
  for _ in $(seq 50); do
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "${name:0:15}" ]] && return 0
    kill -0 "$pid" 2>/dev/null || die "$name exited at once (see $STATE/log/$name.out)"
    sleep 0.05
  done
  die "pid $pid is not $name"
}
wait_for() {  # wait_for SECONDS NAME TEST...: poll TEST until it passes, NAME must stay alive
  local seconds=$1 name=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" > /dev/null 2>&1; do
    alive "$STATE" "$name" || die "$name exited (see $STATE/log/)"
    ((SECONDS < deadline)) || die "$name not ready after ${seconds}s (see $STATE/log/)"
    sleep 0.2
  done
}

# munge: private key and socket; munged wants its socket directory o+x but not writable by others.
chown munge:munge "$STATE/munge"
chmod 711 "$STATE/munge"
if [[ ! -s "$STATE/munge/munge.key" ]]; then
  dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
fi
chown munge:munge "$STATE/munge/munge.key"
chmod 400 "$STATE/munge/munge.key"
say "starting munged"
launch munged setpriv --reuid=munge --regid=munge --clear-groups \
  munged --foreground --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.socket" \
  --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/log/munged.log" \
  --seed-file="$STATE/munge/munged.seed"
munge_ok() { munge -n -S "$STATE/munge/munge.socket" | unmunge -S "$STATE/munge/munge.socket"; }
wait_for 20 munged munge_ok

# MariaDB: a private server on 127.0.0.1 (own data directory, socket and port).
chown mysql:mysql "$STATE/db" "$STATE/dbrun"
if [[ ! -d "$STATE/db/mysql" ]]; then
  say "initialising the accounting database"
  mariadb-install-db --no-defaults --user=mysql --datadir="$STATE/db" --skip-test-db \
    --auth-root-authentication-method=socket > "$STATE/log/mariadb-install.log" 2>&1
fi
say "starting mariadbd on 127.0.0.1:$DB_PORT"
DB_SOCKET="$STATE/dbrun/mariadb.sock"
launch mariadbd mariadbd --no-defaults --user=mysql --datadir="$STATE/db" --socket="$DB_SOCKET" \
  --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
  --pid-file="$STATE/dbrun/mariadbd.pid" \
  --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900
db_ok() { mariadb --no-defaults --socket="$DB_SOCKET" -uroot -e "SELECT 1"; }
wait_for 60 mariadbd db_ok
mariadb --no-defaults --socket="$DB_SOCKET" -uroot <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL

say "starting slurmdbd on 127.0.0.1:$DBD_PORT"
launch slurmdbd slurmdbd -D
dbd_ok() { timeout 5 sacctmgr -n list cluster; }
wait_for 30 slurmdbd dbd_ok
# Cluster, account and root's association (sacctmgr -i: no confirmation; exit 1 = exists already).
sacctmgr -i add cluster "$CLUSTER" > /dev/null || true
sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="hpa-pipeline tests" Organization=local > /dev/null || true
sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" Cluster="$CLUSTER" > /dev/null || true
sacctmgr -n -P list association cluster="$CLUSTER" user=root format=account | grep -qx "$ACCOUNT" \
  || die "account $ACCOUNT was not created for root"

say "starting slurmctld"
launch slurmctld slurmctld -D -c
ctld_ok() { timeout 5 scontrol ping | grep -q UP; }
wait_for 30 slurmctld ctld_ok

say "starting slurmd (node $NODE, $CPUS CPUs, $NGPU fake GPUs)"
launch slurmd slurmd -D -N "$NODE"
node_idle() { [[ "$(timeout 5 sinfo -h -N -n "$NODE" -o %T)" == idle ]]; }
wait_for 60 slurmd node_idle

# Smoke test: a GPU job gets a GPU index from Slurm, and accounting records it.
if ((NGPU > 0)); then
  visible=$(timeout 30 srun -A "$ACCOUNT" -p "$PARTITION" -t 1 --gpus=1 -J slurm-local-smoke \
              printenv CUDA_VISIBLE_DEVICES) || die "smoke job (srun --gpus=1) failed"
  [[ "$visible" == 0 ]] || die "smoke job saw CUDA_VISIBLE_DEVICES='$visible', expected 0"
fi

trap - EXIT
sinfo -N -o "%N %P %T %c %m %G"
say "cluster up: partition $PARTITION, account $ACCOUNT, state in $STATE (source $STATE/env.sh)"
