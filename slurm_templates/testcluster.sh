#!/usr/bin/env bash
# Real two-node SLURM test cluster on this one host (see DESIGN.md, "The test cluster").
#
#   bash slurm_templates/testcluster.sh start    install what is missing, start or reuse the cluster
#   bash slurm_templates/testcluster.sh status   short health summary; exit 0 when healthy
#   bash slurm_templates/testcluster.sh stop     stop only the daemons this script started (pid files)
#   bash slurm_templates/testcluster.sh env      print SLURM_CONF=... (client commands need it exported)
#
# Pieces: a private munged (own key and socket), a private MariaDB (own datadir and port), slurmdbd,
# slurmctld and two slurmd (node1, node2) on 127.0.0.1. All config, state, logs and pid files live under
# <repo>/.testcluster (override with SFHPC_TESTCLUSTER_DIR). Needs root.
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true # bash 5.2: keep '&' literal in ${var//pat/rep}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
TEMPLATES=$SCRIPT_DIR/testcluster
STATE=${SFHPC_TESTCLUSTER_DIR:-$REPO/.testcluster}
ETC=$STATE/etc
RUN=$STATE/run
LOG=$STATE/log
SPOOL=$STATE/spool
export SLURM_CONF=$ETC/slurm.conf
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

CLUSTER=sfhpctest
NODES=(node1 node2)
CTLD_PORT=17017
DBD_PORT=17019
MYSQL_PORT=17306
SLURMD_PORTS=17001-17002 # node1, node2
MUNGE_SOCKET=$RUN/munge/munge.socket.2
DB_NAME=sfhpctest_acct
DB_USER=slurm
DB_PASS=sfhpctest
WAIT_S=${SFHPC_TESTCLUSTER_TIMEOUT:-90}
PACKAGES=(munge mariadb-server slurm-wlm slurmdbd slurm-client)
REQUIRED_COMMANDS=(munged munge mariadbd mariadb mariadb-install-db mariadb-admin slurmdbd slurmctld slurmd
  sinfo sacctmgr scontrol)

log() { echo "[testcluster] $*" >&2; }

# Print the last lines of the given logs, then exit 1 with the message.
die() {
  local msg=$1 file
  shift
  echo "[testcluster] ERROR: $msg" >&2
  for file in "$@"; do
    [[ -f $file ]] || continue
    echo "----- last lines of $file -----" >&2
    tail -n 25 "$file" >&2
  done
  exit 1
}

# Run a daemon detached from our stdio and from the lock fd, so callers that capture our output
# (pytest's subprocess.run) see EOF and the lock is released when this script exits.
launch() {
  local out=$1
  shift
  setsid "$@" </dev/null >>"$out" 2>&1 9>&- &
}

# pid_alive NAME PIDFILE: true when PIDFILE names a live process whose command name is NAME.
pid_alive() {
  local name=$1 pidfile=$2 pid
  [[ -r $pidfile ]] || return 1
  pid=$(<"$pidfile")
  pid=${pid//[[:space:]]/}
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/comm && $(<"/proc/$pid/comm") == "$name" ]]
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds; false on timeout.
wait_for() {
  local seconds=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${seconds}s waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}

# stop_pidfile NAME PIDFILE: SIGTERM the process (if it is ours and alive), SIGKILL after 15 s.
stop_pidfile() {
  local name=$1 pidfile=$2 pid i
  if ! pid_alive "$name" "$pidfile"; then
    rm -f "$pidfile"
    return 0
  fi
  pid=$(<"$pidfile")
  pid=${pid//[[:space:]]/}
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 60; i++)); do
    pid_alive "$name" "$pidfile" || break
    sleep 0.25
  done
  if pid_alive "$name" "$pidfile"; then
    log "$name (pid $pid) ignored SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$pidfile"
}

ensure_packages() {
  local cmd missing=()
  for cmd in "${REQUIRED_COMMANDS[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  ((${#missing[@]} == 0)) && return 0
  ((EUID == 0)) || die "missing commands (${missing[*]}) and not root; install: ${PACKAGES[*]}"
  log "installing ${PACKAGES[*]} (missing: ${missing[*]})"
  # Packages must not start their system services; our daemons use private config and state.
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  local rc=0
  {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${PACKAGES[@]}"
  } >"$LOG/apt.log" 2>&1 9>&- || rc=$?
  ((own_policy)) && rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || die "apt-get install failed (exit $rc)" "$LOG/apt.log"
  for cmd in "${REQUIRED_COMMANDS[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || die "still missing after install: $cmd" "$LOG/apt.log"
  done
}

