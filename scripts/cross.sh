#!/usr/bin/env bash
# Cross builds for the Raspberry Pi, verified on this x86 machine.
#
#   scripts/cross.sh [STEP] [TARGET...]
#
# STEP is one of
#   setup  install Debian's cross toolchains and qemu-user, the rustup targets,
#          and register qemu with binfmt_misc (see below)
#   build  release binaries with every Pi feature the manifest declares
#          (libcamera, gpio), checked against the size budget and for the
#          glibc they need
#   test   the test suite, run under qemu-user
#   smoke  end to end: the ARM `camnode run` under qemu sends synthetic frames
#          over loopback to an x86 `camnode hub`, and every saved JPEG must
#          decode to the frame size that was sent
#   all    (default) setup, build both, test aarch64, test armv7's libcamera
#          capture, smoke both
# TARGET is aarch64 and/or armv7 (default: both). `all` runs the whole suite
# only for aarch64, the issue's requirement: armv7's under qemu adds minutes
# for little that aarch64's and the armv7 smoke run do not already cover.
# What they do not cover is armv7's own libcamera build, so for armv7 `all`
# runs tests/libcamera_virtual.rs (libcamera's virtual camera end to end,
# about 15 s once compiled).
#
# Why Debian bookworm's cross toolchains: bookworm-based Raspberry Pi OS has
# the same glibc (2.36) and libstdc++ (GCC 12), so the binaries link against
# exactly what the Pi has. libjpeg-turbo is compiled from source for the
# target by turbojpeg-sys with cmake, which selects its NEON code; libzmq is
# Debian's (libzmq5 on the Pi), linked through the `links` override in
# .cargo/config.toml, which also names the compilers. With the `libcamera`
# feature, libcamera itself is cross-built by scripts/libcamera.sh from the
# same source as the host build.
#
# Where the target's -dev packages (scripts/target-dev-packages: libzmq3-dev
# and libcamera's build dependencies) come from:
#   aarch64  dpkg multiarch (libzmq3-dev:arm64...).
#   armv7    always a private sysroot (scripts/sysroot.sh): Debian's armhf
#            packages unpacked under the cache, keyed by their versions,
#            never installed into the system; libcamera.sh builds armv7's
#            libcamera into the same sysroot. Multiarch needs the armhf
#            index to carry the same versions as amd64's for every
#            Multi-Arch: same library, and the mirror's bookworm-security
#            armhf index lags amd64's (libssl3, liblzma5, linux-libc-dev),
#            which makes libzmq3-dev:armhf uninstallable. Always, not as a
#            fallback: one path that every run exercises, whatever state
#            the mirror is in.
#
# Settings (environment, all optional):
#   CARGO_TARGET_DIR     default ~/.cache/camnode/target-cross: outside the
#                        clone, so CI runs on the same machine reuse the
#                        compiled C libraries instead of rebuilding them
#   CAMNODE_FEATURES     features to build with, comma-separated (default:
#                        those of libcamera,gpio that Cargo.toml declares)
#   CAMNODE_SIZE_BUDGET  bytes the stripped aarch64 binary may take (6000000)
#   CAMNODE_HOST_BIN     an x86 camnode for the smoke runs' hub (default: a
#                        debug build in CARGO_TARGET_DIR)
set -euo pipefail

cd "$(dirname "$0")/.."
cache=${CAMNODE_CACHE:-$HOME/.cache/camnode}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target-cross}
size_budget=${CAMNODE_SIZE_BUDGET:-6000000}
# The newest glibc symbol version bookworm (and so Raspberry Pi OS bookworm)
# provides; a binary asking for more would not start on the Pi.
glibc_max=2.36

log() { echo "cross.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
# need_packages, armhf_sysroot, register_binfmt, forget_own_build
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
forget_own_build "$CARGO_TARGET_DIR"

step=${1:-all}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64 armv7)

