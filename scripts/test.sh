#!/usr/bin/env bash
# Runs every test camnode has, on a fresh Debian/Ubuntu machine: installs the
# build dependencies, the Python interop venv (real imagezmq, pyzmq, OpenCV),
# then the Rust suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# tcpdump: tests/curve.rs captures loopback traffic to show what CURVE hides.
bash scripts/setup.sh tcpdump
# Built once here so the interop tests do not race to create it.
bash scripts/python-env.sh >/dev/null
cargo test --locked
