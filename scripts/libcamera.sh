#!/usr/bin/env bash
# Builds libcamera from Debian's source package and installs it into a cache
# directory outside the clone, so that camnode's `libcamera` feature can be
# built and tested on a machine whose own Debian release ships no libcamera
# new enough (bookworm has 0.0.3; the `libcamera` crate needs 0.4 or later).
#
#   scripts/libcamera.sh [host|aarch64|armv7]
#
# The source comes from a newer Debian suite through a private apt
# configuration (its own sources list, lists and cache under the cache
# directory), so the system's apt setup is never touched. Only the virtual
# pipeline handler (a camera that needs no hardware, used by the tests) and
# uvcvideo are built, with no IPA modules and none of libcamera's own tools;
# for aarch64 also vimc and its IPA module (signed, so that it loads
# in-process), the camera of the emulated Pi of scripts/pi-vm.sh.
# aarch64 and armv7 are cross-built from the same source with Debian's cross
# compilers, for the Raspberry Pi release builds. Their build dependencies
# (the "libcamera" lines of scripts/target-dev-packages) come:
#   aarch64  through dpkg multiarch (libyaml-dev:arm64...);
#   armv7    from the private armhf sysroot of scripts/sysroot.sh (the same
#            one cross.sh links camnode against), never through dpkg:
#            the mirror's armhf security index makes multiarch installs
#            fail (see scripts/sysroot.sh). The build is installed into that
#            sysroot, so one PKG_CONFIG_SYSROOT_DIR serves libcamera's .pc
#            files and its dependencies' (pkg-config prefixes every path but
#            those already under the sysroot); a new sysroot (a security
#            update in its packages) gets a new build.
#
# Each build lands in $CAMNODE_CACHE/libcamera-VERSION-ARCH (CAMNODE_CACHE
# defaults to ~/.cache/camnode), for armv7 in SYSROOT/opt/libcamera-VERSION,
# and is reused as soon as its `.complete` marker names the pipelines and IPA
# modules this script builds for the target. The script prints,
# on stdout, the shell lines that point cargo at the build; the same lines
# are kept in the prefix's env.sh:
#
#   eval "$(scripts/libcamera.sh host)"
#
# Settings, all optional:
#   LIBCAMERA_VERSION  upstream version to use, e.g. 0.7.2 (default: the newest
#                      already cached, else the newest Debian offers in range)
#   LIBCAMERA_SUITES   Debian suites to take the source from, tried newest
#                      version first (default: "sid forky trixie-backports trixie")
#   DEBIAN_MIRROR      default: http://deb.debian.org/debian
set -euo pipefail

target=${1:-host}
scripts=$(cd "$(dirname "$0")" && pwd)
cache=${CAMNODE_CACHE:-$HOME/.cache/camnode}
suites=${LIBCAMERA_SUITES:-sid forky trixie-backports trixie}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The libcamera crate 0.7 supports libcamera 0.4 to 0.7, and the issue asks for
# 0.5 or newer; a later minor version may change the ABI under the crate.
min_version=0.5
max_version_excl=0.8

mkdir -p "$cache"

log() { echo "libcamera.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
# need_packages
# shellcheck source=scripts/lib.sh
source "$scripts/lib.sh"

# The pipeline handlers and IPA modules of each target's build; recorded in
# its `.complete`, so a build made with others is made again.
pipelines=virtual,uvcvideo
ipas=
case $target in
host)
    arch=$(uname -m)
    triple=
    deb_arch=$(dpkg --print-architecture)
    ;;
aarch64)
    arch=aarch64
    triple=aarch64-linux-gnu
    deb_arch=arm64
    rust_target=aarch64-unknown-linux-gnu
    meson_cpu_family=aarch64
    meson_cpu=aarch64
    pipelines=virtual,uvcvideo,vimc
    ipas=vimc
    ;;
armv7)
    arch=armv7
    triple=arm-linux-gnueabihf
    deb_arch=armhf
    rust_target=armv7-unknown-linux-gnueabihf
    meson_cpu_family=arm
    meson_cpu=armv7
    ;;
*)
    die "unknown target '$target': use host, aarch64 or armv7"
    ;;
esac