# Per-target names: Rust triple, GNU triple, Debian architecture, qemu binary.
describe() {
    case $1 in
    aarch64) rust=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu deb=arm64 qemu=qemu-aarch64-static ;;
    armv7) rust=armv7-unknown-linux-gnueabihf gnu=arm-linux-gnueabihf deb=armhf qemu=qemu-arm-static ;;
    *) die "unknown target '$1': use aarch64 or armv7" ;;
    esac
    sysroot=/usr/$gnu
}

# --- setup ---------------------------------------------------------------------

setup() {
    local t pkgs=(qemu-user-static cmake pkg-config python3 libjpeg-turbo-progs)
    for t in "${targets[@]}"; do
        describe "$t"
        pkgs+=("gcc-$gnu" "g++-$gnu" "libc6-dev-$deb-cross")
        # libzmq is linked from the system (see .cargo/config.toml): for
        # armv7 from the private sysroot, made after the installs below.
        [ "$t" = armv7 ] && continue
        if ! grep -qx "$deb" <<<"$(dpkg --print-foreign-architectures)"; then
            log "dpkg --add-architecture $deb"
            dpkg --add-architecture "$deb"
            apt_updated=
        fi
        # The -dev packages camnode links (libcamera.sh installs its own).
        mapfile -t -O "${#pkgs[@]}" pkgs < <(awk -v arch="$deb" '!/^#/ && $2 == "camnode" { print $1 ":" arch }' \
            scripts/target-dev-packages)
    done
    need_packages "${pkgs[@]}"
    [[ " ${targets[*]} " != *" armv7 "* ]] || armhf_sysroot
    local installed
    installed=$(rustup target list --installed)
    for t in "${targets[@]}"; do
        describe "$t"
        grep -qx "$rust" <<<"$installed" || rustup target add "$rust" >&2
        register_binfmt "${qemu%-static}"
    done
}

# --- environment per target -------------------------------------------------

# Pi features this manifest declares, unless CAMNODE_FEATURES says otherwise.
features() {
    if [ -n "${CAMNODE_FEATURES+set}" ]; then
        echo "$CAMNODE_FEATURES"
        return
    fi
    python3 - <<'EOF'
import tomllib
declared = tomllib.load(open("Cargo.toml", "rb")).get("features", {})
print(",".join(f for f in ("libcamera", "gpio") if f in declared))
EOF
}

