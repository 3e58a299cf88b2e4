#!/usr/bin/env bash
# Fuzzes what the hub does with untrusted messages (tests/fuzz_hub.rs: the
# parser and checks, file names, log quoting, published headers) with a
# fixed budget: CASES generated messages per property (default 200000). A
# failure prints the smallest input proptest could shrink
# it to, and proptest keeps it under tests/fuzz_hub.proptest-regressions so
# every later run (and CI) tries it first.
#
#     scripts/fuzz.sh            # 200000 cases per property (a few minutes)
#     scripts/fuzz.sh 5000       # a quick run
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-200000}
start=$(date +%s)
PROPTEST_CASES=$cases cargo test --locked --test fuzz_hub -- --test-threads 2
echo "fuzz.sh: $cases cases per property, no failure, in $(( $(date +%s) - start )) s" >&2
