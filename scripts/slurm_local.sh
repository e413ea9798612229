#!/usr/bin/env bash
# A one-node Slurm on this machine, for tests/slurm.rs and for trying `cotlab sweep --slurm`
# without a cluster. Idempotent: what is installed, configured or running is left as it is.
#
#   scripts/slurm_local.sh          # set up and start; prints the node when it is idle
#   scripts/slurm_local.sh --stop   # stop the daemons this script started
#
# 1. Installs Debian's slurm-wlm (22.05 on bookworm) and munge with apt-get when `slurmctld` is
#    missing (needs root and a working apt).
# 2. Creates the munge key (/etc/munge/munge.key) if there is none and starts munged.
# 3. Writes /etc/slurm/slurm.conf for one node, this host, with the CPUs and memory `slurmd -C`
#    reports: no cgroups (proctrack/linuxproc, task/none, no accounting), so it runs in a
#    container without systemd. A slurm.conf this script did not write is never touched.
# 4. Starts slurmctld and slurmd directly (state and logs in $COTLAB_SLURM_STATE, default
#    /var/spool/cotlab-slurm) and waits until `sinfo` shows the node idle.
#
# When Slurm is already answering (`sinfo` lists a usable node), nothing is done.
# Exit codes: 0 ready; 2 bad arguments; 3 not root (cannot install or start daemons);
# 4 installing failed (no apt, no network, no package); 5 a daemon did not start; 6 the node did
# not become idle in time. The reason is the last line on stderr; daemon logs are in the state dir.
set -uo pipefail

state="${COTLAB_SLURM_STATE:-/var/spool/cotlab-slurm}"
conf=/etc/slurm/slurm.conf
marker="# written by cotlab scripts/slurm_local.sh"

die() {
    echo "slurm_local: $2" >&2
    exit "$1"
}

node_ready() {
    # One line per node state; usable means idle, mixed or allocated (not down/drained).
    command -v sinfo >/dev/null 2>&1 && timeout 10 sinfo -h -o '%t' 2>/dev/null | grep -Eq '^(idle|mix|alloc)'
}

stop() {
    for d in slurmd slurmctld; do
        if [ -f "$state/$d.pid" ]; then
            kill "$(cat "$state/$d.pid")" 2>/dev/null && echo "slurm_local: stopped $d"
            rm -f "$state/$d.pid"
        fi
    done
}

case "${1:-}" in
    "") ;;
    --stop) stop; exit 0 ;;
    *) die 2 "usage: scripts/slurm_local.sh [--stop]" ;;
esac

if node_ready; then
    echo "slurm_local: Slurm is up: $(sinfo -h -o '%N %t %c CPUs %m MB' | head -1)"
    exit 0
fi
[ "$(id -u)" = 0 ] || die 3 "needs root to install and start Slurm (running as $(id -un)); run it as root, or use a machine with Slurm"

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die 4 "slurmctld is not installed and there is no apt-get to install it (Debian/Ubuntu only)"
    echo "slurm_local: installing slurm-wlm and munge (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q slurm-wlm munge >"$(mktemp)" 2>&1; then
        apt-get update -q >/dev/null 2>&1
        apt-get install -y -q slurm-wlm munge >&2 || die 4 "apt-get install slurm-wlm munge failed (no network or no such package?)"
    fi
fi

mkdir -p "$state/ctld" "$state/d" || die 5 "cannot create the state dir $state"

# munge: a key, then the daemon (as the munge user when there is one, as Debian's unit does).
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force >/dev/null 2>&1 || die 5 "mungekey could not create /etc/munge/munge.key"
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none || die 5 "could not write /etc/munge/munge.key"
    fi
fi
munge_user=root
id munge >/dev/null 2>&1 && munge_user=munge
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown "$munge_user" /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n >/dev/null 2>&1; then
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2
    if [ "$munge_user" = root ]; then
        munged --force || die 5 "munged did not start"
    else
        runuser -u munge -- munged || die 5 "munged did not start (as user munge)"
    fi
    for _ in $(seq 1 20); do munge -n >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n >/dev/null 2>&1 || die 5 "munged started but 'munge -n' fails: see /var/log/munge/munged.log"
fi

# slurm.conf: this host as the one node, with what slurmd detects here.
host="$(hostname -s)"
node_line="$(slurmd -C 2>/dev/null | grep '^NodeName=')" || die 5 "'slurmd -C' could not describe this machine"
# Memory for scheduling only (no cgroups enforce it); leave the OS some room so the node is valid.
mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")"
node_line="$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 9 / 10))/; s/ UpTime=.*//" <<<"$node_line")"
new_conf="$marker
ClusterName=cotlab
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP"
if [ -f "$conf" ] && ! head -1 "$conf" | grep -qF "$marker"; then
    echo "slurm_local: $conf was not written by this script: using it as it is" >&2
elif [ "$(cat "$conf" 2>/dev/null)" != "$new_conf" ]; then
    mkdir -p /etc/slurm
    printf '%s\n' "$new_conf" >"$conf" || die 5 "cannot write $conf"
    # A changed config: restart what runs with the old one.
    stop >/dev/null
fi

running() { [ -f "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }
if ! running slurmctld; then
    slurmctld || die 5 "slurmctld did not start: see $state/slurmctld.log"
fi
if ! running slurmd; then
    slurmd || die 5 "slurmd did not start: see $state/slurmd.log"
fi

for i in $(seq 1 60); do
    node_ready && break
    # A node that was down (a restart, a changed config) is put back in service.
    if [ "$i" = 10 ] || [ "$i" = 30 ]; then scontrol update nodename="$host" state=resume >/dev/null 2>&1; fi
    sleep 1
done
node_ready || die 6 "the node did not become idle within 60 s: $(sinfo -h -o '%N %t %E' 2>&1 | head -1); see $state/slurmctld.log and $state/slurmd.log"
echo "slurm_local: Slurm is up: $(sinfo -h -o '%N %t %c CPUs %m MB' | head -1)"