# Exports what cargo needs for target $1 beyond .cargo/config.toml: the cross
# libcamera when the feature is on, and the library path its qemu runs need.
target_env() {
    describe "$1"
    feats=$(features)
    local ld_path=$sysroot/lib
    if [ "$1" = armv7 ]; then
        # libzmq, libcamera's dependencies and theirs from the private
        # sysroot: -L for the link, -rpath-link for the libraries those
        # libraries need, and the same directories for the ARM loader under
        # qemu. (libcamera itself, installed in the sysroot, comes through
        # pkg-config: scripts/libcamera.sh's environment below.)
        armhf_sysroot
        local libdirs=("$armhf_root/usr/lib/$gnu" "$armhf_root/lib/$gnu") dir flags=
        for dir in "${libdirs[@]}"; do
            flags+=" -L native=$dir -C link-arg=-Wl,-rpath-link,$dir"
            ld_path+=:$dir
        done
        export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUSTFLAGS="${flags# }"
    fi
    libcamera_prefix=
    if [[ ",$feats," == *,libcamera,* ]]; then
        eval "$(scripts/libcamera.sh "$1")"
        local var=LIBCAMERA_PREFIX_${rust//-/_}
        libcamera_prefix=${!var}
        ld_path=$ld_path:$libcamera_prefix/lib
    fi
    # The runner of .cargo/config.toml plus LD_LIBRARY_PATH for the ARM
    # loader only (-E): the cross sysroot's libc first, so that a multiarch
    # libc6:$deb installed for libcamera's dependencies never pairs with the
    # sysroot's loader, then libcamera's prefix.
    local upper
    upper=$(echo "${rust//-/_}" | tr '[:lower:]' '[:upper:]')
    export "CARGO_TARGET_${upper}_RUNNER=$qemu -L $sysroot -E LD_LIBRARY_PATH=$ld_path"
    runner_ld_path=$ld_path
}

cargo_args() {
    echo "--target $rust${feats:+ --features $feats}"
}

# --- build -------------------------------------------------------------------

# Newest GLIBC_x.y symbol version the binary needs.
glibc_needed() {
    "$gnu-objdump" -T "$1" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1
}

build() {
    target_env "$1"
    local start=$SECONDS
    log "building $rust (features: ${feats:-none}) in $CARGO_TARGET_DIR"
    # shellcheck disable=SC2046 # word splitting of the argument list is intended
    cargo build --release $(cargo_args)
    local bin=$CARGO_TARGET_DIR/$rust/release/camnode secs=$((SECONDS - start))
    local size glibc
    size=$(stat -c %s "$bin")
    glibc=$(glibc_needed "$bin")
    local kind
    kind=$(file -b "$bin")
    [[ $kind == *"$(case $1 in aarch64) echo 'ARM aarch64' ;; armv7) echo 'ARM, EABI5' ;; esac)"* ]] ||
        die "$bin is not an $1 executable: $kind"
    dpkg --compare-versions "$glibc" le "$glibc_max" ||
        die "$bin needs GLIBC_$glibc, newer than bookworm's $glibc_max: it would not start on Raspberry Pi OS bookworm"
    log "$1: built in ${secs} s; $(printf "%'d" "$size") bytes stripped; needs glibc >= $glibc;" \
        "links $("$gnu-readelf" -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
    echo "$1 build_s=$secs size_bytes=$size glibc=$glibc features=${feats:-none}" >>"$summary"
    if [ "$1" = aarch64 ] && [ "$size" -gt "$size_budget" ]; then
        die "the aarch64 binary is $size bytes, over the budget of $size_budget"
    fi
}

# --- test --------------------------------------------------------------------

# run_tests TARGET [CARGO TEST ARGUMENTS]: the whole suite, or what the
# arguments select.
run_tests() {
    local target=$1
    shift
    target_env "$target"
    local start=$SECONDS
    log "testing $rust under $qemu${*:+: $*}"
    # Children the tests start (the camnode binary) reach qemu through
    # binfmt_misc, not through cargo's runner, so they get the sysroot and
    # library path from qemu's own environment variables.
    # Optimised code with debug assertions: the integration tests run whole
    # node/hub sessions with time limits, which unoptimised code under
    # emulation (some 50x slower than a native release build) cannot meet.
    local test_env=(QEMU_LD_PREFIX="$sysroot" QEMU_SET_ENV="LD_LIBRARY_PATH=$runner_ld_path"
        CARGO_PROFILE_DEV_OPT_LEVEL=3 CARGO_PROFILE_DEV_DEBUG=false)
    # The libcamera tests find the build (and its virtual camera's data
    # directory) through LIBCAMERA_PREFIX; under qemu that is the target's.
    [ -z "$libcamera_prefix" ] || test_env+=(LIBCAMERA_PREFIX="$libcamera_prefix")
    # shellcheck disable=SC2046
    env "${test_env[@]}" cargo test --no-fail-fast $(cargo_args) "$@"
    log "$target: tests${*:+ ($*)} passed under qemu in $((SECONDS - start)) s"
    echo "$target test_s=$((SECONDS - start))${*:+ tests='$*'}" >>"$summary"
}

# --- smoke -------------------------------------------------------------------

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

smoke() {
    target_env "$1"
    local node=$CARGO_TARGET_DIR/$rust/release/camnode
    [ -x "$node" ] || die "$node missing: run '$0 build $1' first"
    # The hub is the x86 build of the same tree: the smoke run checks that
    # the ARM node interoperates with a native peer. It needs no Pi feature.
    local hub_bin=${CAMNODE_HOST_BIN:-}
    if [ -z "$hub_bin" ]; then
        cargo build --quiet --bin camnode
        hub_bin=$CARGO_TARGET_DIR/debug/camnode
    fi
    # A hub built with the libcamera feature (CI's host build is) finds its
    # libcamera, which scripts/libcamera.sh built outside the system's
    # library path, through that build's LD_LIBRARY_PATH; taken in a
    # subshell so that nothing else in this run sees the host's settings.
    local hub_ld_path=${LD_LIBRARY_PATH:-}
    if grep -q 'libcamera.* not found' <<<"$(ldd "$hub_bin")"; then
        hub_ld_path=$(eval "$(scripts/libcamera.sh host)" && echo "$LD_LIBRARY_PATH")
    fi
    local dir frames=20 width=320 height=240 port start=$SECONDS
    dir=$(mktemp -d)
    port=$(free_port)
    log "smoke: $1 node under $qemu -> x86 hub on tcp://127.0.0.1:$port"
    # --count: the frames plus the Restart notice a node opens with, as
    # imagenode does.
    LD_LIBRARY_PATH=$hub_ld_path "$hub_bin" hub --bind "tcp://127.0.0.1:$port" --save "$dir/saved" --count $((frames + 1)) --idle 60 \
        --summary-json "$dir/hub.json" 2>"$dir/hub.log" &
    local hub_pid=$!
    local node_status=0 hub_status=0
    timeout 120 "$qemu" -L "$sysroot" -E "LD_LIBRARY_PATH=$runner_ld_path" "$node" run \
        --source "synthetic:${width}x$height" --hub "tcp://127.0.0.1:$port" --mode req \
        --frames "$frames" --rate max --send all --heartbeat 0 2>"$dir/node.log" || node_status=$?
    # After a clean node run the hub stops by itself at --count messages; a
    # node that failed may never send them, so its hub is stopped at once.
    [ "$node_status" = 0 ] || kill "$hub_pid" 2>/dev/null || true
    wait "$hub_pid" || hub_status=$?
    if [ "$node_status" != 0 ] || [ "$hub_status" != 0 ]; then
        log "node log:"
        cat "$dir/node.log" >&2
        log "hub log:"
        cat "$dir/hub.log" >&2
        die "smoke $1: node exit $node_status, hub exit $hub_status"
    fi
    local images bad
    read -r images bad < <(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["images"], s["bad"])' "$dir/hub.json")
    if [ "$images" != "$frames" ] || [ "$bad" != 0 ]; then
        die "smoke $1: the hub received $images images ($bad bad), expected $frames; see $dir"
    fi
    # Decode every saved file with libjpeg-turbo's own djpeg, independently
    # of camnode's decoder, and check the size.
    local jpg decoded=0 header
    while IFS= read -r -d '' jpg; do
        djpeg -pnm -outfile "$dir/frame.pnm" "$jpg" || die "smoke $1: djpeg cannot decode $jpg"
        header=$(head -c 20 "$dir/frame.pnm" | tr '\n' ' ')
        [[ $header == "P6 $width $height "* ]] || die "smoke $1: $jpg decodes to '$header', expected ${width}x$height"
        decoded=$((decoded + 1))
    done < <(find "$dir/saved" -name '*.jpg' -print0)
    [ "$decoded" = "$frames" ] || die "smoke $1: $decoded JPEG files saved, expected $frames"
    log "$1: smoke passed: $frames frames ${width}x$height from the $1 node decoded on the x86 hub in $((SECONDS - start)) s"
    echo "$1 smoke_s=$((SECONDS - start)) frames=$frames" >>"$summary"
    rm -rf "$dir"
}

# --- main --------------------------------------------------------------------

summary=$(mktemp)
trap 'rm -f "$summary"' EXIT

case $step in
setup) setup ;;
build) for t in "${targets[@]}"; do build "$t"; done ;;
test) for t in "${targets[@]}"; do run_tests "$t"; done ;;
smoke) for t in "${targets[@]}"; do smoke "$t"; done ;;
all)
    setup
    for t in "${targets[@]}"; do build "$t"; done
    for t in "${targets[@]}"; do
        case $t in
        aarch64) run_tests "$t" ;;
        armv7) run_tests "$t" --test libcamera_virtual ;;
        esac
    done
    for t in "${targets[@]}"; do smoke "$t"; done
    ;;
*) die "unknown step '$step': use setup, build, test, smoke or all" ;;
esac

if [ -s "$summary" ]; then
    log "summary:"
    sed 's/^/cross.sh:   /' "$summary" >&2
fi
