#!/usr/bin/env bash
# Debian packages for the Pi fleet, and every check of the deployment path
# that can run without a Pi or Docker.
#
#   scripts/package.sh [TARGET...]      (aarch64 and/or armv7; default both)
#
# For each target it builds the release binary (scripts/cross.sh build, a
# no-op when it is current), packages it with cargo-deb as
# camnode_VERSION_arm64.deb / _armhf.deb in $DEB_DIR (default target/debian,
# where deploy/fleet.sh looks), and checks the package:
#   - dpkg-deb --info / --contents, printed, and the pieces a Pi needs in
#     them: the binary for the right architecture, the unit, the config as a
#     conffile, maintainer scripts that create the user and state directory;
#   - Depends names a package for every shared library the binary links;
#   - systemd-analyze verify on the unit as installed by the package (any
#     warning fails), and its sandbox exposure score;
#   - a real installation: apt installs the package into a Debian bookworm
#     root of the package's architecture (arm64 or armhf, made once with
#     mmdebstrap and cached; its ARM programs run through qemu-user via
#     binfmt_misc), which resolves the Depends from Debian's archive and
#     runs the maintainer scripts; then the camnode user, groups, state
#     directory and enabled unit are checked, the installed binary sends
#     frames from inside the root to an x86 hub on loopback, a reinstall
#     keeps a locally edited config, and a purge removes the state;
# then, once for the tree:
#   - Cross.toml parses, names Dockerfiles and contexts that exist, and the
#     Dockerfiles' shell steps parse (Docker itself is not available here:
#     the images are not built);
#   - deploy/fleet.sh passes shellcheck, its --dry-run against
#     deploy/hosts.example plans every host, and a real run against hosts
#     that refuse connections on loopback reports one failure line per host
#     without stopping at the first.
#
# Settings: DEB_DIR as above; DEBIAN_MIRROR, the armhf root's mirror
# (default http://deb.debian.org/debian); CARGO_TARGET_DIR, CAMNODE_FEATURES
# and CAMNODE_HOST_BIN as for scripts/cross.sh.
set -euo pipefail
# Functions whose output is captured ($(...)) stop at their first failure
# too, rather than carrying on with errexit off.
shopt -s inherit_errexit

cd "$(dirname "$0")/.."
repo=$PWD
cache=${CAMNODE_CACHE:-$HOME/.cache/camnode}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target-cross}
deb_dir=${DEB_DIR:-$repo/target/debian}
cargo_deb_version=3.8.0
cargo_deb=$cache/bin/cargo-deb
# systemd-analyze security's exposure, in tenths: 0 is fully locked down,
# 100 unrestricted; the unit scores about 17.
max_exposure=20
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64 armv7)

log() { echo "package.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
# need_packages, armhf_sysroot, forget_own_build
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
forget_own_build "$CARGO_TARGET_DIR"

describe() {
    case $1 in
    aarch64) rust=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu deb=arm64 elf='ARM aarch64' ;;
    armv7) rust=armv7-unknown-linux-gnueabihf gnu=arm-linux-gnueabihf deb=armhf elf='ARM, EABI5' ;;
    *) die "unknown target '$1': use aarch64 or armv7" ;;
    esac
}

# cargo-deb, built once into the cache.
ensure_cargo_deb() {
    if [ -x "$cargo_deb" ] && [ "$("$cargo_deb" --version)" = "cargo-deb $cargo_deb_version" ]; then
        return
    fi
    log "installing cargo-deb $cargo_deb_version into $cache"
    cargo install cargo-deb --version "$cargo_deb_version" --locked --root "$cache" >&2
}

# --- one package --------------------------------------------------------------

