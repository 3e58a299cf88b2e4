#!/usr/bin/env bash
# Installs what building camnode needs on Debian/Ubuntu: a C toolchain, cmake
# and nasm for libjpeg-turbo, pkg-config, and libzmq3-dev (camnode links the
# system's libzmq, which has CURVE: docs/security.md), plus any packages named
# as arguments (tools the tests use). Idempotent and quiet when all is there;
# needs root (or sudo) only when something is missing.
set -euo pipefail

cd "$(dirname "$0")/.."
cache=${CAMNODE_CACHE:-$HOME/.cache/camnode}
log() { echo "setup: $*" >&2; }
die() { log "error: $*"; exit 1; }
# need_packages
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

need_packages build-essential cmake nasm pkg-config libzmq3-dev "$@"
command -v cargo >/dev/null || die "cargo not found: install Rust first (https://rustup.rs), then run this again"
