#!/usr/bin/env bash
# camnode hub's benchmark in one command (bench/hub.py says what it
# measures): builds the release binary with the `nats` feature and the load
# generator, gets the Python venv (imagezmq), installs nats-server if
# missing, and prints markdown tables.
#
#     bench/hub.sh                        # everything, 20 s per run (about 4 minutes)
#     bench/hub.sh --seconds 5            # a quick check that it all works
#     bench/hub.sh --only ingest,workers  # some sections
#     bench/hub.sh --out hub-bench.md     # also keep the tables (and raw .json)
#
# The cameras send /work/shared/footage/vtest/1.jpg (67 KB, 768x576) when
# that footage is there, else a 768x576 picture made here.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cache=${CAMNODE_CACHE:-$HOME/.cache/camnode}
log() { echo "hub.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

bash scripts/setup.sh nats-server
cargo build --release --locked --features nats --bin camnode --example loadgen >&2
py=$(bash scripts/python-env.sh)
jpeg=$repo/../shared/footage/vtest/1.jpg
if [[ ! -f $jpeg ]]; then
    jpeg=$cache/bench-hub-768x576.jpg
    # A detailed 768x576 picture of about the same size as the footage's.
    [[ -f $jpeg ]] || "$py" - "$jpeg" <<'EOF'
import sys, cv2, numpy as np
y, x = np.mgrid[0:576, 0:768]
image = np.dstack([(x * 255 // 767), (y * 255 // 575), ((x + y) % 256)]).astype(np.uint8)
image = cv2.GaussianBlur(image + np.random.default_rng(1).integers(0, 40, image.shape, dtype=np.uint8), (3, 3), 0)
cv2.imwrite(sys.argv[1], image, [cv2.IMWRITE_JPEG_QUALITY, 90])
EOF
fi
exec "$py" bench/hub.py --camnode target/release/camnode --loadgen target/release/examples/loadgen --python "$py" --jpeg "$jpeg" "$@"