package() {
    describe "$1"
    bash scripts/cross.sh build "$1"
    [ "$1" != armv7 ] || armhf_sysroot
    local start=$SECONDS depends
    # First, and assigned on its own so that a failure stops the run before
    # a package with cargo-deb's incomplete Depends is written.
    depends=$(package_depends "$1" "$CARGO_TARGET_DIR/$rust/release/camnode")
    mkdir -p "$deb_dir"
    # --no-build: the binary is the one cross.sh built and checked.
    # The package's path, for the steps after this one. --quiet: cargo-deb's
    # own dependency lookup cannot see a libcamera built outside dpkg and
    # says so at length; set_depends below does it right.
    packaged=$("$cargo_deb" --quiet --no-build --target "$rust" --output "$deb_dir" | tail -1)
    [ -f "$packaged" ] || die "cargo-deb did not report a package path (got '$packaged')"
    set_depends "$packaged" "$depends"
    log "$1: $packaged ($(stat -c %s "$packaged") bytes) in $((SECONDS - start)) s"
    check_package "$packaged"
}

# The sonames of the shared libraries a target binary links.
needed_libs() {
    "$gnu-readelf" -d "$1" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'
}

# The package that ships the library $1 of the target (empty if none does):
# for armv7 from the file lists of the private sysroot, whose packages dpkg's
# database does not know, otherwise from that database (multiarch).
library_owner() {
    local soname=$1 list
    if [ "$deb" = armhf ]; then
        list=$(grep -lx -e "/usr/lib/$gnu/$soname" -e "/lib/$gnu/$soname" "$armhf_root"/.deb-info/*.list | head -1 || true)
        [ -z "$list" ] || basename "$list" .list
    else
        dpkg -S "*/$gnu/$soname" 2>/dev/null | grep "^[^ ]*:$deb:" | head -1 | cut -d: -f1 || true
    fi
}

# Debian and the Raspberry Pi archive both name libcamera's runtime package
# after its soname: libcamera.so.0.7 and libcamera-base.so.0.7 are in
# libcamera0.7.
libcamera_package() {
    local soname=$1
    echo "libcamera${soname##*.so.}"
}

# The prefix of the libcamera build scripts/libcamera.sh made for target $1.
libcamera_prefix() {
    eval "$(scripts/libcamera.sh "$1")"
    local var=LIBCAMERA_PREFIX_${rust//-/_}
    echo "${!var}"
}

# What dpkg-shlibdeps derives from the symbols files of the libraries that
# the target's ELF files link (${shlibs:Depends}, with minimum versions):
#   shlib_depends [-lLIBDIR...] FILE...
# -l adds a directory to search for libraries built outside dpkg (a library
# no package owns counts as one being built, and needs no Depends).
shlib_depends() {
    local search=() files=() arg dir info soname file out
    for arg; do
        case $arg in
        -l*) search+=("$arg") ;;
        *) files+=("$(realpath "$arg")") ;;
        esac
    done
    dir=$(mktemp -d)
    mkdir "$dir/debian"
    : >"$dir/debian/control"
    if [ "$deb" = armhf ]; then
        # The libraries come from the private sysroot, which dpkg's database
        # does not know. dpkg-shlibdeps takes a library no installed package
        # owns for one being built, and reads the symbols files of the
        # packages being built (debian/*/DEBIAN): there go the control
        # areas of the sysroot's packages.
        for info in "$armhf_root"/.deb-info/*/; do
            info=${info%/}
            mkdir "$dir/debian/${info##*/}"
            ln -s "$info" "$dir/debian/${info##*/}/DEBIAN"
        done
        search+=("-l$armhf_root/usr/lib/$gnu" "-l$armhf_root/lib/$gnu" "-l$dir/toolchain")
        # glibc and libgcc are the cross toolchain's, whose packages
        # (libc6-armhf-cross...) are not what a Pi installs. Copies of them
        # (links would lead dpkg-shlibdeps back to those packages) are
        # unowned, so their Depends too come from the symbols files of the
        # sysroot's libc6 and libgcc-s1, as on a Pi.
        mkdir "$dir/toolchain"
        for file in "${files[@]}"; do
            for soname in $(needed_libs "$file"); do
                [ -n "$(library_owner "$soname")" ] || [ ! -e "/usr/$gnu/lib/$soname" ] ||
                    cp -L "/usr/$gnu/lib/$soname" "$dir/toolchain/"
            done
        done
    fi
    out=$(cd "$dir" && DEB_HOST_ARCH=$deb dpkg-shlibdeps --ignore-missing-info "${search[@]}" -O "${files[@]}" 2>"$dir/log") ||
        { cat "$dir/log" >&2; die "dpkg-shlibdeps failed on ${files[*]}"; }
    rm -rf "$dir"
    sed -n 's/^shlibs:Depends=//p' <<<"$out"
}

