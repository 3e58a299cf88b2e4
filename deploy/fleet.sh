#!/usr/bin/env bash
# Rolls camnode out to a fleet of Raspberry Pis over ssh.
#
#   deploy/fleet.sh HOSTS_FILE [--dry-run] [--debs DIR] [--jobs N] [--timeout SECONDS]
#
# For every host in HOSTS_FILE, in parallel (--jobs, default 4): detect the
# Debian architecture (arm64 or armhf: `dpkg --print-architecture`, which,
# unlike `uname -m`, is right for a 32-bit OS on a 64-bit kernel), copy the
# matching camnode_*_ARCH.deb from --debs (default target/debian, where
# scripts/package.sh leaves them), install it with apt (which pulls its
# dependencies and keeps a locally edited /etc/camnode/camnode.toml), restart
# the service, and wait until it is healthy: `systemctl is-active` says
# active for --settle consecutive checks (default 10, a second apart) within
# --timeout seconds (default 90) and systemd did not restart it on its own
# meanwhile. The unit is Type=notify with a watchdog, so "active" means the
# camera delivered frames and keeps delivering them.
#
# Prints exactly one result line per host, "HOST ok ..." or
# "HOST FAILED step: reason", as each host finishes; a failing host never
# stops the others. Exit status: 0 when every host is ok, 1 when any failed,
# 2 for a usage error. Each host's full transcript is kept in --log-dir
# (default: a new temporary directory, named at the end).
#
# HOSTS_FILE: one host per line, "DESTINATION [ARCH]". DESTINATION is what
# ssh accepts (pi@cam-01.local, or an alias from ~/.ssh/config, which is also
# where ports, keys and jump hosts belong); the optional ARCH (arm64|armhf)
# skips detection. '#' starts a comment. The remote user needs passwordless
# sudo (Raspberry Pi OS's default user has it).
#
# --dry-run prints, per host, the commands it would run and connects to
# nothing; it still checks the hosts file and that the packages exist.
#
# Environment: FLEET_SSH_OPTS adds options that ssh and scp share, e.g.
# "-i ~/.ssh/fleet -o Port=2222" (-p would mean something else to scp).
set -uo pipefail

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0" | head -4 >&2
    exit 2
}

hosts_file=
dry_run=
debs=target/debian
jobs=4
timeout=90
settle=10
log_dir=
while [ $# -gt 0 ]; do
    case $1 in
    --dry-run) dry_run=1 ;;
    --debs) debs=${2:?--debs needs a directory}; shift ;;
    --jobs) jobs=${2:?--jobs needs a number}; shift ;;
    --timeout) timeout=${2:?--timeout needs seconds}; shift ;;
    --settle) settle=${2:?--settle needs a count}; shift ;;
    --log-dir) log_dir=${2:?--log-dir needs a directory}; shift ;;
    -h | --help) usage ;;
    -*) echo "fleet.sh: unknown option $1" >&2; usage ;;
    *)
        [ -z "$hosts_file" ] || { echo "fleet.sh: one HOSTS_FILE only (got '$hosts_file' and '$1')" >&2; usage; }
        hosts_file=$1
        ;;
    esac
    shift
done
[ -n "$hosts_file" ] || usage
[ -r "$hosts_file" ] || { echo "fleet.sh: cannot read hosts file '$hosts_file'" >&2; exit 2; }
for n in "$jobs" "$timeout" "$settle"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "fleet.sh: '$n' is not a positive number" >&2; exit 2; }
done

# A dry run's plans come out in file order.
[ -z "$dry_run" ] || jobs=1

# Per-host exit statuses; transcripts and ssh control sockets go to the log
# directory, which a dry run does not need.
status_dir=$(mktemp -d)
trap 'rm -rf "$status_dir"' EXIT
if [ -z "$dry_run" ]; then
    [ -n "$log_dir" ] || log_dir=$(mktemp -d "${TMPDIR:-/tmp}/camnode-fleet.XXXXXX")
    mkdir -p "$log_dir/ssh"
fi

# BatchMode: never wait for a password prompt nobody will answer.
# ControlMaster: one ssh connection per host, reused by every step.
# shellcheck disable=SC2206 # FLEET_SSH_OPTS is a list of options by design
ssh_opts=(-o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=10
    -o StrictHostKeyChecking=accept-new
    -o ControlMaster=auto -o "ControlPath=$log_dir/ssh/%C" -o ControlPersist=120
    ${FLEET_SSH_OPTS:-})

# The newest package for a Debian architecture in $debs, by version.
package_for() {
    find "$debs" -maxdepth 1 -name "camnode_*_$1.deb" 2>/dev/null | sort -V | tail -1
}

# Result line for a host; one printf, so parallel hosts never interleave.
result() {
    printf '%-28s %s\n' "$1" "$2"
}

