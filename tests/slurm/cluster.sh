#!/usr/bin/env bash
# A real one-node Slurm cluster on 127.0.0.1 for the tests (Debian's munge + Slurm 22.05).
#
#   tests/slurm/cluster.sh up     STATE_DIR   start munged, slurmctld and slurmd; wait until the node is idle
#   tests/slurm/cluster.sh down   STATE_DIR   cancel leftover jobs, stop the daemons by their pids
#   tests/slurm/cluster.sh status STATE_DIR   print sinfo/squeue for the cluster
#
# Needs root and the packages from .ci/install-slurm.sh. Everything runs as root, without
# systemd or cgroups; every file (config, logs, pids, spool) lives in STATE_DIR, except
# /etc/slurm/slurm.conf, which becomes a symlink to STATE_DIR/slurm.conf while the cluster
# is up (the plugin's job step clears SLURM_CONF before it calls srun, so srun must find the
# configuration at its default path). A regular file already there is moved aside and put
# back by `down`. munged uses the default socket folder /run/munge and /etc/munge/munge.key.
#
# Accounting is off (no slurmdbd): `sacct` exists but fails. Clients must therefore query
# job states with squeue, and finished jobs stay visible to squeue for MinJobAge seconds.
#
# Environment: SLURM_TEST_UP_TIMEOUT (seconds to wait for an idle node, default 120),
# SLURM_TEST_CTLD_PORT / SLURM_TEST_SLURMD_PORT (default 6817 / 6818).
set -euo pipefail

SLURM_CONF_PATH=/etc/slurm/slurm.conf
# The state folder of the cluster that is up (one per machine: fixed ports, /etc/slurm/slurm.conf).
ACTIVE_RECORD=/run/rare-objects-slurm-test.state
MUNGE_SOCKET_DIR=/run/munge
MUNGE_SOCKET=$MUNGE_SOCKET_DIR/munge.socket.2
MUNGE_KEY=/etc/munge/munge.key
UP_TIMEOUT=${SLURM_TEST_UP_TIMEOUT:-120}
CTLD_PORT=${SLURM_TEST_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_TEST_SLURMD_PORT:-6818}

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    echo "usage: $0 up|down|status STATE_DIR" >&2
    exit 2
}

