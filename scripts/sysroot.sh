#!/usr/bin/env bash
# A private sysroot of Debian bookworm -dev packages for one foreign
# architecture, for cross builds that cannot take them through dpkg multiarch.
#
#   scripts/sysroot.sh DEB_ARCH [PACKAGE...]
#
# Without PACKAGEs: every package of scripts/target-dev-packages, the one
# list of what camnode's and libcamera's cross builds link against, so that
# every script asking for the armhf sysroot gets the same one.
#
# Multiarch installs need every `Multi-Arch: same` library at the same version
# for the host and the foreign architecture. When the mirror serves a foreign
# index older than the host's (bookworm-security armhf lagging amd64 for
# libssl3, liblzma5, linux-libc-dev), `apt-get install libzmq3-dev:armhf`
# cannot be satisfied at all. This script does not touch the system's dpkg
# database: apt runs with a configuration of its own (sources, lists, cache
# and an empty dpkg status under the cache directory, architecture DEB_ARCH
# only), resolves the packages' dependency closure, downloads the .debs and
# unpacks them with `dpkg -x` into
#
#   $CAMNODE_CACHE/sysroot-DEB_ARCH-KEY      (CAMNODE_CACHE: ~/.cache/camnode)
#
# where KEY is a hash of the resolved package=version list, so a security
# update of any package in the closure gives a new sysroot and an unchanged
# closure reuses the old one (it is complete once `.complete` names the
# current layout).
#
# scripts/libcamera.sh armv7 builds libcamera against the sysroot and
# installs it into it, under opt/libcamera-VERSION.
#
# What dpkg would have recorded, had it installed them, is kept for every
# package of the closure under `.deb-info/`: PACKAGE/ is the package's
# control area (`dpkg-deb -e`: control, shlibs, symbols...) and PACKAGE.list
# the paths it unpacked, one a line. Packaging needs them: dpkg-shlibdeps
# turns the symbols files into Depends with minimum versions, and the
# package checks find which package ships a library.
#
# The C library, libgcc and libstdc++ are not unpacked (only their control
# areas are kept): the cross toolchain (gcc-*-linux-gnu*, libc6-dev-*-cross)
# provides them, and a single libc for the compiler, the linker and the qemu
# runs avoids pairing one glibc build's loader with another's libc.
#
# Prints the sysroot's path on stdout.
#
# Settings, all optional:
#   SYSROOT_SUITES  default: "bookworm bookworm-updates bookworm-security"
#   DEBIAN_MIRROR   default: http://deb.debian.org/debian
#   CAMNODE_ARMHF_SYSROOT  the armhf sysroot of every package, already
#                   resolved in this run (cross.sh and package.sh export it):
#                   printed as it is instead of updating apt's lists again
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 DEB_ARCH [PACKAGE...]" >&2; exit 2; }
arch=$1
shift
packages=("$@")
if [ "$arch" = armhf ] && [ ${#packages[@]} -eq 0 ] && [ -e "${CAMNODE_ARMHF_SYSROOT:-/nonexistent}/.complete" ]; then
    echo "$CAMNODE_ARMHF_SYSROOT"
    exit 0
fi
if [ ${#packages[@]} -eq 0 ]; then
    mapfile -t packages < <(awk '!/^#/ && NF { print $1 }' "$(dirname "$0")/target-dev-packages")
fi
cache=${CAMNODE_CACHE:-$HOME/.cache/camnode}
suites=${SYSROOT_SUITES:-bookworm bookworm-updates bookworm-security}

log() { echo "sysroot.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
# private_apt
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

# Provided by the cross toolchain (see above).
toolchain_packages=" libc6 libc6-dev linux-libc-dev libcrypt1 libcrypt-dev libgcc-s1 libgcc-12-dev libstdc++6 libstdc++-12-dev gcc-12-base "

apt_dir=$cache/apt-$arch
# shellcheck disable=SC2086 # the suites are words
private_apt "$apt_dir" "$arch" main $suites

# The closure, as "package version" lines, from a simulated install into the
# empty status.
resolved=$(apt-get "${apt_opts[@]}" install -s "${packages[@]}" 2>&1) ||
    { echo "$resolved" >&2; die "cannot resolve ${packages[*]} for $arch from $suites"; }
closure=$(sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*/\1 \2/p' <<<"$resolved" | sort)
[ -n "$closure" ] || die "apt resolved nothing for ${packages[*]}"
key=$(sha256sum <<<"$closure" | cut -c1-12)
root=$cache/sysroot-$arch-$key

# Written to .complete; a sysroot made by an older version of this script,
# without .deb-info, is made again.
layout=2
if [ "$(cat "$root/.complete" 2>/dev/null)" = "layout $layout" ]; then
    log "using cached $root"
    echo "$root"
    exit 0
fi

wanted=()
while read -r pkg version; do
    wanted+=("$pkg=$version")
done <<<"$closure"

log "downloading ${#wanted[@]} packages for $root"
start=$SECONDS
debs=$apt_dir/debs
rm -rf "$debs" "$root"
mkdir -p "$debs" "$root/.deb-info"
(cd "$debs" && apt-get "${apt_opts[@]}" download -qq "${wanted[@]}" >&2) ||
    die "downloading the $arch packages failed"
for deb in "$debs"/*.deb; do
    pkg=$(dpkg-deb --field "$deb" Package)
    dpkg-deb --control "$deb" "$root/.deb-info/$pkg"
    [[ $toolchain_packages == *" $pkg "* ]] && continue
    dpkg -x "$deb" "$root"
    dpkg-deb --fsys-tarfile "$deb" | tar -t | sed -n 's|^\./\(.*[^/]\)$|/\1|p' >"$root/.deb-info/$pkg.list"
done
rm -rf "$debs"
# The .pc files' prefix is /usr; pkg-config's sysroot handling prefixes the
# -I/-L paths it prints, so nothing is rewritten here.
echo "$closure" >"$root/packages"
echo "layout $layout" >"$root/.complete"
log "downloaded ${#wanted[@]} packages, unpacked those the toolchain does not provide ($(du -sh "$root" | cut -f1)) in $((SECONDS - start)) s"
echo "$root"