# --- Debian packages ---------------------------------------------------------

# What linking against the build needs: the libraries libcamera links (for
# the target architecture), and for the `libcamera` crate pkg-config and
# libclang (its bindgen step).
target_runtime_libs=(libyaml-0-2 libudev1 libyuv0 libssl3)
crate_tools=(pkgconf libclang-dev clang)
# What meson needs to build it. meson, ninja and the code generators run on
# the build machine; the -dev libraries are for the target architecture.
build_tools=(meson ninja-build pkgconf g++ python3-ply python3-jinja2 python3-yaml xz-utils openssl)
mapfile -t target_dev_libs < <(awk '!/^#/ && $2 == "libcamera" { print $1 }' "$scripts/target-dev-packages")

# armv7: the private sysroot holds the -dev libraries and their runtime
# libraries (for the qemu runs); dpkg installs only tools for the host.
sysroot=
if [ "$target" = armv7 ]; then
    sysroot=$("$scripts/sysroot.sh" armhf)
    crate_tools+=("gcc-$triple" "g++-$triple" "libc6-dev-$deb_arch-cross")
    target_runtime_libs=()
    target_dev_libs=()
elif [ -n "$triple" ]; then
    # Not `| grep -q`: with pipefail, grep quitting at the first match can
    # fail the pipe (dpkg killed by SIGPIPE) and send this into the branch.
    if ! grep -qx "$deb_arch" <<<"$(dpkg --print-foreign-architectures)"; then
        log "dpkg --add-architecture $deb_arch"
        dpkg --add-architecture "$deb_arch"
        # The next install must fetch the new architecture's package lists.
        apt_updated=
    fi
    crate_tools+=("gcc-$triple" "g++-$triple" "libc6-dev-$deb_arch-cross")
    target_runtime_libs=("${target_runtime_libs[@]/%/:$deb_arch}")
    target_dev_libs=("${target_dev_libs[@]/%/:$deb_arch}")
fi
runtime_packages=("${target_runtime_libs[@]}" "${crate_tools[@]}")

# --- Which version -----------------------------------------------------------