# Depends for the binary of target $1: what dpkg-shlibdeps derives from the
# libraries' symbol files (with minimum versions), plus the libcamera
# package, which dpkg-shlibdeps cannot know when libcamera was built from
# source by scripts/libcamera.sh, plus adduser for the postinst and procps
# for the kill(1) of the unit's ExecReload=.
package_depends() {
    local bin=$2 search=() extra=() soname out
    for soname in $(needed_libs "$bin"); do
        case $soname in
        libcamera.so.*)
            search+=("-l$(libcamera_prefix "$1")/lib")
            extra+=("$(libcamera_package "$soname")")
            ;;
        esac
    done
    out=$(shlib_depends "${search[@]}" "$bin")
    [ -n "$out" ] || die "dpkg-shlibdeps found no dependencies for $bin"
    echo "adduser, procps, $out${extra[*]:+, ${extra[*]}}"
}

# Rewrites the Depends field of a built package.
set_depends() {
    local pkg=$1 depends=$2 dir
    dir=$(mktemp -d)
    dpkg-deb --raw-extract "$pkg" "$dir/pkg"
    sed -i "s/^Depends: .*/Depends: $depends/" "$dir/pkg/DEBIAN/control"
    dpkg-deb --root-owner-group -Zxz --build "$dir/pkg" "$pkg" >/dev/null
    rm -rf "$dir"
}

check_package() {
    local pkg=$1 work
    work=$(mktemp -d)
    echo "--- dpkg-deb --info $pkg"
    dpkg-deb --info "$pkg"
    echo "--- dpkg-deb --contents $pkg"
    dpkg-deb --contents "$pkg"

    field() { dpkg-deb --field "$pkg" "$1"; }
    [ "$(field Package)" = camnode ] || die "$pkg: Package is '$(field Package)'"
    [ "$(field Architecture)" = "$deb" ] || die "$pkg: Architecture is '$(field Architecture)', expected $deb"

    dpkg-deb --extract "$pkg" "$work/root"
    dpkg-deb --control "$pkg" "$work/control"
    local bin=$work/root/usr/bin/camnode
    [ -x "$bin" ] || die "$pkg: no executable /usr/bin/camnode"
    [[ $(file -b "$bin") == *"$elf"* ]] || die "$pkg: /usr/bin/camnode is not $elf: $(file -b "$bin")"
    [ -f "$work/root/etc/camnode/camnode.toml" ] || die "$pkg: no /etc/camnode/camnode.toml"
    grep -qx /etc/camnode/camnode.toml "$work/control/conffiles" ||
        die "$pkg: /etc/camnode/camnode.toml is not a conffile, so an upgrade would overwrite local settings"
    local unit
    unit=$(find "$work/root" -name camnode.service -path '*/systemd/system/*')
    [ -n "$unit" ] || die "$pkg: no camnode.service"
    cmp -s "$unit" deploy/camnode.service || die "$pkg: the packaged unit differs from deploy/camnode.service"

    # Maintainer scripts: cargo-deb must have replaced the DEBHELPER token
    # with its systemd snippets, and what the postinst promises must be there.
    local script
    for script in postinst prerm postrm; do
        [ -f "$work/control/$script" ] || die "$pkg: no $script"
        sh -n "$work/control/$script" || die "$pkg: $script does not parse"
        ! grep -q '#DEBHELPER#' "$work/control/$script" || die "$pkg: $script still has the DEBHELPER token"
    done
    grep -q 'adduser --quiet --system' "$work/control/postinst" || die "$pkg: postinst does not create the camnode user"
    grep -q 'deb-systemd-helper enable camnode.service' "$work/control/postinst" ||
        die "$pkg: postinst does not enable camnode.service"
    grep -q 'install -d -o camnode -g camnode -m 0750 /var/lib/camnode' "$work/control/postinst" ||
        die "$pkg: postinst does not create /var/lib/camnode"

    check_depends "$pkg" "$bin"
    verify_unit "$work/root"
    rm -rf "$work"
}

