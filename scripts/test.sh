#!/usr/bin/env bash
# Runs every test camnode has, on a fresh Debian/Ubuntu machine (as root or
# with sudo). Everything slow is built once and cached in ~/.cache/camnode,
# so a second run takes minutes:
#   1. build dependencies, libcamera 0.7 from Debian's source (host), and the
#      Python venv with the real imagezmq, pyzmq and OpenCV;
#   2. the whole Rust suite (unit, interop, faults, CURVE, GPIO, systemd, the
#      hub with imagezmq workers and a JetStream cluster, the hub's console in
#      Chromium, MQTT against mosquitto);
#   3. the Pi features: libcamera end to end on the virtual camera, GPIO;
#   4. cross builds for aarch64 and armv7, the suite under qemu-aarch64 (for
#      armv7 the libcamera tests), smoke runs of both ARM binaries, and the
#      Debian packages with their checks and installation tests;
#   5. the Raspberry Pi image with the arm64 package, booted on an emulated
#      Raspberry Pi 3 (scripts/pi-vm.sh test: systemd, vimc capture, GPIO,
#      watchdog, power cuts, upgrade); its summary in target/pi-vm/summary.json.
# CAMNODE_SKIP_CROSS=1 stops after step 3 (for quick local runs);
# CAMNODE_SKIP_PI_VM=1 after step 4.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${CAMNODE_CACHE:-$HOME/.cache/camnode}
# The host's builds live beside the other caches, not in the clone: a fresh
# clone (CI's) then rebuilds only camnode itself, not its few hundred
# dependencies. Cargo names its artifacts by paths relative to the
# workspace, so clones in different places share them without piling up.
host_target=${CARGO_TARGET_DIR:-$cache/target-host}

log() { echo "test.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
# forget_own_build
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
forget_own_build "$host_target"
forget_own_build "${CARGO_TARGET_DIR:-$cache/target-cross}"

step() { echo "=== test.sh: $* ($(date +%H:%M:%S))" >&2; }

step "setup"
# tcpdump: the CURVE test captures loopback traffic to prove it is encrypted;
# nats-server: the JetStream test runs a cluster of three;
# chromium, chromium-driver: the console's browser test (tests/console.rs);
# mosquitto, mosquitto-clients: the MQTT test's broker and its watcher (tests/mqtt.rs).
bash scripts/setup.sh tcpdump nats-server chromium chromium-driver mosquitto mosquitto-clients
# Exported before every cargo run, so all of them see the same
# PKG_CONFIG_PATH (pkg-config build scripts rerun when it changes).
eval "$(bash scripts/libcamera.sh host)"
bash scripts/python-env.sh >/dev/null

step "rust suite (with the hub's NATS feature, which only hub machines build)"
CARGO_TARGET_DIR=$host_target cargo test --locked --features nats

step "Pi features on the host: libcamera virtual camera, GPIO"
CARGO_TARGET_DIR=$host_target cargo test --locked --features libcamera,gpio --lib --test libcamera_virtual --test gpio

if [[ ${CAMNODE_SKIP_CROSS:-} == 1 ]]; then
    step "cross builds skipped (CAMNODE_SKIP_CROSS=1)"
    exit 0
fi
step "cross builds, qemu tests, smoke runs"
export CAMNODE_HOST_BIN="$host_target/debug/camnode"
bash scripts/cross.sh all
step "Debian packages"
bash scripts/package.sh
if [[ ${CAMNODE_SKIP_PI_VM:-} == 1 ]]; then
    step "emulated Pi skipped (CAMNODE_SKIP_PI_VM=1)"
    exit 0
fi
step "Raspberry Pi image on an emulated Raspberry Pi 3"
bash scripts/pi-vm.sh test --json target/pi-vm/summary.json
step "done"
