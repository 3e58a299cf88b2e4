#!/usr/bin/env bash
# Makes docs/console.png (and docs/console-phone.png): a hub with the
# console, six views on four nodes (people walking and a waving tree from
# ../shared/footage when it is there, the synthetic scene otherwise), one
# node stopped early so that it shows stale, photographed by the same
# headless Chromium as tests/console.rs. CAMNODE_FOOTAGE names another
# footage folder.
#   bash bench/screenshot.sh [CAMNODE]   (default target/debug/camnode)
set -euo pipefail
cd "$(dirname "$0")/.."
camnode=${1:-target/debug/camnode}
python=$(bash scripts/python-env.sh)
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
zmq=$(port) http=$(port)

"$camnode" hub --bind "tcp://127.0.0.1:$zmq" --save "$work/store" --http "127.0.0.1:$http" 2>/dev/null &
pids+=($!)
node() { # NAME VIEW SOURCE [FLAGS...]
    local name=$1 view=$2 source=$3
    shift 3
    "$camnode" run --name "$name" --view "$view" --source "$source" --hub "tcp://127.0.0.1:$zmq" \
        --spool "$work/spool-$name-$view" --heartbeat 2 "$@" 2>/dev/null &
    pids+=($!)
}
footage=${CAMNODE_FOOTAGE:-../shared/footage}
walk=synthetic:768x576 tree=synthetic:320x240
[ -d "$footage/vtest" ] && walk=jpeg-dir:$footage/vtest
[ -d "$footage/tree" ] && tree=jpeg-dir:$footage/tree

# The shed's node sends a little and stops: stale by the time of the picture.
node shed Cam synthetic:640x480 --rate 10 --frames 100 --send all
sleep 12
node lobby Door "$walk" --rate 8 --send all
node lobby Hall "$walk" --rate 8 --send all --flip h
node garden Cam "$tree" --rate 2 --send all
node garden Pond "$tree" --rate 2 --send all --flip h
node driveway Cam synthetic:640x480 --rate 10 --send all
sleep 14
printf 'screenshot docs/console.png 1280x1300\nscreenshot docs/console-phone.png 390x844\n' |
    "$python" tests/python/console_browser.py --tiles 6 "http://127.0.0.1:$http/"
# A palette keeps the README's picture small (about 370 KB instead of 1 MB).
if command -v pngquant >/dev/null; then
    for png in docs/console.png docs/console-phone.png; do pngquant --quality 80-95 --speed 1 --force --output "$png" "$png"; done
fi