# Every shared library the binary links must come from a package named in
# Depends (library_owner: the package of the library the build linked
# against), so apt on the Pi pulls them in.
check_depends() {
    local pkg=$1 bin=$2 depends names soname owner
    depends=$(dpkg-deb --field "$pkg" Depends)
    log "$deb Depends: $depends"
    # Package names alone: no versions, alternatives split, no :arch.
    names=$(sed 's/^ *//; s/[ (:].*//' <<<"${depends//[,|]/$'\n'}")
    grep -qx adduser <<<"$names" || die "$pkg: Depends lacks adduser (postinst needs it)"
    for soname in $(needed_libs "$bin"); do
        owner=$(library_owner "$soname")
        case $soname in libcamera.so.* | libcamera-base.so.*) owner=$(libcamera_package "$soname") ;; esac
        if [ -z "$owner" ]; then
            # Without multiarch, glibc and libgcc come from the cross
            # sysroot packages (libc6-arm64-cross...), which mirror these.
            case $soname in
            libc.so.* | libm.so.* | ld-linux*) owner=libc6 ;;
            libgcc_s.so.*) owner=libgcc-s1 ;;
            libstdc++.so.*) owner=libstdc++6 ;;
            *) die "$pkg: no $deb package provides $soname, so Depends cannot name it" ;;
            esac
        fi
        grep -qx -- "$owner" <<<"$names" ||
            die "$pkg: links $soname from $owner, but Depends ($depends) does not name $owner"
    done
}

# systemd-analyze verify checks the unit against the files the package
# installs (ExecStart must exist and be executable) with the host's own
# units for the targets it references; it reports problems as warnings and
# still exits 0, so any output fails the check.
verify_unit() {
    local root=$1 unitdir report
    unitdir=$(dirname "$(find "$root" -name camnode.service -path '*/systemd/system/*')")
    cp -an /lib/systemd/system/. "$unitdir/"
    # ExecReload= runs the base system's kill, which every Debian root has
    # and the package does not ship.
    install -D /bin/kill "$root/bin/kill"
    report=$(systemd-analyze verify --root="$root" camnode.service 2>&1) ||
        die "systemd-analyze verify failed: $report"
    [ -z "$report" ] || die "systemd-analyze verify: $report"
    log "systemd-analyze verify: camnode.service clean"
    systemd-analyze security --offline=yes --root="$root" --threshold="$max_exposure" camnode.service |
        tail -1 >&2 || die "camnode.service's exposure is above $max_exposure (tenths); see systemd-analyze security"
}

# --- installation into a Debian root of the package's architecture ----------------

# A minimal bookworm root for $deb (essential packages, apt and adduser;
# libzmq5 and the rest of Depends come from the archive at install time),
# made once. Its path is in `rootfs`; the suffix changes whenever the way it
# is made changes, so a stale cache is never reused.
ensure_rootfs() {
    rootfs=$cache/rootfs-bookworm-$deb-1.tar
    [ -f "$rootfs" ] && return
    local sources=()
    # armhf: bookworm and bookworm-updates only. mmdebstrap adds
    # bookworm-security for a stable suite, and Debian's mirror serves a
    # bookworm-security armhf index that does not match its Release file
    # (the same lag that rules out multiarch, see scripts/sysroot.sh), so
    # apt-get update, and mmdebstrap with it, fails. Without it the root
    # still has every package the test installs, at the point release's
    # versions.
    [ "$deb" != armhf ] || sources=("deb $mirror bookworm main" "deb $mirror bookworm-updates main")
    log "making $rootfs with mmdebstrap (once; minutes under qemu)"
    local start=$SECONDS
    # --format: the output's name, ending in .part, does not say tar.
    mmdebstrap --quiet --mode=root --format=tar --variant=apt --architectures="$deb" --include=adduser bookworm "$rootfs.part" \
        "${sources[@]}" >&2
    mv "$rootfs.part" "$rootfs"
    log "root file system for $deb made in $((SECONDS - start)) s"
}

