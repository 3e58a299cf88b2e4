#!/usr/bin/env bash
# Runs camnode's motion evaluation: builds camnode in release mode, gets the
# Python environment with numpy and OpenCV (scripts/python-env.sh), builds
# the labelled scenes from ../shared/footage in a temporary directory, runs
# camnode and the peers on them and writes eval/RESULTS.md.
#
#     eval/run.sh [--work DIR]    (DIR keeps the scenes, jsonl and plots)
#
# Needs ../shared/footage; takes a few minutes and about 2 GB of temporary space.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
footage="$repo/../shared/footage"
[[ -d "$footage/vtest" && -d "$footage/tree" ]] || {
    echo "eval: $footage/vtest and $footage/tree are needed (the shared footage beside the repository)" >&2
    exit 1
}
cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
python=$("$repo/scripts/python-env.sh")
exec "$python" "$repo/eval/evaluate.py" --camnode "$repo/target/release/camnode" --footage "$footage" "$@"