# Upstream part of a Debian version: no epoch, no Debian revision.
upstream_of() {
    local v=${1#*:}
    echo "${v%-*}"
}

in_range() {
    dpkg --compare-versions "$1" ge "$min_version" && dpkg --compare-versions "$1" lt "$max_version_excl"
}

# Newest version among directories named PREFIX-VERSION[SUFFIX] that hold a
# `.complete` marker.
newest_cached() {
    local pattern=$1 suffix=$2 dir v best=
    for dir in $pattern; do
        [ -f "$dir/.complete" ] || continue
        v=${dir##*/libcamera-}
        v=${v%"$suffix"}
        in_range "$v" || continue
        if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best=$v; fi
    done
    echo "$best"
}

version=${LIBCAMERA_VERSION:-}
if [ -z "$version" ]; then
    if [ -n "$sysroot" ]; then
        version=$(newest_cached "$sysroot/opt/libcamera-*" "")
    else
        version=$(newest_cached "$cache/libcamera-*-$arch" "-$arch")
    fi
fi
if [ -z "$version" ]; then
    version=$(newest_cached "$cache/src/libcamera-*" "")
fi

# --- Environment for cargo -----------------------------------------------------

emit_env() {
    local prefix=$1 env_file=$1/env.sh
    if [ -z "$triple" ]; then
        cat >"$env_file" <<EOF
export LIBCAMERA_PREFIX='$prefix'
export PKG_CONFIG_PATH='$prefix/lib/pkgconfig'\${PKG_CONFIG_PATH:+:\$PKG_CONFIG_PATH}
export LD_LIBRARY_PATH='$prefix/lib'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
EOF
    else
        local t=${rust_target//-/_} pc_dirs="/usr/lib/$triple/pkgconfig:/usr/share/pkgconfig"
        # Per-target variables, so that host builds in the same shell are
        # unaffected. pkg-config must see only the target's .pc files: this
        # build's, then those of its dependencies: multiarch's, or the
        # sysroot's, whose paths pkg-config then moves under the sysroot.
        # (The cross compilers and linker are named in .cargo/config.toml.)
        [ -z "$sysroot" ] || pc_dirs="$sysroot/usr/lib/$triple/pkgconfig:$sysroot/usr/share/pkgconfig"
        cat >"$env_file" <<EOF
export LIBCAMERA_PREFIX_$t='$prefix'
export PKG_CONFIG_ALLOW_CROSS=1
export PKG_CONFIG_PATH_$t='$prefix/lib/pkgconfig'
export PKG_CONFIG_LIBDIR_$t='$pc_dirs'
EOF
        [ -z "$sysroot" ] || echo "export PKG_CONFIG_SYSROOT_DIR_$t='$sysroot'" >>"$env_file"
    fi
    cat "$env_file"
}

prefix_of() {
    if [ -n "$sysroot" ]; then
        echo "$sysroot/opt/libcamera-$1"
    else
        echo "$cache/libcamera-$1-$arch"
    fi
}

# What a build's `.complete` says it has. Builds made before the marker
# named anything had the pipelines every target has.
built_with() {
    local marker=$1/.complete
    [ -f "$marker" ] || return 0
    if [ -s "$marker" ]; then cat "$marker"; else echo "pipelines=virtual,uvcvideo ipas="; fi
}
wanted="pipelines=$pipelines ipas=$ipas"

if [ -n "$version" ] && [ "$(built_with "$(prefix_of "$version")")" = "$wanted" ]; then
    log "using cached $(prefix_of "$version")"
    need_packages "${runtime_packages[@]}"
    emit_env "$(prefix_of "$version")"
    exit 0
fi

need_packages "${runtime_packages[@]}" "${build_tools[@]}" "${target_dev_libs[@]}"

# --- Source --------------------------------------------------------------------

# apt-get with a configuration of its own: nothing under /etc/apt or
# /var/lib/apt is read for sources or written.
apt_dir=$cache/apt
apt_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list"
    -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache"
    # The cache lives in root's home, which apt's unprivileged _apt user
    # cannot enter.
    -o "APT::Sandbox::User=root"
)

fetch_source() {
    mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    local suite
    : >"$apt_dir/sources.list"
    for suite in $suites; do
        echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" \
            >>"$apt_dir/sources.list"
    done
    log "fetching source indexes for: $suites"
    apt-get "${apt_opts[@]}" update -qq >&2 || log "some suites could not be updated; trying the rest"

    # Every libcamera version the suites offer, newest first. An older one is
    # tried when a newer one's files are gone from the mirror.
    local versions v up dl
    versions=$(apt-cache "${apt_opts[@]}" showsrc libcamera 2>/dev/null |
        sed -n 's/^Version: //p' | sort -u | sort -r -V)
    [ -n "$versions" ] || die "no libcamera source package in suites '$suites' of $mirror"
    for v in $versions; do
        up=$(upstream_of "$v")
        in_range "$up" || continue
        if [ -n "${LIBCAMERA_VERSION:-}" ] && [ "$up" != "$LIBCAMERA_VERSION" ]; then continue; fi
        dl=$(mktemp -d "$cache/src/download.XXXXXX")
        log "downloading libcamera $v"
        if (cd "$dl" && apt-get "${apt_opts[@]}" source --download-only -qq "libcamera=$v" >&2); then
            local src=$cache/src/libcamera-$up
            rm -rf "$src"
            mkdir -p "$src"
            tar -xf "$dl"/libcamera_"$up".orig.tar.* -C "$src" --strip-components=1
            rm -rf "$dl"
            touch "$src/.complete"
            echo "$up"
            return 0
        fi
        rm -rf "$dl"
        log "libcamera $v could not be downloaded; trying an older version"
    done
    die "no libcamera ${LIBCAMERA_VERSION:-between $min_version and $max_version_excl} could be downloaded from suites '$suites'"
}

mkdir -p "$cache/src"
if [ -z "$version" ] || [ ! -f "$cache/src/libcamera-$version/.complete" ]; then
    version=$(fetch_source)
fi
src=$cache/src/libcamera-$version
prefix=$(prefix_of "$version")

# --- Build -------------------------------------------------------------------

# Prints -Dname=off for an option of this libcamera version, in the form its
# type takes (some were booleans before becoming features), or nothing when
# the version has no such option.
option_off() {
    local type
    type=$(awk -v name="$1" -v q="'" '
        index($0, "option(" q name q) == 1 { found = 1 }
        found && /type *:/ { match($0, q "[a-z]+" q); print substr($0, RSTART + 1, RLENGTH - 2); exit }
    ' "$options_file")
    case $type in
    feature) echo "-D$1=disabled" ;;
    boolean) echo "-D$1=false" ;;
    esac
}

options_file=$src/meson.options
[ -f "$options_file" ] || options_file=$src/meson_options.txt

build=$cache/build/libcamera-$version-$arch
rm -rf "$build" "$prefix"
mkdir -p "$build"

# shellcheck disable=SC2054 # the comma is meson's list syntax (-Dpipelines)
meson_args=(
    --prefix="$prefix"
    --libdir=lib
    --buildtype=release
    -Dwerror=false
    "-Dpipelines=$pipelines"
    "-Dipas=$ipas"
    -Dudev=enabled
)
for opt in cam qcam gstreamer v4l2 lc-compliance pycamera documentation tracing android test libdw libunwind; do
    arg=$(option_off "$opt")
    [ -n "$arg" ] && meson_args+=("$arg")
done

pc_config="pkg_config_libdir = ['/usr/lib/$triple/pkgconfig', '/usr/share/pkgconfig']"
if [ -n "$sysroot" ]; then
    # The sysroot's libraries: pkg-config reads their .pc files with every
    # path moved under the sysroot (sys_root sets PKG_CONFIG_SYSROOT_DIR);
    # headers without a .pc (libyuv's) are searched after the toolchain's
    # own (-idirafter: the sysroot has no libc headers to shadow glibc's),
    # and -rpath-link finds the libraries those libraries need. The
    # compiler keeps the toolchain's sysroot (--sysroot would lose glibc).
    compile_args='' link_args=''
    for dir in "$sysroot/usr/include/$triple" "$sysroot/usr/include"; do
        compile_args+="'-idirafter', '$dir', "
    done
    for dir in "$sysroot/usr/lib/$triple" "$sysroot/lib/$triple"; do
        link_args+="'-L$dir', '-Wl,-rpath-link,$dir', "
    done
    pc_config="sys_root = '$sysroot'
pkg_config_libdir = ['$sysroot/usr/lib/$triple/pkgconfig', '$sysroot/usr/share/pkgconfig']

[built-in options]
c_args = [${compile_args%, }]
cpp_args = [${compile_args%, }]
c_link_args = [${link_args%, }]
cpp_link_args = [${link_args%, }]"
fi
if [ -n "$triple" ]; then
    cat >"$build/cross.ini" <<EOF
[binaries]
c = '$triple-gcc'
cpp = '$triple-g++'
ar = '$triple-ar'
strip = '$triple-strip'
pkgconfig = 'pkg-config'

[properties]
$pc_config

[host_machine]
system = 'linux'
cpu_family = '$meson_cpu_family'
cpu = '$meson_cpu'
endian = 'little'
EOF
    meson_args+=(--cross-file "$build/cross.ini")
fi

# libcamera's code generators run `python3` from PATH and need ply, jinja2 and
# yaml: Debian's python3 has them (python3-ply & co.), a pyenv or venv python
# that shadows it usually does not.
export PATH=/usr/bin:/bin:$PATH

log "building libcamera $version for $arch in $build"
start=$(date +%s)
meson setup "$build/out" "$src" "${meson_args[@]}" >"$build/setup.log" 2>&1 ||
    { tail -40 "$build/setup.log" >&2; die "meson setup failed; full log: $build/setup.log"; }
ninja -C "$build/out" install >"$build/ninja.log" 2>&1 ||
    { tail -40 "$build/ninja.log" >&2; die "build failed; full log: $build/ninja.log"; }
log "built and installed libcamera $version for $arch in $(($(date +%s) - start)) s"

# The tests rewrite the virtual camera's configuration; make sure its
# directory exists even if a future version stops installing a sample.
mkdir -p "$prefix/share/libcamera/pipeline/virtual"
rm -rf "$build"
echo "$wanted" >"$prefix/.complete"
emit_env "$prefix"