# Debian bookworm ships libcamera 0.0.3 only; Raspberry Pi OS gets its
# libcamera0.X from the Raspberry Pi archive, which this machine cannot
# reach. So that the rest of the installation is still tested for real, the
# package the Depends names is made here from the very libcamera build the
# binary was linked against (scripts/libcamera.sh), with its own Depends
# from dpkg-shlibdeps, and installed alongside. Prints its path in the root.
#   libcamera_stand_in TARGET NAME ROOT
libcamera_stand_in() {
    local target=$1 name=$2 root=$3 prefix dir version depends
    prefix=$(libcamera_prefix "$target")
    version=$(find "$prefix/lib" -name 'libcamera.so.*.*.*' -printf '%f\n' | sed 's/libcamera\.so\.//')
    log "install test: $name is not in Debian bookworm (a Pi gets it from archive.raspberrypi.com);" \
        "installing one made from $prefix instead"
    dir=$(mktemp -d)
    mkdir -p "$dir/pkg/DEBIAN" "$dir/pkg/usr/lib/$gnu"
    cp -a "$prefix"/lib/libcamera*.so.* "$dir/pkg/usr/lib/$gnu/"
    depends=$(shlib_depends "-l$prefix/lib" "$dir"/pkg/usr/lib/"$gnu"/libcamera*.so.*.*.*)
    [ -n "$depends" ] || die "dpkg-shlibdeps found no dependencies for $prefix/lib/libcamera*"
    log "install test: $name Depends: $depends"
    printf '%s\n' "Package: $name" "Version: $version-0camnode1" "Architecture: $deb" \
        "Maintainer: camnode developers <camnode@localhost>" "Depends: $depends" \
        "Description: libcamera $version as built by camnode's scripts/libcamera.sh (install test only)" \
        >"$dir/pkg/DEBIAN/control"
    dpkg-deb --root-owner-group --build "$dir/pkg" "$root/tmp/$name.deb" >/dev/null
    rm -rf "$dir"
    echo "/tmp/$name.deb"
}

