#!/usr/bin/env bash
# Installs what building camnode needs on Debian/Ubuntu: a C toolchain, cmake
# and nasm for libjpeg-turbo, pkg-config, and libzmq3-dev (camnode links the
# system's libzmq, which has CURVE: docs/security.md), plus any packages named
# as arguments (tools the tests use). Idempotent and quiet when all is there;
# needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(build-essential cmake nasm pkg-config libzmq3-dev "$@")
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    echo "setup: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || {
    echo "setup: cargo not found: install Rust first (https://rustup.rs), then run this again" >&2
    exit 1
}
