# shellcheck shell=bash
# Sourced, not run, by the scripts beside it: what more than one of them
# needs. The sourcing script defines `log` and `die` (each message names the
# script) and `cache` (where logs and the armv7 sysroot go).

# A target directory in the cache is shared by every clone that builds on
# this machine. Cargo names camnode's own artifacts alike in each clone (by
# paths relative to the workspace) and judges them fresh by the files'
# times, so a clone older than another clone's last build would pass for
# built, with the other's code. camnode itself is therefore rebuilt once
# per run; its dependencies, fixed per version, are reused. The exported
# list keeps the scripts this run calls from rebuilding it again.
forget_own_build() {
    [[ ${CAMNODE_OWN_BUILD_FORGOTTEN:-} == *"|$1|"* ]] && return 0
    rm -rf "$1"/*/.fingerprint/camnode-* "$1"/*/*/.fingerprint/camnode-*
    export CAMNODE_OWN_BUILD_FORGOTTEN="${CAMNODE_OWN_BUILD_FORGOTTEN:-|}$1|"
}

# Installs the Debian packages of "$@" that are missing, running
# `apt-get update` at most once per run and only when something must be
# installed. Uses sudo when not root. A failed install shows the end of
# apt's log and says where the rest is.
apt_updated=
need_packages() {
    local missing=() pkg as_root=()
    for pkg in "$@"; do
        # One line per architecture the package is known for; installed for
        # any will do (qualify the name, libzmq3-dev:arm64, to ask for one).
        # Not `| grep -q`: with pipefail, grep quitting early can fail the pipe.
        [[ $'\n'$(dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null)$'\n' == *$'\n'"install ok installed"$'\n'* ]] ||
            missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || as_root=(sudo)
    if [ -z "$apt_updated" ]; then
        local attempt
        for attempt in 1 2 3; do
            log "apt-get update"
            "${as_root[@]}" apt-get update -qq -o DPkg::Lock::Timeout=600 >&2 && break
            # A mirror caught mid-sync serves a stale index for a while, and
            # multiarch installs need the same version of a package for
            # every architecture; after the last try the install below
            # fails loudly if a package really cannot be had.
            [ "$attempt" -lt 3 ] && { log "apt-get update failed; retrying in $((attempt * 20)) s"; sleep $((attempt * 20)); }
        done
        apt_updated=1
    fi
    log "installing ${missing[*]}"
    local apt_log=${cache:?the sourcing script sets it}/apt-install.log
    mkdir -p "$cache"
    # Another apt run (a second script of the same CI job, or unattended
    # upgrades) may hold dpkg's lock: wait for it rather than fail.
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=600 "${missing[@]}" \
        >"$apt_log" 2>&1 ||
        {
            tail -30 "$apt_log" >&2
            # The usual cause with multiarch: a library installed for amd64
            # in a newer version than the foreign architecture's index
            # offers, because that index failed to download (a mirror
            # mid-sync) and Multi-Arch: same packages need equal versions.
            die "apt-get install failed (full log: $apt_log); if it reports unmet dependencies of" \
                ":armhf or :arm64 libraries, check that 'apt-get update' fetches that architecture's indexes"
        }
}

# The private armv7 sysroot (scripts/sysroot.sh), resolved once per run
# into $armhf_root. Call it outside command substitutions: what a `$(...)`
# assigns does not reach the script.
armhf_root=
armhf_sysroot() {
    [ -n "$armhf_root" ] || armhf_root=$(scripts/sysroot.sh armhf)
    # Resolved once per run: sysroot.sh, when the scripts this one starts
    # (libcamera.sh, cross.sh) ask it again, answers with this one.
    export CAMNODE_ARMHF_SYSROOT=$armhf_root
}

# Lets the kernel run ARM executables of the qemu-user interpreter $1
# (qemu-aarch64, qemu-arm; from qemu-user-static): binfmt_misc hands them to
# qemu (flag F keeps the interpreter usable in any mount namespace). cross.sh
# needs it for tests that start the ARM `camnode` as a child process,
# package.sh and pi-vm.sh for the maintainer scripts of an ARM root.
register_binfmt() {
    local name=$1 dir=/proc/sys/fs/binfmt_misc
    if [ ! -e "$dir/register" ]; then
        mount -t binfmt_misc binfmt_misc "$dir" ||
            die "binfmt_misc is not available, so ARM programs cannot run here; mount it on $dir"
    fi
    [ -e "$dir/$name" ] && return 0
    [ -f "/usr/lib/binfmt.d/$name.conf" ] || die "/usr/lib/binfmt.d/$name.conf missing: is qemu-user-static installed?"
    tr -d '\n' <"/usr/lib/binfmt.d/$name.conf" >"$dir/register"
    log "registered $name with binfmt_misc"
}

# The Debian archive that serves $1 (bookworm, bookworm-security...), on
# DEBIAN_MIRROR (default deb.debian.org) or the security mirror beside it.
debian_url() {
    local mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    case $1 in
    *-security) echo "${mirror%/debian}/debian-security" ;;
    *) echo "$mirror" ;;
    esac
}

# apt with a configuration of its own in directory $1 (sources, lists,
# cache, an empty dpkg status), for foreign architectures: the system's dpkg
# database and apt configuration are never touched. $2: the architectures,
# the first one native; $3: the components; then the suites. Sets apt_opts
# for apt-get and apt-cache, and brings the lists up to date: cheap after
# the first run, and should the mirror be unreachable, the lists of the
# last update still resolve.
private_apt() {
    local dir=$1 arches=$2 components=$3 suite arch
    shift 3
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/sources.list.d" "$dir/preferences.d"
    : >"$dir/status"
    : >"$dir/sources.list"
    for suite in "$@"; do
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(debian_url "$suite") $suite $components" \
            >>"$dir/sources.list"
    done
    apt_opts=(-o "APT::Architecture=${arches%% *}")
    for arch in $arches; do
        apt_opts+=(-o "APT::Architectures::=$arch")
    done
    apt_opts+=(
        -o "Dir::Etc::SourceList=$dir/sources.list"
        -o "Dir::Etc::SourceParts=$dir/sources.list.d"
        -o "Dir::Etc::Preferences=$dir/preferences"
        -o "Dir::Etc::PreferencesParts=$dir/preferences.d"
        -o "Dir::State::Lists=$dir/lists"
        -o "Dir::State::status=$dir/status"
        -o "Dir::Cache=$dir/cache"
        -o "APT::Install-Recommends=false"
        # Only Packages indexes: no AppStream metadata a host apt.conf.d may ask for.
        -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
        -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
        -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
        # The cache lives in root's home, which apt's unprivileged _apt user
        # cannot enter.
        -o "APT::Sandbox::User=root"
    )
    log "updating the $arches package lists of $dir for: $*"
    apt-get "${apt_opts[@]}" update -qq >"$dir/update.log" 2>&1 ||
        log "apt-get update reported errors (see $dir/update.log); resolving with the lists it has"
}
