#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for testing `snakemake --profile slurm` for real.
#
#   bash workflow/scripts/slurm_localhost.sh start   # install if missing, configure, start, wait
#   bash workflow/scripts/slurm_localhost.sh stop    # stop the daemons this script started
#   bash workflow/scripts/slurm_localhost.sh remove  # stop, then undo what start added
#
# Needs root and Debian's packages (slurm-wlm 22.05, munge), installed with apt-get when missing.
# No systemd is assumed: munged, slurmctld and slurmd are started by hand. The node declares
# MSGFM_SLURM_GPUS (default 2) GPUs as a count-only gres backed by placeholder files, so that jobs
# asking for GPUs (`--gpus=N`) are scheduled on a machine without any; the jobs themselves run on
# the CPU. Accounting is off: the executor plugin must poll with `squeue` (MinJobAge below keeps
# finished jobs visible to it long enough). An /etc/slurm/slurm.conf that this script did not
# write is never touched: on a real cluster node the script refuses to run. Exit status 3 means
# SLURM is missing and cannot be installed here (callers may skip); any other failure is an error.
#
# `remove` leaves the machine as `start` found it, as a test must: once SLURM's tools are
# installed, every Snakemake start runs the SLURM plugin's `scontrol show config`, which waits
# ~9 s for a stopped controller (or, with no slurm.conf, until the plugin's 10 s timeout).
set -euo pipefail

MARK="# written by msgfm workflow/scripts/slurm_localhost.sh"
CONF_DIR=/etc/slurm
RUN_DIR=/run/msgfm-slurm
CLUSTER=msgfm-localhost  # also in every job's environment (SLURM_CLUSTER_NAME)
# What start added, for remove: the packages it installed, the folders it created.
ADDED=/var/lib/msgfm-slurm
GPUS=${MSGFM_SLURM_GPUS:-2}

die() {
    echo "slurm_localhost: $*" >&2
    exit "${2:-1}"
}

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null && return
    command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and apt-get is not available" 3
    export DEBIAN_FRONTEND=noninteractive
    local before failed=""
    before=$(installed_packages)
    apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null; } \
        || failed=1
    # Recorded even after a failure: what got installed is removed all the same.
    mkdir -p "$ADDED"
    comm -13 <(echo "$before") <(installed_packages) >>"$ADDED/packages"
    [ -z "$failed" ] || die "apt-get could not install slurm-wlm and munge" 3
}

installed_packages() {
    dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" {print $2}' | sort
}

# mkdir -p, recording each folder it creates (the outermost first) for remove.
make_dirs() {
    local dir missing
    mkdir -p "$ADDED"
    for dir in "$@"; do
        missing=()
        while [ ! -e "$dir" ]; do missing=("$dir" "${missing[@]}"); dir=$(dirname "$dir"); done
        [ ${#missing[@]} -eq 0 ] && continue
        mkdir -p "${missing[-1]}"
        printf '%s\n' "${missing[@]}" >>"$ADDED/dirs"
    done
}

write_config() {
    # An empty file configures nothing (a write that once died of a full disk left one behind).
    if [ -s "$CONF_DIR/slurm.conf" ] && ! grep -qF "$MARK" "$CONF_DIR/slurm.conf"; then
        die "$CONF_DIR/slurm.conf exists and was not written by this script; refusing to replace it"
    fi
    local node cpus mem
    node=$(hostname -s)
    # nproc honours OMP_NUM_THREADS (callers set it to 1 for their own processes): count the
    # CPUs this process may run on instead, or the node would offer one.
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
    # Leave a quarter of the memory to the daemons and the submitting Snakemake.
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 3 / 4)}' /proc/meminfo)
    make_dirs "$CONF_DIR" "$RUN_DIR" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
    # slurmd checks that every gres File exists; one placeholder per declared GPU.
    for ((i = 0; i < GPUS; i++)); do touch "$RUN_DIR/gpu$i"; done
    # /etc/slurm is where SLURM looks without SLURM_CONF; the jobstep plugin drops SLURM_CONF
    # before its inner srun, so another location would not reach the jobs' steps.
    # Written beside the targets and renamed: a failed write never leaves a partial config.
    cat >"$CONF_DIR/slurm.conf.tmp" <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups in a container: track processes by parent id, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
GresTypes=gpu
ReturnToService=2
# Finished jobs stay visible to squeue for 10 minutes (the plugin asks for >= 3x its first
# status-check delay before it trusts squeue).
MinJobAge=600
KillWait=30
SchedulerParameters=sched_interval=2
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN
PartitionName=main Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$CONF_DIR/gres.conf.tmp" <<EOF
$MARK
AutoDetect=off
NodeName=$node Name=gpu File=$RUN_DIR/gpu[0-$((GPUS - 1))]
EOF
    mv "$CONF_DIR/gres.conf.tmp" "$CONF_DIR/gres.conf"
    mv "$CONF_DIR/slurm.conf.tmp" "$CONF_DIR/slurm.conf"
}

