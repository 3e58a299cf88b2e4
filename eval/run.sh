#!/usr/bin/env bash
# Runs camnode's motion evaluation: builds camnode in release mode, gets the
# Python environment with numpy and OpenCV (scripts/python-env.sh), builds
# the labelled scenes from the shared footage in a temporary directory, runs
# camnode (the detector alone, and a node sending to a hub) and the peers on
# them, and rewrites the tables in docs/motion.md.
#
#     eval/run.sh [--footage DIR] [--work DIR]
#
# --footage: the folder with vtest/ and tree/ (default: ../shared/footage
# beside the repository); --work keeps the scenes, JSON lines and plots.
# Takes a few minutes and about 2 GB of temporary space.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
footage="$repo/../shared/footage"
args=()
while (($#)); do
    case $1 in
        --footage) footage=$2; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
[[ -d "$footage/vtest" && -d "$footage/tree" ]] || {
    echo "eval: $footage/vtest and $footage/tree are needed: pass --footage DIR, the shared footage folder" >&2
    exit 1
}
cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
python=$("$repo/scripts/python-env.sh")
exec "$python" "$repo/eval/evaluate.py" --camnode "$repo/target/release/camnode" --footage "$footage" "${args[@]}"
