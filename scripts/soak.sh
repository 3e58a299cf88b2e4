#!/usr/bin/env bash
# Soak test of store-and-forward (not part of .ci/run: it takes half an hour).
#
# A node runs the synthetic scene at 30 fps in REQ mode against `camnode hub`
# on loopback for SOAK_MINUTES (default 30). Every HUB_EVERY seconds the hub
# is killed (SIGKILL and SIGTERM in turn) and stays down for HUB_DOWN seconds,
# so the node spools whole motion events and delivers them when the hub is
# back. Every SAMPLE seconds it prints the node's RSS and open file
# descriptors, what the hubs acknowledged (unique messages), what waits in
# the spool, and the drops the node has logged. At the end the node gets
# SIGTERM and its own counts are checked against the hubs'.
#
# It fails when memory or descriptors grow: the highest RSS of the last
# quarter of samples must stay within 10 % + 2 MiB of the highest after the
# first quarter (warm-up excluded), and descriptors within 2; and when a
# message was lost: every image and event the node counted as delivered must
# be in a hub's journal.
#
#   SOAK_MINUTES=5 scripts/soak.sh            # a short run
#   CAMNODE_BIN=target/debug/camnode scripts/soak.sh
set -euo pipefail

minutes=${SOAK_MINUTES:-30}
hub_every=${HUB_EVERY:-180}
hub_down=${HUB_DOWN:-20}
sample=${SAMPLE:-10}
port=${SOAK_PORT:-5599}
size=${SOAK_SIZE:-640x480}

cd "$(dirname "$0")/.."
if [[ -z "${CAMNODE_BIN:-}" ]]; then
    cargo build --release --quiet
    CAMNODE_BIN=target/release/camnode
fi
bin=$(realpath "$CAMNODE_BIN")
work=$(mktemp -d -t camnode-soak.XXXXXX)
echo "soak: ${minutes} min at 30 fps on synthetic:${size}, hub down ${hub_down}s every ${hub_every}s; files in $work"

hub_pid=
hub_runs=0
start_hub() {
    hub_runs=$((hub_runs + 1))
    "$bin" hub --bind "tcp://127.0.0.1:$port" --jsonl "$work/hub-$hub_runs.jsonl" 2>>"$work/hub.log" &
    hub_pid=$!
}
stop_hub() {
    local signal=$1
    kill "-$signal" "$hub_pid" 2>/dev/null || true
    wait "$hub_pid" 2>/dev/null || true
    hub_pid=
}
cleanup() {
    [[ -n "$hub_pid" ]] && kill -KILL "$hub_pid" 2>/dev/null || true
    [[ -n "${node_pid:-}" ]] && kill -KILL "$node_pid" 2>/dev/null || true
}
trap cleanup EXIT

# Unique images and events of the node across every hub journal: a message
# repeated to a new hub after a lost reply counts once.
acknowledged() {
    cat "$work"/hub-*.jsonl 2>/dev/null | grep -o '"msg":"soak [^"]*","node":"soak","seq":[0-9]*' | sort -u | wc -l
}

start_hub
"$bin" -v run --name soak --source "synthetic:$size" --rate 30 --heartbeat 10 \
    --hub "tcp://127.0.0.1:$port" --spool "$work/spool" --stats-json "$work/node.json" 2>"$work/node.log" &
node_pid=$!

samples="$work/samples.tsv"
printf 'seconds\trss_kib\tfds\tacknowledged\tspooled_now\tdropped_logged\thub\n' | tee "$samples"
started=$SECONDS
next_restart=$hub_every
restart_at=-1
signals=(KILL TERM)
while (( SECONDS - started < minutes * 60 )); do
    sleep "$sample"
    t=$((SECONDS - started))
    kill -0 "$node_pid" 2>/dev/null || { echo "soak: the node died; see $work/node.log" >&2; exit 1; }
    if [[ -n "$hub_pid" ]] && (( t >= next_restart )); then
        stop_hub "${signals[$(( (hub_runs - 1) % 2 ))]}"
        restart_at=$((t + hub_down))
    elif [[ -z "$hub_pid" ]] && (( t >= restart_at )); then
        start_hub
        next_restart=$((t + hub_every))
    fi
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$node_pid/status")
    fds=$(ls "/proc/$node_pid/fd" | wc -l)
    spooled=$(find "$work/spool" -name '*.msg' | wc -l)
    # The node logs its drop count at powers of two: the last one is a lower bound.
    dropped=$(grep -o '([0-9]* dropped so far)' "$work/node.log" | tail -1 | tr -dc 0-9 || true)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$rss" "$fds" "$(acknowledged)" "$spooled" "${dropped:-0}" "$([[ -n "$hub_pid" ]] && echo up || echo down)" | tee -a "$samples"
done

# The end: the hub up, the node stopped by a signal (its spool stays, counted).
[[ -z "$hub_pid" ]] && start_hub
kill -TERM "$node_pid"
wait "$node_pid" || { echo "soak: the node failed at exit; see $work/node.log" >&2; exit 1; }
node_pid=
sleep 1
stop_hub TERM

read -r frames encoded sent dropped stored delivered evicted waiting < <(python3 - "$work/node.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
p = s["spool"]
print(s["frames"], s["encoded"], s["sent"], s["dropped"], p["stored"], p["delivered"], p["evicted"], p["waiting"])
EOF
)
acked=$(acknowledged)
echo "soak: $frames frames, $encoded images encoded; node counted $sent delivered, $dropped dropped; spool: $stored stored, $delivered delivered from it, $evicted evicted, $waiting waiting; hubs journaled $acked unique images and events over $hub_runs runs"

python3 - "$samples" <<'EOF'
import sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()[1:]]
rss = [int(r[1]) for r in rows]
fds = [int(r[2]) for r in rows]
q = max(1, len(rows) // 4)
base_rss, last_rss = max(rss[q:2 * q] or rss), max(rss[-q:])
base_fds, last_fds = max(fds[q:2 * q] or fds), max(fds[-q:])
print(f"soak: RSS {min(rss)}..{max(rss)} KiB (after warm-up {base_rss}, last quarter {last_rss}); fds {min(fds)}..{max(fds)} (after warm-up {base_fds}, last quarter {last_fds})")
failed = []
if last_rss > base_rss * 1.10 + 2048:
    failed.append(f"RSS grew from {base_rss} to {last_rss} KiB")
if last_fds > base_fds + 2:
    failed.append(f"open descriptors grew from {base_fds} to {last_fds}")
if failed:
    sys.exit("soak: FAILED: " + "; ".join(failed))
EOF
# Each delivery is one journal line; heartbeats and the restart notice are not counted by `acknowledged`.
if (( acked < encoded - waiting - evicted - dropped )); then
    echo "soak: FAILED: the hubs journaled $acked images and events, fewer than the $encoded encoded less $waiting waiting, $evicted evicted and $dropped dropped" >&2
    exit 1
fi
echo "soak: passed"