# How jobs' --mem is enforced: by memory cgroups (v1) when this host lets us make one, else by the accounting
# plugin's over-memory kill. Sets TASK_PLUGIN and ACCOUNTING_MEMORY_KILL for the templates.
choose_memory_enforcement() {
  local probe=/sys/fs/cgroup/memory/sfhpc-probe-$$
  if [[ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]] && mkdir "$probe" 2>/dev/null; then
    rmdir "$probe"
    TASK_PLUGIN=task/cgroup
    ACCOUNTING_MEMORY_KILL=""
  else
    TASK_PLUGIN=task/none
    ACCOUNTING_MEMORY_KILL=JobAcctGatherParams=OverMemoryKill
    log "no writable cgroup v1 memory controller: memory limits enforced by the accounting plugin (OverMemoryKill)"
  fi
}

# render TEMPLATE DEST MODE: fill @PLACEHOLDERS@; prints "changed" when DEST was (re)written.
render() {
  local template=$1 dest=$2 mode=$3 text
  text=$(<"$template")
  text=${text//@STATE@/$STATE}
  text=${text//@HOSTNAME@/$(hostname)}
  text=${text//@CTLD_PORT@/$CTLD_PORT}
  text=${text//@DBD_PORT@/$DBD_PORT}
  text=${text//@MYSQL_PORT@/$MYSQL_PORT}
  text=${text//@SLURMD_PORTS@/$SLURMD_PORTS}
  text=${text//@MUNGE_SOCKET@/$MUNGE_SOCKET}
  text=${text//@DB_NAME@/$DB_NAME}
  text=${text//@DB_USER@/$DB_USER}
  text=${text//@DB_PASS@/$DB_PASS}
  text=${text//@TASK_PLUGIN@/$TASK_PLUGIN}
  text=${text//@ACCOUNTING_MEMORY_KILL@/$ACCOUNTING_MEMORY_KILL}
  if [[ -f $dest ]] && [[ $(<"$dest") == "$text" ]]; then
    chmod "$mode" "$dest"
    return 0
  fi
  (umask 077 && printf '%s\n' "$text" >"$dest.tmp")
  chmod "$mode" "$dest.tmp"
  mv -f "$dest.tmp" "$dest"
  echo changed
}

# Node names must resolve (DDP rendezvous uses the first node's name as MASTER_ADDR).
ensure_hosts() {
  local name
  for name in "${NODES[@]}" "$(hostname)"; do
    if [[ $name == "$(hostname)" ]] && getent hosts "$name" >/dev/null 2>&1; then
      continue
    fi
    if ! awk -v n="$name" '$1 == "127.0.0.1" { for (i = 2; i <= NF; i++) if ($i == n) f = 1 } END { exit !f }' \
      /etc/hosts; then
      getent hosts "$name" >/dev/null 2>&1 && [[ $name != "$(hostname)" ]] &&
        log "warning: $name resolves elsewhere ($(getent hosts "$name")); adding 127.0.0.1 $name"
      log "adding '127.0.0.1 $name' to /etc/hosts"
      echo "127.0.0.1 $name" >>/etc/hosts
    fi
  done
}

munge_ok() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }

start_munge() {
  if pid_alive munged "$RUN/munged.pid" && munge_ok >/dev/null 2>&1; then return 0; fi
  stop_pidfile munged "$RUN/munged.pid"
  if [[ ! -s $ETC/munge.key ]]; then
    (umask 077 && dd if=/dev/urandom of="$ETC/munge.key" bs=1024 count=1 status=none)
  fi
  chmod 600 "$ETC/munge.key"
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  log "starting munged"
  # --force: munged refuses root-owned sockets and keys by default; this munged serves only the test cluster.
  launch "$LOG/munged.stdout" munged --force --socket="$MUNGE_SOCKET" --key-file="$ETC/munge.key" \
    --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log" --seed-file="$STATE/munge/munge.seed"
  wait_for 20 munged munge_ok || die "munged did not start" "$LOG/munged.log" "$LOG/munged.stdout"
}

mysql_sql() { mariadb --defaults-file="$ETC/my.cnf" -N -B -e "$1"; }

start_mariadb() {
  if pid_alive mariadbd "$RUN/mysqld.pid" &&
    mariadb-admin --defaults-file="$ETC/my.cnf" ping >/dev/null 2>&1; then
    return 0
  fi
  stop_pidfile mariadbd "$RUN/mysqld.pid"
  if [[ ! -d $STATE/mysql/mysql ]]; then
    log "initialising MariaDB datadir $STATE/mysql"
    rm -rf "$STATE/mysql"
    mariadb-install-db --defaults-file="$ETC/my.cnf" --skip-test-db --auth-root-authentication-method=socket \
      >"$LOG/mysql-install.log" 2>&1 9>&- || die "mariadb-install-db failed" "$LOG/mysql-install.log"
  fi
  log "starting MariaDB on 127.0.0.1:$MYSQL_PORT"
  launch "$LOG/mysqld.stdout" mariadbd --defaults-file="$ETC/my.cnf"
  wait_for "$WAIT_S" MariaDB mariadb-admin --defaults-file="$ETC/my.cnf" ping ||
    die "MariaDB did not start" "$LOG/mysqld.log" "$LOG/mysqld.stdout"
  mysql_sql "CREATE DATABASE IF NOT EXISTS $DB_NAME;
    CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';
    GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
    FLUSH PRIVILEGES;" || die "could not create the accounting database" "$LOG/mysqld.log"
}

dbd_ok() { sacctmgr -n -P show cluster format=cluster; }

start_slurmdbd() {
  if ! pid_alive slurmdbd "$RUN/slurmdbd.pid"; then
    rm -f "$RUN/slurmdbd.pid"
    log "starting slurmdbd"
    launch "$LOG/slurmdbd.stdout" slurmdbd
  fi
  wait_for "$WAIT_S" slurmdbd dbd_ok || die "slurmdbd is not answering" "$LOG/slurmdbd.log" "$LOG/slurmdbd.stdout"
  if ! dbd_ok | grep -qx "$CLUSTER"; then
    log "registering cluster $CLUSTER in accounting"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed" "$LOG/slurmdbd.log"
  fi
}

start_slurmctld() {
  if pid_alive slurmctld "$RUN/slurmctld.pid"; then return 0; fi
  rm -f "$RUN/slurmctld.pid"
  log "starting slurmctld"
  launch "$LOG/slurmctld.stdout" slurmctld
  wait_for "$WAIT_S" slurmctld scontrol ping ||
    die "slurmctld did not come up" "$LOG/slurmctld.log" "$LOG/slurmctld.stdout"
}

start_slurmd() {
  local node=$1
  if pid_alive slurmd "$RUN/slurmd-$node.pid"; then return 0; fi
  rm -f "$RUN/slurmd-$node.pid"
  mkdir -p "$SPOOL/$node"
  log "starting slurmd $node"
  launch "$LOG/slurmd-$node.stdout" slurmd -N "$node"
  wait_for 20 "slurmd $node" pid_alive slurmd "$RUN/slurmd-$node.pid" ||
    die "slurmd $node did not start" "$LOG/slurmd-$node.log" "$LOG/slurmd-$node.stdout"
}

# Node states from sinfo, one "name state" per line ('*' suffix: not responding).
node_states() { sinfo -h -N -o '%N %T' 2>/dev/null | sort -u; }

nodes_ready() {
  local states
  states=$(node_states) || return 1
  local node
  for node in "${NODES[@]}"; do
    grep -Eqx "$node (idle|mixed|allocated|completing)" <<<"$states" || return 1
  done
}

# Wait for both nodes; resume a node left down/drained (e.g. by a killed slurmd) once its slurmd runs.
wait_nodes() {
  local deadline=$((SECONDS + WAIT_S)) node state next_resume=0
  until nodes_ready; do
    if ((SECONDS >= deadline)); then
      log "node states: $(node_states | tr '\n' ' ')"
      die "nodes not idle after ${WAIT_S}s" "$LOG/slurmctld.log" "$LOG/slurmd-node1.log" "$LOG/slurmd-node2.log"
    fi
    if ((SECONDS >= next_resume)); then
      while read -r node state; do
        if [[ $state =~ ^(down|drained|draining|fail) ]] && pid_alive slurmd "$RUN/slurmd-$node.pid"; then
          log "resuming $node (was $state)"
          scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
        fi
      done < <(node_states)
      next_resume=$((SECONDS + 5))
    fi
    sleep 0.5
  done
}

all_pids_alive() {
  pid_alive munged "$RUN/munged.pid" && pid_alive mariadbd "$RUN/mysqld.pid" &&
    pid_alive slurmdbd "$RUN/slurmdbd.pid" && pid_alive slurmctld "$RUN/slurmctld.pid" &&
    pid_alive slurmd "$RUN/slurmd-node1.pid" && pid_alive slurmd "$RUN/slurmd-node2.pid"
}

print_env() {
  echo "# SLURM test cluster '$CLUSTER' is up (state and logs: $STATE)"
  echo "# client commands (sinfo, sbatch, sacct, ...) need:"
  printf 'export SLURM_CONF=%q\n' "$SLURM_CONF"
}

stop_slurm_daemons() {
  local node
  for node in "${NODES[@]}"; do stop_pidfile slurmd "$RUN/slurmd-$node.pid"; done
  stop_pidfile slurmctld "$RUN/slurmctld.pid"
}

# Before starting anything: each port of a daemon we must start has to be free (else another cluster,
# e.g. one with a different SFHPC_TESTCLUSTER_DIR, owns it and we would leave half a cluster behind).
preflight_ports() {
  local entry name pidfile port i
  local checks=("mariadbd:mysqld.pid:$MYSQL_PORT" "slurmdbd:slurmdbd.pid:$DBD_PORT" "slurmctld:slurmctld.pid:$CTLD_PORT")
  for i in "${!NODES[@]}"; do checks+=("slurmd:slurmd-${NODES[i]}.pid:$((${SLURMD_PORTS%-*} + i))"); done
  for entry in "${checks[@]}"; do
    IFS=: read -r name pidfile port <<<"$entry"
    if ! pid_alive "$name" "$RUN/$pidfile" && port_in_use "$port"; then
      die "port $port (for $name) is used by a process this script did not start"
    fi
  done
}

cmd_start() {
  mkdir -p "$ETC" "$RUN/munge" "$LOG" "$SPOOL/ctld" "$STATE/munge"
  chmod 700 "$STATE/munge" "$RUN/munge"
  ensure_packages
  local slurm_changed dbd_changed mysql_changed
  choose_memory_enforcement
  slurm_changed=$(render "$TEMPLATES/slurm.conf.in" "$ETC/slurm.conf" 644)
  slurm_changed+=$(render "$TEMPLATES/cgroup.conf.in" "$ETC/cgroup.conf" 644)
  dbd_changed=$(render "$TEMPLATES/slurmdbd.conf.in" "$ETC/slurmdbd.conf" 600)
  mysql_changed=$(render "$TEMPLATES/my.cnf.in" "$ETC/my.cnf" 644)
  if [[ -z $slurm_changed$dbd_changed$mysql_changed ]] && all_pids_alive && munge_ok >/dev/null 2>&1 &&
    nodes_ready; then
    log "cluster already running and healthy"
    print_env
    return 0
  fi
  ensure_hosts
  if [[ -n $mysql_changed ]]; then stop_pidfile mariadbd "$RUN/mysqld.pid"; fi
  if [[ -n $dbd_changed ]]; then stop_pidfile slurmdbd "$RUN/slurmdbd.pid"; fi
  if [[ -n $slurm_changed ]]; then stop_slurm_daemons; fi
  preflight_ports
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurmctld
  local node
  for node in "${NODES[@]}"; do start_slurmd "$node"; done
  wait_nodes
  log "cluster ready: $(node_states | tr '\n' ' ')"
  print_env
}

cmd_stop() {
  if pid_alive slurmctld "$RUN/slurmctld.pid"; then
    local jobs
    jobs=$(squeue -h -o '%A' 2>/dev/null | tr '\n' ' ') || true
    if [[ -n ${jobs// /} ]]; then
      log "cancelling jobs: $jobs"
      # shellcheck disable=SC2086 # job ids are plain numbers
      scancel $jobs 2>/dev/null || true
      sleep 2
    fi
  fi
  stop_slurm_daemons
  stop_pidfile slurmdbd "$RUN/slurmdbd.pid"
  stop_pidfile mariadbd "$RUN/mysqld.pid"
  stop_pidfile munged "$RUN/munged.pid"
  log "stopped"
}

cmd_status() {
  local healthy=0 name pidfile entry
  for entry in munged:munged.pid mariadbd:mysqld.pid slurmdbd:slurmdbd.pid slurmctld:slurmctld.pid \
    slurmd:slurmd-node1.pid slurmd:slurmd-node2.pid; do
    name=${entry%%:*}
    pidfile=$RUN/${entry#*:}
    if pid_alive "$name" "$pidfile"; then
      printf '%-10s %-22s running (pid %s)\n' "$name" "${entry#*:}" "$(<"$pidfile")"
    else
      printf '%-10s %-22s DOWN\n' "$name" "${entry#*:}"
      healthy=1
    fi
  done
  if command -v sinfo >/dev/null 2>&1 && [[ -f $SLURM_CONF ]]; then
    echo "nodes: $(node_states | tr '\n' ' ')"
    nodes_ready || healthy=1
  else
    healthy=1
  fi
  printf 'SLURM_CONF=%q\n' "$SLURM_CONF"
  return "$healthy"
}

with_lock() {
  mkdir -p "$STATE" "$LOG"
  exec 9>"$STATE/lock"
  flock -w 300 9 || die "another testcluster.sh holds $STATE/lock"
  "$@"
}

case ${1:-} in
start) with_lock cmd_start ;;
stop) with_lock cmd_stop ;;
status) cmd_status ;;
env) printf 'SLURM_CONF=%q\n' "$SLURM_CONF" ;;
*)
  echo "usage: $0 start|stop|status|env" >&2
  exit 2
  ;;
esac
