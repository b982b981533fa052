#!/usr/bin/env bash
# A single-node localhost Slurm cluster for tests: `scripts/slurm-cluster.sh start | stop`.
# Installs Debian's slurmctld, slurmd and munge when missing (root; the Debian registry), writes a
# minimal slurm.conf under $SLURM_DIR (default /tmp/mosa-slurm) and starts munged, slurmctld
# and slurmd; `stop` ends them. Prints one line per step.
set -euo pipefail
SLURM_DIR="${SLURM_DIR:-/tmp/mosa-slurm}"
CONF=/etc/slurm/slurm.conf
case "${1:-}" in
start)
    if ! command -v slurmctld >/dev/null || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
        echo "slurm: installing slurmctld slurmd slurm-client munge from Debian"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
    fi
    mkdir -p "$SLURM_DIR"/{state,spool,log} /etc/slurm /run/munge /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key
    pgrep -x munged >/dev/null || su -s /bin/sh munge -c munged 2>/dev/null || munged --force
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    cat > "$CONF" <<CONF
ClusterName=mosa-test
SlurmctldHost=localhost
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=5
NodeName=localhost CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
    pgrep -x slurmctld >/dev/null || slurmctld -c -i
    pgrep -x slurmd >/dev/null || slurmd -N localhost
    for _ in $(seq 60); do
        if timeout 5 sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            echo "slurm: up ($(sinfo -h -o '%P %D %T %c'))"
            exit 0
        fi
        sleep 0.5
    done
    echo "slurm: the node did not come up; see $SLURM_DIR/log" >&2
    tail -5 "$SLURM_DIR"/log/*.log >&2 || true
    exit 1
    ;;
stop)
    pkill -x slurmd || true
    pkill -x slurmctld || true
    # gone before returning: a `start` right after must not find the old daemons on their way out
    for _ in $(seq 100); do
        pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break
        sleep 0.1
    done
    pkill -9 -x slurmd || true
    pkill -9 -x slurmctld || true
    echo "slurm: stopped"
    ;;
*)
    echo "usage: $0 start | stop" >&2
    exit 2
    ;;
esac