start_daemons() {
    make_dirs /run/munge
    chown munge:munge /run/munge
    [ -s /etc/munge/munge.key ] || die "/etc/munge/munge.key is missing (the munge package makes it)"
    if ! munge -n >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged
        # Ours to stop later (a munged that was already running is left alone).
        cp /run/munge/munged.pid "$RUN_DIR/munged.pid"
    fi
    pgrep -F "$RUN_DIR/slurmctld.pid" >/dev/null 2>&1 || /usr/sbin/slurmctld -c
    pgrep -F "$RUN_DIR/slurmd.pid" >/dev/null 2>&1 || /usr/sbin/slurmd -c
    local state=""
    for _ in $(seq 60); do
        state=$(sinfo --noheader --format=%t 2>/dev/null || true)
        [ "$state" = "idle" ] && return
        if [ "$state" = "inval" ] || [ "$state" = "drain" ]; then break; fi
        sleep 0.5
    done
    die "node did not become idle (state: '${state:-no answer}'); see /var/log/slurm/"
}

stop_daemons() {
    local daemon pid
    # Jobs first: their slurmstepd processes outlive slurmd.
    if [ -f "$RUN_DIR/slurmctld.pid" ] && scancel --full --user "$(id -un)" 2>/dev/null; then
        for _ in $(seq 60); do
            [ -z "$(squeue --noheader --states=RUNNING,COMPLETING,PENDING 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    for daemon in slurmd slurmctld munged; do
        [ -f "$RUN_DIR/$daemon.pid" ] || continue
        pid=$(cat "$RUN_DIR/$daemon.pid")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        fi
        rm -f "$RUN_DIR/$daemon.pid"
    done
    kill_escaped_job_processes
}

# Without cgroups, SLURM tracks a job's processes by parent id (proctrack/linuxproc): one whose
# step ended first (a requeued job's Snakemake step still handling SIGTERM) is reparented to init
# and outlives the job. Every job process carries the cluster's name in its environment.
kill_escaped_job_processes() {
    local environ pid
    for environ in /proc/[0-9]*/environ; do
        pid=${environ#/proc/}
        pid=${pid%/environ}
        [ "$pid" = "$$" ] && continue
        if { tr '\0' '\n' <"$environ"; } 2>/dev/null | grep -qx "SLURM_CLUSTER_NAME=$CLUSTER"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

# Stop, then undo start: its config files, the packages it installed (purged: their
# configuration, logs and munge's key go too), the folders it created, newest first.
remove_all() {
    local file dir
    stop_daemons
    if [ -f "$CONF_DIR/slurm.conf" ] && grep -qF "$MARK" "$CONF_DIR/slurm.conf"; then
        # What our daemons saved (jobs, node state): a later start begins afresh.
        find /var/lib/slurm/slurmctld /var/lib/slurm/slurmd -mindepth 1 -delete 2>/dev/null || true
    fi
    for file in "$CONF_DIR/slurm.conf" "$CONF_DIR/gres.conf"; do
        if [ -f "$file" ] && grep -qF "$MARK" "$file"; then rm -f "$file"; fi
    done
    if [ -s "$ADDED/packages" ]; then
        # shellcheck disable=SC2046  # one package name per line
        DEBIAN_FRONTEND=noninteractive apt-get purge -y $(cat "$ADDED/packages") >/dev/null
    fi
    if [ -s "$ADDED/dirs" ]; then
        tac "$ADDED/dirs" | while read -r dir; do rm -rf -- "$dir"; done
    fi
    rm -rf "$ADDED"
}

case "${1:-}" in
start)
    [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"
    install_packages
    write_config
    start_daemons
    echo "slurm_localhost: node $(hostname -s) idle ($(sinfo --noheader --format=%c) CPUs, $GPUS GPUs declared)"
    ;;
stop)
    stop_daemons
    ;;
remove)
    [ "$(id -u)" = 0 ] || die "must run as root (it removes packages)"
    remove_all
    ;;
*)
    die "usage: $0 start|stop|remove"
    ;;
esac