dry_run_host() {
    local host=$1 arch=$2 deb a
    if [ -n "$arch" ]; then
        deb=$(package_for "$arch")
        [ -n "$deb" ] || { result "$host" "FAILED package: no camnode_*_$arch.deb in $debs"; return 1; }
    else
        echo "  $host: ssh $host dpkg --print-architecture"
        for a in arm64 armhf; do
            [ -n "$(package_for "$a")" ] || { result "$host" "FAILED package: no camnode_*_$a.deb in $debs"; return 1; }
        done
        deb="$debs/camnode_*_ARCH.deb (arm64: $(basename "$(package_for arm64)"), armhf: $(basename "$(package_for armhf)"))"
    fi
    local remote=/tmp/camnode_VERSION_ARCH.deb
    [ -z "$arch" ] || remote=/tmp/${deb##*/}
    echo "  $host: scp $deb $host:$remote"
    echo "  $host: ssh $host sudo -n apt-get install -y --allow-downgrades -o Dpkg::Options::=--force-confold $remote"
    echo "  $host: ssh $host sudo -n systemctl restart camnode"
    echo "  $host: ssh $host systemctl is-active camnode  (until active $settle times in a row, within ${timeout}s)"
    result "$host" "dry-run ${arch:-arch detected at run time}"
}

deploy_host() {
    local host=$1 arch=$2 log=$log_dir/$1.log
    local -a ssh=(ssh -n "${ssh_opts[@]}" "$host")
    step() { echo "+ $*" >>"$log"; "$@" >>"$log" 2>&1; }
    fail() {
        local reason
        # What the last step printed, on one line.
        reason=$(awk '/^\+ / { out = ""; next } { out = out (out == "" ? "" : "; ") $0 } END { print out }' "$log")
        result "$host" "FAILED $1: ${reason:-see $log}"
        "${ssh[@]}" -O exit >/dev/null 2>&1
        return 1
    }

    if [ -z "$arch" ]; then
        arch=$("${ssh[@]}" dpkg --print-architecture 2>>"$log") || fail connect || return 1
        echo "+ detected $arch" >>"$log"
    fi
    local deb
    deb=$(package_for "$arch")
    if [ -z "$deb" ]; then
        echo "no camnode_*_$arch.deb in $debs" >>"$log"
        fail package
        return 1
    fi
    local remote=/tmp/${deb##*/}
    step scp "${ssh_opts[@]}" "$deb" "$host:$remote" || { fail copy; return 1; }
    step "${ssh[@]}" sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades \
        -o Dpkg::Options::=--force-confold "$remote" || { fail install; return 1; }
    step "${ssh[@]}" rm -f "$remote"
    local restarts_before restarts state streak=0 start=$SECONDS
    restarts_before=$("${ssh[@]}" systemctl show -p NRestarts --value camnode 2>>"$log")
    # Type=notify: this returns once camnode sent READY=1, or fails.
    step "${ssh[@]}" sudo -n systemctl restart camnode || {
        step "${ssh[@]}" journalctl -u camnode -n 5 --no-pager -o cat
        fail restart
        return 1
    }
    while [ $((SECONDS - start)) -lt "$timeout" ]; do
        state=$("${ssh[@]}" systemctl is-active camnode 2>>"$log")
        if [ "$state" = active ]; then
            streak=$((streak + 1))
            [ "$streak" -ge "$settle" ] && break
        else
            streak=0
        fi
        # Polling a remote state: there is no event to wait on over ssh.
        sleep 1
    done
    restarts=$("${ssh[@]}" systemctl show -p NRestarts --value camnode 2>>"$log")
    echo "+ state=$state streak=$streak NRestarts $restarts_before -> $restarts" >>"$log"
    if [ "$streak" -lt "$settle" ] || [ "$restarts" != "$restarts_before" ]; then
        step "${ssh[@]}" journalctl -u camnode -n 5 --no-pager -o cat
        fail health
        return 1
    fi
    local version
    version=$(dpkg-deb -f "$deb" Version)
    result "$host" "ok $arch camnode $version active after $((SECONDS - start))s"
    "${ssh[@]}" -O exit >/dev/null 2>&1
    return 0
}

# Hosts in file order; duplicates are deployed once.
hosts=()
arches=()
declare -A seen=()
lineno=0
while IFS= read -r line || [ -n "$line" ]; do
    lineno=$((lineno + 1))
    line=${line%%#*}
    read -r host arch extra <<<"$line"
    [ -n "${host:-}" ] || continue
    if [ -n "${extra:-}" ] || { [ -n "${arch:-}" ] && [ "$arch" != arm64 ] && [ "$arch" != armhf ]; }; then
        echo "fleet.sh: $hosts_file:$lineno: expected 'DESTINATION [arm64|armhf]', got '$line'" >&2
        exit 2
    fi
    [ -z "${seen[$host]:-}" ] || continue
    seen[$host]=1
    hosts+=("$host")
    arches+=("${arch:-}")
done <"$hosts_file"
[ ${#hosts[@]} -gt 0 ] || { echo "fleet.sh: no hosts in $hosts_file" >&2; exit 2; }

running=0
for i in "${!hosts[@]}"; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
    (
        if [ -n "$dry_run" ]; then
            # A host's plan is several lines: printed in one piece.
            plan=$(dry_run_host "${hosts[$i]}" "${arches[$i]}")
            status=$?
            printf '%s\n' "$plan"
        else
            deploy_host "${hosts[$i]}" "${arches[$i]}"
            status=$?
        fi
        echo "$status" >"$status_dir/$i"
    ) &
    running=$((running + 1))
done
wait

failed=0
for i in "${!hosts[@]}"; do
    [ "$(cat "$status_dir/$i" 2>/dev/null)" = 0 ] || failed=$((failed + 1))
done
if [ -n "$dry_run" ]; then
    echo "fleet.sh: ${#hosts[@]} hosts, $((${#hosts[@]} - failed)) planned, $failed without a package (dry run)" >&2
else
    echo "fleet.sh: ${#hosts[@]} hosts, $((${#hosts[@]} - failed)) ok, $failed failed; transcripts in $log_dir" >&2
fi
[ "$failed" = 0 ]