#   install_test TARGET PACKAGE
install_test() {
    local target=$1 pkg=$2 root start=$SECONDS
    ensure_rootfs
    root=$(mktemp -d)
    tar -xf "$rootfs" -C "$root"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    cp "$pkg" "$root/tmp/"
    local in=(chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive)
    local pkg_in_root=/tmp/${pkg##*/}
    "${in[@]}" apt-get update -qq >&2 || log "apt-get update in the root reported errors; installing anyway"
    local debs=("$pkg_in_root") libcamera
    libcamera=$(dpkg-deb --field "$pkg" Depends | grep -o 'libcamera0\.[0-9]*' || true)
    if [ -n "$libcamera" ] && ! chroot "$root" apt-cache show "$libcamera" >/dev/null 2>&1; then
        debs+=("$(libcamera_stand_in "$target" "$libcamera" "$root")")
    fi
    log "install test: apt-get install ${debs[*]} in a bookworm $deb root"
    "${in[@]}" apt-get install -y -qq "${debs[@]}" >"$root/install.log" 2>&1 ||
        { cat "$root/install.log" >&2; die "installing $pkg on Debian bookworm $deb failed"; }

    local groups
    groups=$(chroot "$root" id -nG camnode) || die "postinst created no camnode user"
    for g in camnode video gpio; do
        grep -qw "$g" <<<"$groups" || die "camnode is not in group $g (groups: $groups)"
    done
    [ "$(chroot "$root" stat -c '%U:%G %a' /var/lib/camnode)" = "camnode:camnode 750" ] ||
        die "/var/lib/camnode is $(chroot "$root" stat -c '%U:%G %a' /var/lib/camnode), expected camnode:camnode 750"
    [ -L "$root/etc/systemd/system/multi-user.target.wants/camnode.service" ] ||
        die "the package did not enable camnode.service"
    local version
    version=$(chroot "$root" /usr/bin/camnode --version) || die "the installed camnode does not run"
    log "install test: $version runs with Debian's $deb libraries; user, groups, state directory and unit are in place"

    # The installed binary, against the distribution's libzmq5 rather than
    # the build's, sends to an x86 hub (the root shares this machine's
    # loopback).
    local hub_bin=${CAMNODE_HOST_BIN:-} port frames=5
    if [ -z "$hub_bin" ]; then
        (unset CAMNODE_FEATURES; cargo build --quiet --bin camnode)
        hub_bin=$CARGO_TARGET_DIR/debug/camnode
    fi
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # --count: the frames and the node's opening Restart notice.
    "$hub_bin" hub --bind "tcp://127.0.0.1:$port" --count $((frames + 1)) --idle 60 --summary-json "$root/hub.json" \
        2>"$root/hub.log" &
    local hub_pid=$! node_status=0
    timeout 120 chroot "$root" /usr/bin/camnode run --source synthetic:160x120 --hub "tcp://127.0.0.1:$port" \
        --mode req --frames "$frames" --rate max --send all --heartbeat 0 2>"$root/node.log" || node_status=$?
    [ "$node_status" = 0 ] || kill "$hub_pid" 2>/dev/null || true
    wait "$hub_pid" || { cat "$root/node.log" "$root/hub.log" >&2; die "hub failed with the installed node"; }
    [ "$node_status" = 0 ] || { cat "$root/node.log" >&2; die "the installed camnode run failed"; }
    python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); sys.exit(s["images"] != int(sys.argv[2]) or s["bad"] != 0)' \
        "$root/hub.json" "$frames" || die "the hub did not get $frames good images from the installed node"
    log "install test: the installed node sent $frames frames to an x86 hub"

    # Upgrade path: a local edit of the conffile survives a reinstall that
    # keeps old conffiles (as fleet.sh installs), and postinst is idempotent.
    echo "# edited on this Pi" >>"$root/etc/camnode/camnode.toml"
    "${in[@]}" apt-get install -y -qq --reinstall -o Dpkg::Options::=--force-confold "$pkg_in_root" >"$root/install.log" 2>&1 ||
        { cat "$root/install.log" >&2; die "reinstalling $pkg failed"; }
    grep -q '^# edited on this Pi$' "$root/etc/camnode/camnode.toml" || die "a reinstall overwrote the edited config"

    "${in[@]}" dpkg --purge camnode >"$root/install.log" 2>&1 || { cat "$root/install.log" >&2; die "purging camnode failed"; }
    [ ! -e "$root/var/lib/camnode" ] || die "purge left /var/lib/camnode"
    [ ! -e "$root/etc/systemd/system/multi-user.target.wants/camnode.service" ] || die "purge left the unit enabled"
    log "install test: reinstall kept the edited config; purge removed the state; $((SECONDS - start)) s"
    rm -rf "$root"
}

# --- the tree ------------------------------------------------------------------

check_cross_toml() {
    python3 - <<'EOF'
import pathlib, shlex, subprocess, sys, tomllib

config = tomllib.loads(pathlib.Path("Cross.toml").read_text())
expected = {"aarch64-unknown-linux-gnu", "armv7-unknown-linux-gnueabihf"}
targets = config.get("target", {})
if set(targets) != expected:
    sys.exit(f"Cross.toml: targets {sorted(targets)}, expected {sorted(expected)}")
for triple, settings in targets.items():
    dockerfile = settings["dockerfile"]
    path = pathlib.Path(dockerfile["file"])
    context = pathlib.Path(dockerfile.get("context", "."))
    if not path.is_file() or not context.is_dir():
        sys.exit(f"Cross.toml: {triple}: {path} or context {context} does not exist")
    # Instructions with their continuation lines joined, comments dropped.
    instructions, current = [], ""
    for line in path.read_text().splitlines():
        if not current and line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            if current.strip():
                instructions.append(current.strip())
            current = ""
    keywords = [i.split()[0].upper() for i in instructions]
    if keywords[0] != "FROM" or not set(keywords) <= {"FROM", "ENV", "RUN", "ARG"}:
        sys.exit(f"{path}: unexpected instructions {keywords}")
    for i in instructions:
        if i.upper().startswith("RUN "):
            check = subprocess.run(["sh", "-n", "-c", i[4:]], capture_output=True, text=True)
            if check.returncode != 0:
                sys.exit(f"{path}: a RUN step does not parse: {check.stderr}")
    env = " ".join(i[4:] for i in instructions if i.upper().startswith("ENV "))
    linker = "CARGO_TARGET_" + triple.replace("-", "_").upper() + "_LINKER"
    if linker not in env:
        sys.exit(f"{path}: sets no {linker}")
    print(f"package.sh: Cross.toml {triple}: {path} ({len(instructions)} instructions) parses; not built (no Docker here)", file=sys.stderr)
EOF
}