[ $# -eq 2 ] || usage
ACTION=$1
STATE=$2
[ -d "$STATE" ] && STATE=$(cd "$STATE" && pwd)

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

read_pid() { [ -f "$STATE/pids/$1" ] && cat "$STATE/pids/$1" || true; }

# Start "$@" in a new session, in the background, with its output in $STATE/logs/$name.out;
# its pid (the process that execs the daemon) goes to $STATE/pids/$name.
start_daemon() {
    local name=$1
    shift
    setsid bash -c 'echo $$ > "$0"; exec "$@"' "$STATE/pids/$name" "$@" \
        </dev/null >"$STATE/logs/$name.out" 2>&1 &
    local i
    for i in $(seq 50); do
        [ -s "$STATE/pids/$name" ] && return 0
        sleep 0.1
    done
    die "$name did not start"
}

# Stop the process in pid file $1 (TERM, then KILL after a bounded wait).
stop_pid() {
    local name=$1 pid
    pid=$(read_pid "$name")
    if pid_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for i in $(seq 100); do
            pid_alive "$pid" || break
            sleep 0.1
        done
        if pid_alive "$pid"; then
            log "$name ($pid) ignored TERM, killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$STATE/pids/$name"
}

# Kill what is left in the session that daemon $1 led (slurmstepd stays in slurmd's session).
kill_session() {
    local name=$1 sid pids
    sid=$(cat "$STATE/pids/$name.sid" 2>/dev/null || true)
    [ -n "$sid" ] || return 0
    pids=$(ps -e -o pid=,sid= | awk -v sid="$sid" '$2 == sid {print $1}')
    for pid in $pids; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -f "$STATE/pids/$name.sid"
}

munge_works() {
    [ -S "$MUNGE_SOCKET" ] && munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1
}

write_config() {
    local node cpus mem_total mem
    node=$(hostname -s)
    cpus=$(nproc)
    mem_total=$(free -m | awk '/^Mem:/ {print $2}')
    mem=$((mem_total * 9 / 10))
    cat >"$STATE/slurm.conf" <<EOF
# One-node test cluster written by tests/slurm/cluster.sh; do not use elsewhere.
ClusterName=rom-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/logs/slurmctld.log
SlurmdLogFile=$STATE/logs/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in this container: track processes through /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# A plain-text record of every finished job (JobId, UserId, JobState, ...).
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/logs/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job that asks for no memory gets this much per CPU (not the whole node).
DefMemPerCPU=512
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
# No accounting: finished jobs must stay visible to squeue (the status query) for a while.
MinJobAge=3600
InactiveLimit=0
KillWait=5
Waittime=0
# One pretend GPU (no device file) so that GPU requests (--gpus, --cpus-per-gpu) can be scheduled.
GresTypes=gpu
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    : >"$STATE/fake-gpu0"
    cat >"$STATE/gres.conf" <<EOF
AutoDetect=off
NodeName=$node Name=gpu File=$STATE/fake-gpu0
EOF
    echo "$node" >"$STATE/node"
}

link_config() {
    mkdir -p "$(dirname "$SLURM_CONF_PATH")"
    if [ -L "$SLURM_CONF_PATH" ]; then
        rm -f "$SLURM_CONF_PATH"
    elif [ -e "$SLURM_CONF_PATH" ]; then
        log "moving the existing $SLURM_CONF_PATH aside to $SLURM_CONF_PATH.rom-test-backup"
        mv "$SLURM_CONF_PATH" "$SLURM_CONF_PATH.rom-test-backup"
        echo 1 >"$STATE/restored-conf"
    fi
    ln -s "$STATE/slurm.conf" "$SLURM_CONF_PATH"
}

unlink_config() {
    if [ -L "$SLURM_CONF_PATH" ] && [ "$(readlink "$SLURM_CONF_PATH")" = "$STATE/slurm.conf" ]; then
        rm -f "$SLURM_CONF_PATH"
        if [ -f "$STATE/restored-conf" ] && [ -e "$SLURM_CONF_PATH.rom-test-backup" ]; then
            mv "$SLURM_CONF_PATH.rom-test-backup" "$SLURM_CONF_PATH"
        fi
    fi
    rm -f "$STATE/restored-conf"
}

start_munge() {
    if munge_works && ! pid_alive "$(read_pid munged)"; then
        log "using the munged already answering on $MUNGE_SOCKET"
        return 0
    fi
    mkdir -p "$MUNGE_SOCKET_DIR" /var/lib/munge /var/log/munge
    chown munge:munge "$MUNGE_SOCKET_DIR" /var/lib/munge /var/log/munge
    chmod 0755 "$MUNGE_SOCKET_DIR"
    chmod 0700 /var/lib/munge /var/log/munge
    if [ ! -s "$MUNGE_KEY" ]; then
        mkdir -p "$(dirname "$MUNGE_KEY")"
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    fi
    chown munge:munge "$(dirname "$MUNGE_KEY")" "$MUNGE_KEY"
    chmod 0700 "$(dirname "$MUNGE_KEY")"
    chmod 0400 "$MUNGE_KEY"
    # A socket left by a munged that died without cleaning up keeps a new one from binding.
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    start_daemon munged setpriv --reuid=munge --regid=munge --init-groups \
        munged --foreground --key-file="$MUNGE_KEY" --socket="$MUNGE_SOCKET"
    local i
    for i in $(seq 100); do
        munge_works && return 0
        pid_alive "$(read_pid munged)" || break
        sleep 0.2
    done
    cat "$STATE/logs/munged.out" >&2 || true
    die "munged did not come up"
}

wait_idle() {
    local node deadline state=""
    node=$(cat "$STATE/node")
    deadline=$((SECONDS + UP_TIMEOUT))
    while [ "$SECONDS" -lt "$deadline" ]; do
        for name in slurmctld slurmd; do
            if ! pid_alive "$(read_pid "$name")"; then
                tail -n 30 "$STATE/logs/$name.out" "$STATE/logs/$name.log" >&2 2>/dev/null || true
                die "$name exited"
            fi
        done
        state=$(sinfo -h -n "$node" -o %T 2>/dev/null | head -n 1 || true)
        case "$state" in
        idle | mixed | allocated) return 0 ;;
        down* | drain* | fail*)
            # A node left down by an earlier start: bring it back.
            scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
            ;;
        esac
        sleep 1
    done
    log "node state after ${UP_TIMEOUT}s: '${state}'"
    tail -n 30 "$STATE/logs/slurmctld.log" "$STATE/logs/slurmd.log" >&2 2>/dev/null || true
    die "the node did not become idle"
}

