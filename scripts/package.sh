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
# then, once for the tree:
#   - Cross.toml parses, names Dockerfiles and contexts that exist, and the
#     Dockerfiles' shell steps parse (Docker itself is not available here:
#     the images are not built);
#   - deploy/fleet.sh passes shellcheck, its --dry-run against
#     deploy/hosts.example plans every host, and a real run against hosts
#     that refuse connections on loopback reports one failure line per host
#     without stopping at the first.
#
# Settings: DEB_DIR as above; CARGO_TARGET_DIR and CAMNODE_FEATURES as for
# scripts/cross.sh.
set -euo pipefail

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

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64 armv7)

log() { echo "package.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

describe() {
    case $1 in
    aarch64) rust=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu deb=arm64 elf='ARM aarch64' ;;
    armv7) rust=armv7-unknown-linux-gnueabihf gnu=arm-linux-gnueabihf deb=armhf elf='ARM, EABI5' ;;
    *) die "unknown target '$1': use aarch64 or armv7" ;;
    esac
}

need_tools() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    apt-get update -qq >&2 || log "apt-get update reported errors; installing anyway"
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
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
    local start=$SECONDS
    mkdir -p "$deb_dir"
    # --no-build: the binary is the one cross.sh built and checked.
    local out
    out=$("$cargo_deb" --no-build --target "$rust" --output "$deb_dir")
    out=$(echo "$out" | tail -1)
    [ -f "$out" ] || die "cargo-deb did not report a package path (got '$out')"
    log "$1: $out ($(stat -c %s "$out") bytes) in $((SECONDS - start)) s"
    check_package "$out"
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
    file -b "$bin" | grep -q "$elf" || die "$pkg: /usr/bin/camnode is not $elf: $(file -b "$bin")"
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
# Depends (found through dpkg's database of the multiarch libraries the
# build linked against), so apt on the Pi pulls them in.
check_depends() {
    local pkg=$1 bin=$2 depends names soname owner
    depends=$(dpkg-deb --field "$pkg" Depends)
    log "$deb Depends: $depends"
    # Package names alone: no versions, alternatives split, no :arch.
    names=$(sed 's/^ *//; s/[ (:].*//' <<<"${depends//[,|]/$'\n'}")
    grep -qx adduser <<<"$names" || die "$pkg: Depends lacks adduser (postinst needs it)"
    for soname in $("$gnu-readelf" -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
        owner=$(dpkg -S "*/$gnu/$soname" 2>/dev/null | grep "^[^ ]*:$deb:" | head -1 | cut -d: -f1 || true)
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
    report=$(systemd-analyze verify --root="$root" camnode.service 2>&1) ||
        die "systemd-analyze verify failed: $report"
    [ -z "$report" ] || die "systemd-analyze verify: $report"
    log "systemd-analyze verify: camnode.service clean"
    systemd-analyze security --offline=yes --root="$root" --threshold="$max_exposure" camnode.service |
        tail -1 >&2 || die "camnode.service's exposure is above $max_exposure (tenths); see systemd-analyze security"
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
    shellcheck deploy/fleet.sh scripts/cross.sh scripts/package.sh deploy/debian/postinst deploy/debian/postrm
    log "shellcheck: fleet.sh, cross.sh, package.sh and the maintainer scripts are clean"

    local plan hosts
    hosts=$(grep -cv '^\s*\(#\|$\)' deploy/hosts.example)
    plan=$(deploy/fleet.sh deploy/hosts.example --dry-run --debs "$deb_dir" 2>&1) ||
        die "fleet.sh --dry-run failed: $plan"
    echo "$plan"
    [ "$(grep -c ' dry-run ' <<<"$plan")" = "$hosts" ] ||
        die "fleet.sh --dry-run planned $(grep -c ' dry-run ' <<<"$plan") of the $hosts hosts"

    # Failure isolation, for real: three hosts whose ssh port refuses
    # connections (loopback only). Each must get its own FAILED line and
    # the run must exit 1 after trying all of them.
    local dir out status=0
    dir=$(mktemp -d)
    printf '%s\n' '127.0.0.1 arm64' 'nobody@127.0.0.2' 'localhost armhf' >"$dir/hosts"
    # Port 9 (discard) has no listener here; the ports-in-use check proves it.
    if python3 -c 'import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(("127.0.0.1", 9)) == 0)'; then
        out=$(FLEET_SSH_OPTS="-o Port=9" deploy/fleet.sh "$dir/hosts" --debs "$deb_dir" --log-dir "$dir/logs" 2>&1) ||
            status=$?
        echo "$out"
        [ "$status" = 1 ] || die "fleet.sh exited $status with every host unreachable, expected 1"
        [ "$(grep -c ' FAILED connect: \| FAILED copy: ' <<<"$out")" = 3 ] ||
            die "fleet.sh did not report exactly one failure per unreachable host"
        log "fleet.sh: dry run planned $hosts hosts; unreachable hosts each failed on their own"
    else
        die "something listens on 127.0.0.1:9; cannot run the unreachable-host check"
    fi
    rm -rf "$dir"
}

# --- main ----------------------------------------------------------------------

need_tools dpkg-dev shellcheck systemd python3 file
ensure_cargo_deb
for t in "${targets[@]}"; do
    package "$t"
done
check_cross_toml
check_fleet
log "done: $(find "$deb_dir" -maxdepth 1 -name 'camnode_*.deb' -printf '%f ')"