check_fleet() {
    shellcheck -x deploy/fleet.sh scripts/cross.sh scripts/package.sh scripts/sysroot.sh scripts/libcamera.sh scripts/lib.sh \
        scripts/pi-vm.sh deploy/debian/postinst deploy/debian/postrm \
        deploy/pi-image/rootfs/usr/lib/camnode/card-setup deploy/pi-image/rootfs/etc/initramfs-tools/hooks/camnode-pi
    log "shellcheck: fleet.sh, cross.sh, package.sh, sysroot.sh, libcamera.sh, lib.sh, pi-vm.sh, the maintainer scripts" \
        "and the Pi image's scripts are clean"

    local dir plan hosts hosts_file=deploy/hosts.example
    dir=$(mktemp -d)
    # With one architecture packaged in this run, only the hosts that name
    # it are planned (the others would need a package this run did not make).
    if [ ${#packaged_arches[@]} -lt 2 ]; then
        hosts_file=$dir/hosts.dry
        awk -v arch="${packaged_arches[0]}" '!/^[[:space:]]*(#|$)/ && $2 == arch' deploy/hosts.example >"$hosts_file"
        log "fleet.sh --dry-run: only the ${packaged_arches[0]} hosts of deploy/hosts.example"
    fi
    hosts=$(grep -cv '^\s*\(#\|$\)' "$hosts_file")
    plan=$(deploy/fleet.sh "$hosts_file" --dry-run --debs "$deb_dir" 2>&1) ||
        die "fleet.sh --dry-run failed: $plan"
    echo "$plan"
    [ "$(grep -c ' dry-run ' <<<"$plan")" = "$hosts" ] ||
        die "fleet.sh --dry-run planned $(grep -c ' dry-run ' <<<"$plan") of the $hosts hosts"

    # Failure isolation, for real: three hosts whose ssh port refuses
    # connections (loopback only). Each must get its own FAILED line and
    # the run must exit 1 after trying all of them.
    local out status=0
    printf '%s\n' "127.0.0.1 ${packaged_arches[0]}" 'nobody@127.0.0.2' "localhost ${packaged_arches[-1]}" >"$dir/hosts"
    # Port 9 (discard) has no listener here; the ports-in-use check proves it.
    if python3 -c 'import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(("127.0.0.1", 9)) == 0)'; then
        out=$(FLEET_SSH_OPTS="-o Port=9" deploy/fleet.sh "$dir/hosts" --debs "$deb_dir" --log-dir "$dir/logs" 2>&1) ||
            status=$?
        echo "$out"
        [ "$status" = 1 ] || die "fleet.sh exited $status with every host unreachable, expected 1"
        [ "$(grep -c ' FAILED connect: \| FAILED copy: ' <<<"$out")" = 3 ] ||
            die "fleet.sh did not report exactly one failure per unreachable host"
        log "fleet.sh: the dry run planned $hosts hosts; unreachable hosts each failed on their own"
    else
        die "something listens on 127.0.0.1:9; cannot run the unreachable-host check"
    fi
    rm -rf "$dir"
}

# --- main ----------------------------------------------------------------------

need_packages dpkg-dev shellcheck systemd python3 file mmdebstrap arch-test
bash scripts/cross.sh setup "${targets[@]}"
ensure_cargo_deb
packaged_arches=()
packaged_files=()
for t in "${targets[@]}"; do
    package "$t"
    packaged_arches+=("$deb")
    packaged_files+=("${packaged##*/}")
    install_test "$t" "$packaged"
done
check_cross_toml
check_fleet
log "done: ${packaged_files[*]} in $deb_dir"