cluster_up() {
    [ "$(id -u)" = 0 ] || die "must run as root"
    local tool
    for tool in munged munge unmunge slurmctld slurmd sinfo sbatch squeue scontrol scancel setpriv; do
        command -v "$tool" >/dev/null || die "$tool not found (run .ci/install-slurm.sh)"
    done
    if pid_alive "$(read_pid slurmctld)"; then
        die "a cluster is already running from $STATE"
    fi
    mkdir -p "$STATE"/{ctld,spool,run,logs,pids}
    STATE=$(cd "$STATE" && pwd)
    # A cluster whose test session died without `down` still holds the ports: stop it first.
    local old
    old=$(cat "$ACTIVE_RECORD" 2>/dev/null || true)
    if [ -n "$old" ] && [ "$old" != "$STATE" ] && [ -d "$old" ]; then
        log "stopping the cluster left running from $old"
        bash "$0" down "$old" || true
    fi
    echo "$STATE" >"$ACTIVE_RECORD"
    # On any failure or interruption while starting, stop what was started.
    trap 'rc=$?; if [ $rc -ne 0 ]; then log "start failed, tearing down"; cluster_down || true; fi; exit $rc' EXIT
    trap 'exit 130' INT TERM
    write_config
    link_config
    start_munge
    export SLURM_CONF=$STATE/slurm.conf
    start_daemon slurmctld slurmctld -D -i -f "$SLURM_CONF"
    ps -o sid= -p "$(read_pid slurmctld)" | tr -d ' ' >"$STATE/pids/slurmctld.sid"
    # slurmd only registers once slurmctld answers.
    local i
    for i in $(seq 100); do
        scontrol ping 2>/dev/null | grep -q UP && break
        pid_alive "$(read_pid slurmctld)" || break
        sleep 0.2
    done
    start_daemon slurmd slurmd -D -N "$(cat "$STATE/node")" -f "$SLURM_CONF"
    ps -o sid= -p "$(read_pid slurmd)" | tr -d ' ' >"$STATE/pids/slurmd.sid"
    wait_idle
    trap - EXIT INT TERM
    cat >"$STATE/env.sh" <<EOF
export SLURM_CONF=$STATE/slurm.conf
EOF
    log "up: node $(cat "$STATE/node") idle; config $STATE/slurm.conf"
    sinfo >&2
}

cluster_down() {
    [ -d "$STATE" ] || return 0
    export SLURM_CONF=$STATE/slurm.conf
    if pid_alive "$(read_pid slurmctld)"; then
        # Cancel every job still queued or running, then wait (bounded) for them to end.
        local jobs i
        jobs=$(squeue -h -o %i -t PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            log "cancelling leftover jobs: $(echo $jobs)"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for i in $(seq 30); do
                [ -z "$(squeue -h -o %i -t PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING 2>/dev/null || true)" ] && break
                sleep 1
            done
        fi
    fi
    stop_pid slurmd
    kill_session slurmd
    stop_pid slurmctld
    kill_session slurmctld
    stop_pid munged
    unlink_config
    rm -f "$STATE/env.sh"
    if [ "$(cat "$ACTIVE_RECORD" 2>/dev/null || true)" = "$STATE" ]; then
        rm -f "$ACTIVE_RECORD"
    fi
    log "down: $STATE"
}

cluster_status() {
    export SLURM_CONF=$STATE/slurm.conf
    for name in munged slurmctld slurmd; do
        pid=$(read_pid "$name")
        if pid_alive "$pid"; then echo "$name: running ($pid)"; else echo "$name: stopped"; fi
    done
    sinfo || true
    squeue -t all || true
}

case "$ACTION" in
up) cluster_up ;;
down) cluster_down ;;
status) cluster_status ;;
*) usage ;;
esac
