#!/usr/bin/env bash
# camnode's performance benchmark in one command: builds the release binary
# and the bare libjpeg-turbo encoder, gets the Python peer's venv, prepares
# the workloads (once, under ~/.cache/camnode/bench) and prints a markdown
# table comparing camnode with the imagenode pipeline and bare encoding.
#
#     bench/run.sh                      # everything, 5 runs each (a few minutes)
#     bench/run.sh --runs 1 --frames 60 # a quick check that it all works
#     bench/run.sh --out perf.md        # also keep the table (and raw .json)
#
# Every other option is bench/bench.py's (--help). Run it on an otherwise
# idle machine: the numbers are CPU time and wall time of two cores.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

# nasm matters here: without it libjpeg-turbo builds without SIMD and every
# JPEG number is several times too slow.
bash scripts/setup.sh
cargo build --release --locked --bin camnode --example bare_jpeg >&2
py=$(bash scripts/python-env.sh)
exec "$py" bench/bench.py --camnode target/release/camnode --bare target/release/examples/bare_jpeg "$@"
