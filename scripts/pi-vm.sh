#!/usr/bin/env bash
# The camnode SD-card image for the Raspberry Pi 3 and 4, and its tests on an
# emulated Raspberry Pi 3 (QEMU's raspi3b machine: BCM2837, 4 x Cortex-A53,
# 1 GB, run by TCG on this x86 machine).
#
#   scripts/pi-vm.sh image              build the image (cached); print its path
#   scripts/pi-vm.sh run [FILE...]      boot a copy of it here, for a person
#   scripts/pi-vm.sh test [--json FILE] boot it and run the scenarios below
#
# The image (docs/raspberry-pi.md): Debian bookworm arm64 made with
# mmdebstrap, Debian's kernel (linux-image-*-arm64) and its initramfs,
# systemd, the camnode arm64 .deb installed through dpkg as a user would (its
# postinst makes the user and enables the unit), libcamera 0.7 built by
# scripts/libcamera.sh (uvcvideo for USB cameras, vimc for the VM), and a
# FAT boot partition with Debian's raspi-firmware (the Pi's boot firmware),
# config.txt and cmdline.txt, so the same file boots a real Pi 3 or 4. A few
# files dropped on the boot partition make each card its own (camnode.toml,
# network.txt, authorized_keys; applied at boot by camnode-card-setup, see
# deploy/pi-image). QEMU does not run the Pi's firmware: `run` and `test`
# take the kernel, initrd, device tree and cmdline.txt from the card's boot
# partition and hand them to QEMU, which is what the firmware would do.
#
# In QEMU the camera is vimc, the kernel's virtual media-controller camera
# (sensor, debayer, scaler, capture video node): Debian's kernel does not
# build it, so the module is cross-built out of tree from Debian's
# linux-source for exactly that kernel, and loaded with `modules-load=vimc`
# on QEMU's kernel command line only (a real Pi never loads it). libcamera's
# vimc pipeline handler captures from it with buffers from its
# FrameBufferAllocator: V4L2 buffers exported as dma-bufs, the path of a
# real Pi camera. The network is QEMU's usb-net on the emulated USB
# controller (dwc2) with user-mode networking: the guest reaches this
# machine's 127.0.0.1 as 10.0.2.2, and the guest's SSH port is forwarded to
# a local port.
#
# `test` runs, against `camnode hub` on this machine, with the card set up
# as a time-lapse node (every frame sent, and spooled while the hub is away):
#   1. boot: from power-on to the first image at the hub (a first boot:
#      the card grows its root partition and makes its SSH keys);
#   2. capture: the service's frames come from vimc through libcamera in
#      dma-bufs (its open descriptors show them), through motion detection
#      (its score in every image's header) and JPEG to the hub;
#   3. status LED: GPIO 17 through rppal on the emulated GPIO registers,
#      read from outside through QEMU's monitor (GPLEV0): the "running"
#      pattern, then "hub unreachable" once the hub stops. The trigger input
#      cannot be tested here: QEMU 7.2's BCM2835 GPIO has no inputs a host
#      can drive and raises no edge interrupts (hw/gpio/bcm2835_gpio.c:
#      GPREN/GPFEN/GPEDS "Not implemented");
#   4. upgrade: deploy/fleet.sh installs a newer .deb over the running
#      service (the same build, repackaged with a higher version): the edited
#      config stays, the service restarts and is healthy;
#   5. watchdog: the node is frozen (SIGSTOP); systemd's WatchdogSec= kills
#      it and Restart= starts it again, timed on the guest's clock;
#   6. power cuts: QEMU is killed (no shutdown) while frames are being
#      spooled with the hub down, and again while the hub is acknowledging
#      the spool's backlog; after each the card's root file system is read
#      as the next boot will find it (journal replayed, from outside), the
#      Pi boots again, and every message the hub acknowledged, and every
#      whole spooled one, must be at the hub, with no damaged image
#      delivered.
# It prints, and with --json writes, a summary: machine, service_active,
# capture, frames_delivered, led_toggles, watchdog_restarts, power_cut_lost,
# boot_to_first_image_s, rss_kb (and the details behind them). Times are
# those of an emulated Pi on this machine, not of a Pi.
#
# Caches (all under $CAMNODE_CACHE/pi-vm, default ~/.cache/camnode/pi-vm),
# each keyed by what it is made from, so only what changed is made again:
#   kernel-KREL-KVER/  Debian's arm64 kernel headers and amd64 kbuild tools
#   vimc-KREL-KVER.ko  the vimc module for that kernel
#   base-KREL-KVER-RECIPE.tar  the root file system before camnode (slow:
#                      mmdebstrap installs arm64 packages under qemu-user)
#   libcamera*.deb     libcamera with the vimc pipeline, packaged
#   camnode-pi-KEY.img the image: base + camnode .deb + libcamera + vimc +
#                      deploy/pi-image; only the newest is kept
#
# Settings (environment, all optional):
#   PI_VM_DEB       the camnode arm64 .deb to put in the image (default: the
#                   newest target/debian/camnode_*_arm64.deb; made with
#                   scripts/package.sh aarch64 when there is none)
#   CAMNODE_HOST_BIN  the x86 camnode whose `hub` the tests run (default: a
#                   debug build)
#   DEBIAN_MIRROR   default http://deb.debian.org/debian
set -euo pipefail
shopt -s inherit_errexit

cd "$(dirname "$0")/.."
repo=$PWD
cache=${CAMNODE_CACHE:-$HOME/.cache/camnode}
vm_cache=$cache/pi-vm
run_dir=$repo/target/pi-vm

# The image: 2 GiB (QEMU wants an SD card's size to be a power of two), a
# 256 MiB FAT boot partition from 1 MiB on, the root file system after it.
image_mib=2048
boot_mib=256
# The card the tests flash: bigger than the image, so that the first boot's
# growing of the root partition is exercised.
card_size=4G
# What the status LED is wired to in the test's camnode.toml.
led_pin=17

log() { echo "pi-vm.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
# need_packages, register_binfmt, private_apt, debian_url
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# --- Debian's arm64 packages, through a private apt ----------------------------

# apt with sources, lists and cache of its own (lib.sh's private_apt), for
# arm64 (the image) and amd64 (the kernel's build tools for this machine).
apt_dir=$vm_cache/apt
suites=("bookworm" "bookworm-updates" "bookworm-security")

# The kernel Debian's linux-image-arm64 stands for now: krel (6.1.0-57-arm64,
# its release and module directory), kver (6.1.192-3, the package version),
# kmajor (6.1, of linux-source-6.1 and linux-kbuild-6.1).
resolve_kernel() {
    local image
    image=$(apt-cache "${apt_opts[@]}" depends linux-image-arm64:arm64 |
        sed -n 's/^ *Depends: \(linux-image-[0-9][^ :]*-arm64\).*/\1/p' | head -1)
    [ -n "$image" ] || die "linux-image-arm64 names no kernel package (see $apt_dir/update.log)"
    krel=${image#linux-image-}
    kver=$(apt-cache "${apt_opts[@]}" show --no-all-versions "$image:arm64" | sed -n 's/^Version: //p' | head -1)
    kmajor=$(cut -d. -f1,2 <<<"$kver")
    log "kernel: $image $kver"
}

# --- the vimc module -----------------------------------------------------------

# vimc.ko for $krel, cross-built out of tree from linux-source-$kmajor with
# the kernel's own headers (its .config, Module.symvers for modversions, the
# gcc-12 it was built with), once per kernel version.
ensure_vimc() {
    vimc_ko=$vm_cache/vimc-$krel-$kver.ko
    [ -f "$vimc_ko" ] && return
    log "building vimc.ko for $krel ($kver)"
    local start=$SECONDS work tree headers common
    work=$(mktemp -d "$vm_cache/vimc.XXXXXX")
    (cd "$work" && apt-get "${apt_opts[@]}" download -qq "linux-headers-$krel:arm64=$kver" \
        "linux-headers-${krel%-arm64}-common=$kver" "linux-kbuild-$kmajor:amd64=$kver" "linux-source-$kmajor=$kver" >&2) ||
        die "downloading the kernel's headers and source ($kver) failed"
    tree=$work/tree
    for deb in "$work"/linux-headers-*.deb "$work"/linux-kbuild-*.deb; do
        dpkg -x "$deb" "$tree"
    done
    headers=$tree/usr/src/linux-headers-$krel
    common=$tree/usr/src/linux-headers-${krel%-arm64}-common
    # The headers' Makefile includes the common half by its installed path.
    sed -i "s|/usr/src/linux-headers-${krel%-arm64}-common|$common|" "$headers/Makefile"
    dpkg-deb --fsys-tarfile "$work"/linux-source-*.deb | tar -x -C "$work" --wildcards './usr/src/linux-source-*.tar.xz'
    tar -xJf "$work"/usr/src/linux-source-"$kmajor".tar.xz -C "$work" "linux-source-$kmajor/drivers/media/test-drivers/vimc"
    local src=$work/linux-source-$kmajor/drivers/media/test-drivers/vimc
    make -s -C "$headers" M="$src" ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- CONFIG_VIDEO_VIMC=m modules \
        >"$work/build.log" 2>&1 || { tail -20 "$work/build.log" >&2; die "building vimc.ko failed (log: $work/build.log)"; }
    aarch64-linux-gnu-strip --strip-debug -o "$vimc_ko.part" "$src/vimc.ko"
    strings "$vimc_ko.part" | grep -qx "vermagic=$krel SMP .*" ||
        die "vimc.ko's vermagic is not $krel's: $(strings "$vimc_ko.part" | grep '^vermagic=')"
    mv "$vimc_ko.part" "$vimc_ko"
    rm -rf "$work"
    log "vimc.ko for $krel built in $((SECONDS - start)) s"
}

# --- the root file system before camnode ----------------------------------------

# Everything the image has but camnode: what a Pi needs to boot and be
# reached (kernel, initramfs, firmware, systemd-networkd, Wi-Fi, SSH, sudo),
# and camnode's and libcamera's libraries, so that the camnode layer installs
# offline. The kernel comes last, once the initramfs configuration
# (deploy/pi-image's etc/initramfs-tools) is in place and everything else
# is installed: its initramfs is then made once (each package that asks for
# an update of it would otherwise make it again; under qemu-user that takes
# minutes each time), as the image will keep making it.
base_packages=(
    systemd-sysv udev kmod dbus initramfs-tools zstd linux-base raspi-firmware
    firmware-brcm80211 wpasupplicant systemd-resolved systemd-timesyncd openssh-server sudo
    iproute2 iputils-ping procps e2fsprogs dosfstools fdisk v4l-utils nano adduser
    libzmq5 libyaml-0-2 libyuv0 libudev1 libssl3
)

ensure_base() {
    local packages=("${base_packages[@]}" "linux-image-$krel") recipe initramfs=deploy/pi-image/rootfs/etc/initramfs-tools
    # The recipe: what goes in and how; a change makes a new base.
    recipe=$( (printf '%s\n' "${packages[@]}" "${suites[@]}"; find "$initramfs" -type f -printf '%p %m\n' | sort;
        find "$initramfs" -type f -print0 | sort -z | xargs -0 cat) | sha256sum | cut -c1-12)
    base_tar=$vm_cache/base-$krel-$kver-$recipe.tar
    [ -f "$base_tar" ] && return
    local sources=() suite start=$SECONDS kernel_dir kernel_deb
    kernel_dir=$(mktemp -d "$vm_cache/kernel.XXXXXX")
    (cd "$kernel_dir" && apt-get "${apt_opts[@]}" download -qq "linux-image-$krel:arm64=$kver" >&2) ||
        die "downloading linux-image-$krel $kver failed"
    kernel_deb=$(echo "$kernel_dir"/linux-image-*.deb)
    for suite in "${suites[@]}"; do
        sources+=("deb $(debian_url "$suite") $suite main non-free-firmware")
    done
    log "making $base_tar with mmdebstrap (once per kernel; many minutes under qemu-user)"
    rm -f "$vm_cache"/base-*.tar.part
    # The kernel is installed by dpkg inside the root, from a package
    # downloaded outside it (inside, systemd-resolved's /etc/resolv.conf
    # resolves nothing yet; its dependencies are all in the root by then).
    mmdebstrap --quiet --mode=root --format=tar --variant=apt --architectures=arm64 \
        --include="$(IFS=,; echo "${base_packages[*]}")" \
        --essential-hook="cp -r --no-preserve=ownership \"$repo/$initramfs\" \"\$1/etc/\"" \
        --customize-hook="cp '$kernel_deb' \"\$1/tmp/kernel.deb\" && chroot \"\$1\" dpkg -i /tmp/kernel.deb && rm \"\$1/tmp/kernel.deb\"" \
        bookworm "$base_tar.part" "${sources[@]}" >&2
    mv "$base_tar.part" "$base_tar"
    rm -rf "$kernel_dir"
    local old
    for old in "$vm_cache"/base-*.tar; do
        [ "$old" = "$base_tar" ] || rm -f "$old"
    done
    log "base root file system made in $((SECONDS - start)) s ($(du -h "$base_tar" | cut -f1))"
}

# --- libcamera and camnode packages ---------------------------------------------

# libcamera for the image: scripts/libcamera.sh's aarch64 build (the one
# camnode links against, with the vimc pipeline handler and its IPA module),
# packaged as the libcamera0.X that camnode's Depends names, with the IPA
# modules, their signatures and data. Debian bookworm has no libcamera 0.7;
# a Raspberry Pi OS card gets Raspberry Pi's.
# Bump when the package's contents change for the same libcamera build.
libcamera_package_revision=3

ensure_libcamera_deb() {
    local prefix version name build_id dir release
    eval "$(scripts/libcamera.sh aarch64)"
    local var=LIBCAMERA_PREFIX_aarch64_unknown_linux_gnu
    prefix=${!var}
    [ -f "$prefix/lib/libcamera/ipa/ipa_vimc.so" ] ||
        die "$prefix has no vimc IPA module: scripts/libcamera.sh builds vimc for aarch64; remove $prefix to rebuild it"
    version=$(find "$prefix/lib" -name 'libcamera.so.*.*.*' -printf '%f\n' | sed 's/libcamera\.so\.//')
    name=libcamera${version%.*}
    build_id=$(cat "$prefix/.complete" "$prefix"/lib/libcamera.so."$version" | sha256sum | cut -c1-12)
    release=$version-$build_id-0camnode$libcamera_package_revision
    libcamera_deb=$vm_cache/${name}_${release}_arm64.deb
    [ -f "$libcamera_deb" ] && return
    log "packaging $name $version from $prefix"
    dir=$(mktemp -d "$vm_cache/libcamera.XXXXXX")
    mkdir -p "$dir/pkg/DEBIAN" "$dir/pkg/usr/lib/aarch64-linux-gnu" "$dir/pkg/usr/share" "$dir/pkg/usr/libexec"
    cp -a "$prefix"/lib/libcamera*.so.* "$prefix/lib/libcamera" "$dir/pkg/usr/lib/aarch64-linux-gnu/"
    cp -a "$prefix/share/libcamera" "$dir/pkg/usr/share/"
    [ ! -d "$prefix/libexec/libcamera" ] || cp -a "$prefix/libexec/libcamera" "$dir/pkg/usr/libexec/"
    # libcamera's paths are built in, and those of this build point into the
    # build machine's cache: the global configuration says where the IPA
    # modules, their data and proxies are on the image. camnode.service reads
    # it through XDG_CONFIG_HOME=/etc (deploy/pi-image), since the built-in
    # place of this file is under the build machine's cache too.
    mkdir -p "$dir/pkg/etc/libcamera"
    printf '%s\n' "# libcamera on the camnode Pi image (scripts/pi-vm.sh)." "version: 1" "configuration:" "  ipa:" \
        "    module_paths: [/usr/lib/aarch64-linux-gnu/libcamera/ipa]" "    config_paths: [/usr/share/libcamera/ipa]" \
        "    proxy_paths: [/usr/libexec/libcamera]" >"$dir/pkg/etc/libcamera/configuration.yaml"
    echo /etc/libcamera/configuration.yaml >"$dir/pkg/DEBIAN/conffiles"
    printf '%s\n' "Package: $name" "Version: $release" "Architecture: arm64" \
        "Maintainer: camnode developers <camnode@localhost>" \
        "Depends: libc6, libgcc-s1, libstdc++6, libyaml-0-2, libudev1, libyuv0, libssl3" \
        "Description: libcamera $version as built by camnode's scripts/libcamera.sh" \
        " With the uvcvideo, virtual and vimc pipeline handlers and the vimc IPA module," \
        " for the camnode Raspberry Pi image (scripts/pi-vm.sh)." >"$dir/pkg/DEBIAN/control"
    rm -f "$vm_cache"/libcamera*.deb
    dpkg-deb --root-owner-group -Zxz --build "$dir/pkg" "$libcamera_deb" >/dev/null
    rm -rf "$dir"
}

# The newest camnode_*_arm64.deb in target/debian, in camnode_deb.
newest_deb() {
    local deb
    camnode_deb=
    for deb in "$repo"/target/debian/camnode_*_arm64.deb; do
        [ -f "$deb" ] && { [ -z "$camnode_deb" ] || [ "$deb" -nt "$camnode_deb" ]; } && camnode_deb=$deb
    done
    return 0
}

ensure_camnode_deb() {
    camnode_deb=${PI_VM_DEB:-}
    if [ -z "$camnode_deb" ]; then
        newest_deb
        if [ -z "$camnode_deb" ]; then
            log "no camnode arm64 .deb in target/debian: making one with scripts/package.sh aarch64"
            bash scripts/package.sh aarch64 >&2
            newest_deb
        fi
    fi
    [ -f "$camnode_deb" ] || die "PI_VM_DEB=$camnode_deb does not exist"
    camnode_deb=$(realpath "$camnode_deb")
}

# --- the image -------------------------------------------------------------------

# Bump when assemble_image changes what it makes from the same inputs.
image_layout=2

# A digest of deploy/pi-image: names, modes and contents.
overlay_digest() {
    (cd deploy/pi-image && find . -type f -printf '%p %m\n' | sort && find . -type f -print0 | sort -z | xargs -0 cat) |
        sha256sum | cut -c1-12
}

# What a .deb holds (maintainer scripts, control data, every file), not when
# it was packed: a rebuild of the same camnode gives the same image.
deb_digest() {
    { dpkg-deb --ctrl-tarfile "$1" | tar -xO; dpkg-deb --fsys-tarfile "$1" | tar -xO; } | sha256sum | cut -d' ' -f1
}

ensure_image() {
    mkdir -p "$vm_cache"
    # One builder at a time; what an interrupted one left behind goes.
    exec 9>"$vm_cache/lock"
    flock 9
    rm -rf "$vm_cache"/{kernel,vimc,image,libcamera}.?????? "$vm_cache"/*.part
    private_apt "$apt_dir" "arm64 amd64" "main non-free-firmware" "${suites[@]}"
    resolve_kernel
    ensure_vimc
    ensure_base
    ensure_libcamera_deb
    ensure_camnode_deb
    local key
    key=$(echo "layout $image_layout ${base_tar##*/} ${vimc_ko##*/} ${libcamera_deb##*/} $(overlay_digest) $(deb_digest "$camnode_deb")" |
        sha256sum | cut -c1-16)
    image=$vm_cache/camnode-pi-$key.img
    if [ ! -f "$image" ]; then
        assemble_image "$image"
        local old
        for old in "$vm_cache"/camnode-pi-*.img; do
            [ "$old" = "$image" ] || rm -f "$old"
        done
    fi
    mkdir -p "$run_dir"
    ln -f "$image" "$run_dir/camnode-pi.img" 2>/dev/null || cp --sparse=always "$image" "$run_dir/camnode-pi.img"
    # Released here: QEMU and the hub must not inherit (and hold) it.
    exec 9>&-
}

# Runs "$@" inside the root being assembled (arm64, through qemu-user).
in_root() { chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }

assemble_image() {
    local out=$1 start=$SECONDS work
    log "assembling ${out##*/}: ${base_tar##*/} + ${camnode_deb##*/} + ${libcamera_deb##*/} + vimc.ko + deploy/pi-image"
    work=$(mktemp -d "$vm_cache/image.XXXXXX")
    root=$work/root
    mkdir "$root"
    tar -xf "$base_tar" -C "$root"
    # The kernel hooks below look at /proc to tell a chroot from a booted system.
    mount -t proc proc "$root/proc"
    mounted_proc=$root/proc
    cp -r --no-preserve=ownership deploy/pi-image/rootfs/. "$root/"
    chmod 0440 "$root/etc/sudoers.d/010-pi-nopasswd"

    # The packages, as a user installs them: dpkg runs their maintainer
    # scripts (camnode's postinst makes the camnode user, its state
    # directory, and enables the unit). Their dependencies are in the base;
    # should camnode have gained one, apt fetches it.
    cp "$libcamera_deb" "$camnode_deb" "$root/tmp/"
    if ! in_root dpkg -i "/tmp/${libcamera_deb##*/}" "/tmp/${camnode_deb##*/}" >"$work/dpkg.log" 2>&1; then
        log "dpkg reports missing dependencies; fetching them with apt"
        local resolv
        resolv=$(readlink "$root/etc/resolv.conf" || true)
        rm -f "$root/etc/resolv.conf"
        cp /etc/resolv.conf "$root/etc/resolv.conf"
        { in_root apt-get update -qq && in_root apt-get install -f -y -qq; } >>"$work/dpkg.log" 2>&1 ||
            { cat "$work/dpkg.log" >&2; die "installing ${camnode_deb##*/} into the image failed"; }
        in_root apt-get clean
        rm -rf "$root"/var/lib/apt/lists/*
        rm -f "$root/etc/resolv.conf"
        [ -z "$resolv" ] || ln -s "$resolv" "$root/etc/resolv.conf"
    fi
    rm -f "$root/tmp/"*.deb

    install -D -m 0644 "$vimc_ko" "$root/lib/modules/$krel/updates/vimc.ko"
    in_root depmod "$krel"

    # pi administers the node over SSH with a key from the card
    # (authorized_keys), as deploy/fleet.sh expects; it has no password.
    in_root adduser --quiet --disabled-password --gecos "camnode administrator" pi
    local group
    for group in sudo video gpio adm systemd-journal; do
        in_root adduser --quiet pi "$group"
    done
    in_root systemctl enable --quiet systemd-networkd.service systemd-resolved.service camnode-card-setup.service
    # systemd's first-boot wizard would wait for a key on the console of a
    # Pi nobody watches; camnode-card-setup is this image's first boot.
    in_root systemctl mask --quiet systemd-firstboot.service
    # The card's last known time (systemd-timesyncd moves the clock forward
    # to it at boot): the time the image was made, until the card knows better.
    mkdir -p "$root/var/lib/systemd/timesync"
    touch "$root/var/lib/systemd/timesync/clock"
    # What makes each card its own is made on its first boot: the machine id
    # (systemd), the SSH host keys (camnode-card-setup).
    rm -f "$root"/etc/ssh/ssh_host_*
    echo uninitialized >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"

    # The boot partition as Debian's raspi-firmware writes it on a kernel
    # update: firmware, kernel, initrd, device trees, config.txt and
    # cmdline.txt (from /etc/default/raspi-firmware and raspi-extra-cmdline).
    in_root env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware "$krel" >"$work/firmware.log" 2>&1 ||
        { cat "$work/firmware.log" >&2; die "raspi-firmware's kernel hook failed"; }
    cp -r --no-preserve=ownership deploy/pi-image/boot/. "$root/boot/firmware/"
    umount "$mounted_proc"
    mounted_proc=

    local fat=$work/boot.img ext=$work/root.img root_mib=$((image_mib - 1 - boot_mib))
    mkfs.vfat -F 32 -n RASPIFIRM -C "$fat" $((boot_mib * 1024)) >/dev/null
    MTOOLS_SKIP_CHECK=1 mcopy -s -p -m -i "$fat" "$root"/boot/firmware/* ::/
    rm -rf "${root:?}"/boot/firmware/*
    truncate -s "${root_mib}M" "$ext"
    mkfs.ext4 -q -F -L RASPIROOT -d "$root" "$ext"
    rm -rf "$root"

    truncate -s "${image_mib}M" "$out.part"
    sfdisk --quiet "$out.part" <<EOF
label: dos
start=1MiB, size=${boot_mib}MiB, type=c, bootable
start=$((1 + boot_mib))MiB, type=83
EOF
    dd if="$fat" of="$out.part" bs=1M seek=1 conv=notrunc,sparse status=none
    dd if="$ext" of="$out.part" bs=1M seek=$((1 + boot_mib)) conv=notrunc,sparse status=none
    mv "$out.part" "$out"
    rm -rf "$work"
    log "image assembled in $((SECONDS - start)) s: $out ($(du -h "$out" | cut -f1) used of ${image_mib} MiB)"
}

# --- the emulated Pi -------------------------------------------------------------

ssh_key=$vm_cache/ssh/id_ed25519
ssh_opts=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5
    -o BatchMode=yes -o ServerAliveInterval=5 -o ServerAliveCountMax=3)

ensure_ssh_key() {
    [ -f "$ssh_key" ] && return
    mkdir -p "${ssh_key%/*}"
    ssh-keygen -q -t ed25519 -N '' -C "camnode pi-vm" -f "$ssh_key"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Commands on the guest share one SSH connection per boot (opened by
# wait_ssh): a new one costs the emulated Pi seconds of CPU.
vm_ssh() { ssh -i "$ssh_key" "${ssh_opts[@]}" -o "ControlPath=$vm_dir/ssh-$vm_name" -p "$ssh_port" pi@127.0.0.1 "$@"; }
# Runs the guest shell condition $2 every half second until it holds, for
# at most $1 seconds; fails if it never did.
vm_wait() { vm_ssh timeout "$1" sh -c "$(printf %q "until $2; do sleep 0.5; done")"; }

# A card flashed with the image: a sparse copy, grown to the card's size.
# The emulated Pi has no clock that survives power-off (neither has a Pi)
# and no NTP server to reach here, so its clock starts where the card's
# last known time says, as systemd-timesyncd keeps it: the flashing sets
# that to now.
flash_card() {
    card=$1
    cp --sparse=always "$image" "$card"
    truncate -s "$card_size" "$card"
    debugfs -w -R "set_inode_field /var/lib/systemd/timesync/clock mtime @$(date +%s)" \
        "$card?offset=$(((1 + boot_mib) * 1048576))" >/dev/null 2>&1 ||
        die "cannot set the clock file of $card"
}

# Files on the card's boot partition (FAT, from 1 MiB), as a PC writes them.
card_put() { MTOOLS_SKIP_CHECK=1 mcopy -o -i "$card@@1M" "$1" "::/$2"; }
card_get() { MTOOLS_SKIP_CHECK=1 mcopy -o -n -i "$card@@1M" "::/$1" "$2"; }

# The QEMU command that boots $card, in qemu_cmd, with the guest's serial
# console on the chardev $1 and its SSH port on 127.0.0.1:$ssh_port. What the
# Pi's firmware would do is done here: the kernel and initrd that config.txt
# names, the Pi 3's device tree and cmdline.txt come from the boot
# partition. Three additions for QEMU only: modules-load=vimc loads the
# virtual camera; module_blacklist=cdc_subset leaves QEMU's usb-net (which
# has the Linux USB gadget's ids) to cdc_ether, which cdc_subset otherwise
# races for it on a first boot (and, winning, takes its data interface under
# a made-up MAC address); and systemd.watchdog_sec=0 keeps systemd from arming the
# Pi's hardware watchdog (the image's RuntimeWatchdogSec=): QEMU 7.2
# emulates no watchdog timer, and its power-management block resets the
# machine at once on the write that arms it (hw/misc/bcm2835_powermgt.c,
# PM_RSTC), which ends QEMU (-no-reboot).
qemu_command() {
    local console=$1 boot=$vm_dir/boot kernel initrd
    rm -rf "$boot"
    mkdir -p "$boot"
    card_get config.txt "$boot/config.txt"
    kernel=$(sed -n 's/^kernel=//p' "$boot/config.txt" | tail -1)
    initrd=$(sed -n 's/^initramfs \([^ ]*\).*/\1/p' "$boot/config.txt" | tail -1)
    if [ -z "$kernel" ] || [ -z "$initrd" ]; then
        die "the card's config.txt names no kernel or initramfs"
    fi
    card_get "$kernel" "$boot/kernel"
    card_get "$initrd" "$boot/initrd"
    card_get bcm2837-rpi-3-b.dtb "$boot/pi3.dtb"
    card_get cmdline.txt "$boot/cmdline.txt"
    # The mini UART (ttyS1, the console cmdline.txt names) is QEMU's second
    # serial port; the first is the PL011, which the Pi 3 wires to Bluetooth.
    # The network device sits on the USB controller's one port itself (with
    # no port given, QEMU would put a hub in between).
    # shellcheck disable=SC2054 # the commas are QEMU's option syntax
    qemu_cmd=(qemu-system-aarch64 -M raspi3b -kernel "$boot/kernel" -initrd "$boot/initrd" -dtb "$boot/pi3.dtb"
        -append "$(tr -d '\n' <"$boot/cmdline.txt") modules-load=vimc module_blacklist=cdc_subset systemd.watchdog_sec=0" -drive "if=sd,format=raw,file=$card"
        -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$ssh_port-:22" -device usb-net,netdev=net0,id=nic,bus=usb-bus.0,port=1
        -serial null -serial "$console" -display none -no-reboot)
}

# Boots the card in the background; $1 names its console log. QEMU's
# monitor answers on $qmp (QMP), for the LED checker.
vm_boot() {
    local name=$1
    vm_name=$name
    rm -f "$vm_dir"/nic-*
    qemu_command "file:$vm_dir/$name-console.log"
    qmp=$vm_dir/qmp.sock
    rm -f "$qmp"
    "${qemu_cmd[@]}" -monitor none -qmp "unix:$qmp,server=on,wait=off" >"$vm_dir/$name-qemu.log" 2>&1 &
    vm_pid=$!
    vm_started=$(date +%s.%N)
    log "$name: QEMU raspi3b started (pid $vm_pid; console: $vm_dir/$name-console.log)"
}

vm_alive() { kill -0 "$vm_pid" 2>/dev/null; }

# The guest's USB network device, watched on its console. Two things go
# wrong under QEMU 7.2 (more often when this machine is busy): its dwc2 model
# now and then loses a race with the kernel's driver around a port reset, and
# the device is never enumerated; or it is enumerated and no driver takes it.
# As on a Pi with a USB adapter, replugging it brings it up: done when the
# controller has been up for 30 s without a device, or the device has been
# there for 150 s without cdc_ether (udev loads the driver late in a first
# boot under emulation), and counted in $vm_dir/replugs. Only what the
# console says since the last unplug counts.
nic_check() {
    local recent state patience since
    recent=$(awk '/USB disconnect/ { text = ""; next } { text = text $0 "\n" } END { printf "%s", text }' \
        "$vm_dir/$vm_name-console.log" 2>/dev/null) || return 0
    grep -aq "register 'cdc_ether'" <<<"$recent" && return 0
    if grep -aq 'New USB device found' <<<"$recent"; then
        state=found patience=150
    elif grep -aqs 'DWC OTG Controller' "$vm_dir/$vm_name-console.log"; then
        state=missing patience=30
    else
        return 0
    fi
    # Since when it has been so, kept in a file: this runs in subshells too.
    [ -f "$vm_dir/nic-$state" ] || date +%s >"$vm_dir/nic-$state"
    since=$(cat "$vm_dir/nic-$state")
    [ $(($(date +%s) - since)) -ge $patience ] || return 0
    log "$vm_name: the USB network device is $state and has no network after $patience s (QEMU's dwc2); replugging it"
    check replug "$qmp"
    echo "$vm_name" >>"$vm_dir/replugs"
    rm -f "$vm_dir"/nic-*
}

# Pulls the plug: QEMU is killed, the guest gets no shutdown. What the guest
# wrote to the card is on it (QEMU writes through to the image file); what
# it had only in memory is gone, as on a Pi.
vm_cut() {
    kill -KILL "$vm_pid" 2>/dev/null || true
    wait "$vm_pid" 2>/dev/null || true
    vm_pid=
    vm_ssh -O exit 2>/dev/null || true
}

# Waits until the guest answers on SSH, and keeps that connection for the
# commands that follow.
wait_ssh() {
    local deadline=$((SECONDS + ${1:-600}))
    until vm_ssh -f -N -o ControlMaster=yes </dev/null >/dev/null 2>&1; do
        vm_alive || { tail -30 "$vm_dir"/*-console.log >&2; die "QEMU exited before the guest answered on SSH"; }
        nic_check
        [ $SECONDS -lt $deadline ] || die "the guest did not answer on SSH within ${1:-600} s (console: $vm_dir)"
        sleep 2
    done
}

seconds_since() { python3 -c "import sys, time; print(round(time.time() - float(sys.argv[1]), 1))" "$1"; }

# --- `run` -------------------------------------------------------------------------

# Boots a card for a person: the console on this terminal (Ctrl-A X quits
# QEMU), SSH as pi on a local port. FILEs go on the boot partition as a
# person would put them there (camnode.toml, network.txt, authorized_keys);
# without an authorized_keys, the VM's own key is put there. The card
# (target/pi-vm/card.img) is kept between runs, like a real one; delete it
# to flash a fresh one.
run_vm() {
    ensure_image
    ensure_ssh_key
    vm_dir=$run_dir/run
    mkdir -p "$vm_dir"
    card=$run_dir/card.img
    if [ ! -f "$card" ] || [ "$image" -nt "$card" ]; then
        flash_card "$card"
        log "flashed $card from ${image##*/}"
    fi
    local file
    for file in "$@"; do
        card_put "$file" "${file##*/}"
    done
    [ -n "$(MTOOLS_SKIP_CHECK=1 mdir -b -i "$card@@1M" ::/ | grep -i authorized_keys || true)" ] ||
        card_put "$ssh_key.pub" authorized_keys
    ssh_port=${PI_VM_SSH_PORT:-2222}
    qemu_command mon:stdio
    log "booting; log in with: ssh -i $ssh_key -p $ssh_port pi@127.0.0.1   (quit QEMU: Ctrl-A X)"
    exec "${qemu_cmd[@]}"
}

# --- `test` ------------------------------------------------------------------------

check() { python3 scripts/pi-vm-check.py "$@"; }

# The x86 hub on this machine, which the guest reaches as 10.0.2.2. Each run
# of it writes its own journal; pi-vm-check.py hub merges them.
hub_runs=0
start_hub() {
    hub_runs=$((hub_runs + 1))
    "$hub_bin" hub --bind "tcp://127.0.0.1:$hub_port" --save "$vm_dir/hub" --jsonl "$vm_dir/hub-$hub_runs.jsonl" \
        --summary-json "$vm_dir/hub-$hub_runs.summary.json" 2>>"$vm_dir/hub.log" &
    hub_pid=$!
}
stop_hub() {
    kill -TERM "$hub_pid" 2>/dev/null || true
    wait "$hub_pid" 2>/dev/null || true
    hub_pid=
}

# Images the hubs have stored so far (repeats across hub runs included).
images_at_hub() { cat "$vm_dir"/hub-*.jsonl 2>/dev/null | grep -c '"kind":"jpg"' || true; }

# Waits for the hub to hold more than $1 images; prints the seconds since
# the VM was started when it does.
wait_image_after() {
    local before=$1 deadline=$((SECONDS + ${2:-600}))
    until [ "$(images_at_hub)" -gt "$before" ]; do
        vm_alive || { tail -30 "$vm_dir"/*-console.log >&2; die "QEMU exited before an image reached the hub"; }
        kill -0 "$hub_pid" 2>/dev/null || die "the hub exited: $(tail -3 "$vm_dir/hub.log")"
        nic_check
        [ $SECONDS -lt $deadline ] || die "no image reached the hub within ${2:-600} s (journal: ssh ... journalctl -u camnode)"
        sleep 0.2
    done
    seconds_since "$vm_started"
}

# The camnode unit's properties, as NAME=VALUE lines, and one of them.
unit_show() {
    local property args=()
    for property; do
        args+=(-p "$property")
    done
    vm_ssh systemctl show camnode "${args[@]}"
}
unit_prop() { sed -n "s/^$1=//p" <<<"$2"; }

# The card's spool as the power cut left it, read from outside, then
# checked file by file. Read as the next boot will find it: ext4 keeps what
# it last committed in its journal, which the kernel replays at mount (and
# the initramfs's fsck before), so the root partition is copied out of the
# card (sparse: a second or two) and its journal replayed there first; the
# card itself is left for the boot to recover. fsck's verdict is kept.
read_spool() {
    local out=$1 dir=$vm_dir/$1 root=$vm_dir/root-after-cut.img offset=$(((1 + boot_mib) * 1048576)) status=0
    rm -rf "$dir"
    mkdir -p "$dir"
    cp --sparse=always "$card" "$root"
    fallocate --collapse-range --offset 0 --length "$offset" "$root" 2>/dev/null || {
        # A file system without collapse-range: copy the slow way.
        dd if="$card" of="$root" bs=1M skip=$((offset / 1048576)) conv=sparse status=none
    }
    e2fsck -p "$root" >"$dir.fsck.log" 2>&1 || status=$?
    # 0: clean; 1: errors corrected (as the initramfs's fsck.repair=yes would)
    [ $status -le 1 ] || die "fsck found errors it cannot correct after the power cut: $(cat "$dir.fsck.log")"
    debugfs -R "rdump /var/lib/camnode/spool $dir" "$root" >/dev/null 2>&1 ||
        die "debugfs could not read the spool after the power cut"
    rm -f "$root"
    check spool "$dir/spool" >"$vm_dir/$out.json"
}

# The same package with a higher version: an upgrade as dpkg sees it.
newer_deb() {
    local dir=$vm_dir/newer version
    rm -rf "$dir"
    mkdir -p "$dir/pkg"
    dpkg-deb --raw-extract "$camnode_deb" "$dir/pkg"
    version=$(sed -n 's/^Version: //p' "$dir/pkg/DEBIAN/control")+pivm1
    sed -i "s/^Version: .*/Version: $version/" "$dir/pkg/DEBIAN/control"
    mkdir "$dir/debs"
    dpkg-deb --root-owner-group -Zxz --build "$dir/pkg" "$dir/debs/camnode_${version}_arm64.deb" >/dev/null
    rm -rf "$dir/pkg"
    newer_version=$version
}

test_vm() {
    local json_out=${1:-}
    local test_start=$SECONDS
    ensure_image
    ensure_ssh_key
    hub_bin=${CAMNODE_HOST_BIN:-}
    if [ -z "$hub_bin" ]; then
        cargo build --quiet --bin camnode
        hub_bin=$repo/target/debug/camnode
    fi
    need_packages qemu-system-arm mtools e2fsprogs openssh-client python3
    vm_dir=$run_dir/test
    rm -rf "$vm_dir"
    mkdir -p "$vm_dir"
    ssh_port=$(free_port)
    hub_port=$(free_port)
    local summary=$vm_dir/summary.env
    : >"$summary"
    note() { printf '%s=%s\n' "$1" "$2" >>"$summary"; }

    # --- 1. a freshly flashed card, first boot ---
    # The card is a time-lapse node: every frame goes through motion
    # detection and JPEG to the hub, and waits in the spool while the hub is
    # away. (vimc's test patterns hold nothing that moves: every change of
    # them is the whole frame at once, which the detector takes for light.
    # So motion events cannot be staged here; tests/libcamera_virtual.rs
    # covers them on the host.) Whatever size is asked for, libcamera's vimc
    # pipeline keeps the sensor at 1920x1080 and scales down, and vimc's
    # kernel thread debayers every frame pixel by pixel: about 1.5 s of an
    # emulated core per frame. The smallest size keeps what camnode adds
    # (conversion, detection, JPEG) small beside it.
    flash_card "$vm_dir/card.img"
    cat >"$vm_dir/camnode.toml" <<TOML
# The test's per-card settings, as a person would put them on the card.
[node]
name = "pivm"
heartbeat = 5.0

[capture]
source = "libcamera"
size = "160x120"

[encode]
send = "all"

[transport]
hub = "tcp://10.0.2.2:$hub_port"
# Room for a minute of frames: with the hub away the sender thread spools
# them (an fsync each), and only a full queue makes the frame path spool
# (Sender::offer), which on the emulated SD card under a loaded machine can
# hold it past the watchdog.
queue = 64

[spool]
keep = "all"

[gpio]
led_pin = $led_pin
TOML
    printf '%s\n' "# The test card's network settings." "hostname=camnode-vm" >"$vm_dir/network.txt"
    card_put "$vm_dir/camnode.toml" camnode.toml
    card_put "$vm_dir/network.txt" network.txt
    card_put "$ssh_key.pub" authorized_keys
    start_hub
    vm_boot boot1
    local first_image
    first_image=$(wait_image_after 0 900)
    log "boot 1 (first boot of a fresh card): first image at the hub ${first_image} s after power-on"
    note boot_to_first_image_s "$first_image"
    wait_ssh 120
    local boot_files
    boot_files=$(vm_ssh sudo ls /boot/firmware)
    [ "$(grep -c '\.applied$' <<<"$boot_files")" = 3 ] ||
        die "card-setup did not apply the card's 3 files; the boot partition has: $(tr '\n' ' ' <<<"$boot_files")"
    [ "$(vm_ssh hostname)" = camnode-vm ] || die "network.txt's hostname was not applied"

    # --- 2. capture through vimc, libcamera, dma-buf ---
    local machine
    machine=$(vm_ssh "tr -d '\\0' </proc/device-tree/model")
    note machine "$(jq_string "$machine")"
    # What the service has open: the V4L2 nodes of the camera (the driver
    # behind them, from sysfs), and the dma-bufs libcamera's allocator
    # exported from them, read in one go once it holds a video node.
    # (`camnode cameras` cannot look meanwhile: libcamera locks the media
    # device of a camera in use.)
    # shellcheck disable=SC2016 # expanded on the guest
    vm_wait 60 'systemctl is-active -q camnode && sudo ls -l /proc/$(systemctl show -p MainPID --value camnode)/fd | grep -q /dev/video' ||
        die "camnode.service is $(vm_ssh systemctl is-active camnode) and holds no video node"
    local fds dmabufs nodes
    # shellcheck disable=SC2016 # expanded on the guest
    fds=$(vm_ssh 'sudo ls -l /proc/$(systemctl show -p MainPID --value camnode)/fd')
    dmabufs=$(grep -c 'dmabuf' <<<"$fds" || true)
    nodes=$(grep -o '/dev/video[0-9]*' <<<"$fds" | sort -u | while read -r node; do
        vm_ssh "d=/sys/class/video4linux/${node#/dev/}; echo $node \$(basename \$(readlink \$d/device/driver)) \$(cat \$d/name)" </dev/null
    done)
    [ "$dmabufs" -gt 0 ] || die "camnode holds no dma-buf: $fds"
    grep -q '^/dev/video[0-9]* vimc ' <<<"$nodes" || die "camnode has no vimc video node open: $nodes; its descriptors: $fds"
    note capture "$(python3 -c 'import json, sys; print(json.dumps({"driver": "vimc", "via": "libcamera (vimc pipeline)",
        "buffers": "dma-buf (FrameBufferAllocator)", "dmabuf_fds": int(sys.argv[1]),
        "video_nodes": [l.split(" ", 2)[0] + " " + l.split(" ", 2)[2] for l in sys.argv[2].splitlines()]}))' \
        "$dmabufs" "$nodes")"
    log "capture: $dmabufs dma-buf descriptors; $(tr '\n' ';' <<<"$nodes")"

    # --- 3. the status LED, running ---
    check led "$qmp" --pin "$led_pin" --seconds 10 --until running --timeout 90 >"$vm_dir/led-running.json"
    log "LED with the hub up: $(cat "$vm_dir/led-running.json")"

    # --- 4. upgrade over the running service ---
    newer_deb
    vm_ssh "echo '# edited on this Pi' | sudo tee -a /etc/camnode/camnode.toml >/dev/null"
    local before after fleet
    before=$(unit_prop MainPID "$(unit_show MainPID)")
    echo "pi@127.0.0.1 arm64" >"$vm_dir/hosts"
    fleet=$(FLEET_SSH_OPTS="-i $ssh_key -o Port=$ssh_port ${ssh_opts[*]}" deploy/fleet.sh "$vm_dir/hosts" \
        --debs "$vm_dir/newer/debs" --timeout 300 --log-dir "$vm_dir/fleet" 2>&1) ||
        { echo "$fleet" >&2; die "deploy/fleet.sh failed to upgrade the VM"; }
    after=$(unit_prop MainPID "$(unit_show MainPID)")
    [ "$(vm_ssh dpkg-query -W camnode | cut -f2)" = "$newer_version" ] || die "camnode $newer_version is not installed"
    vm_ssh grep -qx "'# edited on this Pi'" /etc/camnode/camnode.toml || die "the upgrade lost the edited config"
    [ "$before" != "$after" ] || die "the upgrade did not restart camnode (main pid still $before)"
    note upgrade "$(python3 -c 'import json, sys; print(json.dumps({"to": sys.argv[1], "config_kept": True,
        "restarted": True, "fleet": sys.argv[2].strip()}))' "$newer_version" "$(grep ' ok' <<<"$fleet" | tail -1)")"
    log "upgrade: $fleet"

    # --- 5. the watchdog ---
    # Times on the guest's monotonic clock: the SIGSTOP, systemd's watchdog
    # timeout in the journal, the new process's start and its READY=1.
    state=$(unit_show MainPID NRestarts WatchdogUSec RestartUSec)
    pid=$(unit_prop MainPID "$state")
    local stopped_at timeout_at restarted
    stopped_at=$(vm_ssh "cut -d' ' -f1 /proc/uptime && sudo kill -STOP $pid")
    # shellcheck disable=SC2016 # expanded on the guest
    vm_wait 180 '[ "$(systemctl show -p MainPID --value camnode)" != '"$pid"' ] && systemctl is-active -q camnode' ||
        die "camnode was not restarted within 180 s of SIGSTOP"
    timeout_at=$(vm_ssh "journalctl -u camnode -o short-monotonic | grep 'Watchdog timeout' | tail -1" |
        sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p')
    [ -n "$timeout_at" ] || die "systemd's journal shows no watchdog timeout"
    local after_state
    after_state=$(unit_show NRestarts ExecMainStartTimestampMonotonic ActiveEnterTimestampMonotonic)
    restarted=$(($(unit_prop NRestarts "$after_state") - $(unit_prop NRestarts "$state")))
    note watchdog_restarts "$restarted"
    note watchdog "$(python3 - "$stopped_at" "$timeout_at" "$after_state" "$state" <<'PY'
import json, re, sys
stopped, timeout = float(sys.argv[1]), float(sys.argv[2])
props = dict(l.split("=", 1) for l in (sys.argv[3] + "\n" + sys.argv[4]).splitlines() if "=" in l)
def seconds(span):  # systemd's "20s", "1min 30s", "500ms"
    units = {"min": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(min|ms|s)", span))
print(json.dumps({
    "watchdog_sec": seconds(props["WatchdogUSec"]), "restart_sec": seconds(props["RestartUSec"]),
    "stop_to_kill_s": round(timeout - stopped, 1),
    "stop_to_restart_s": round(int(props["ExecMainStartTimestampMonotonic"]) / 1e6 - stopped, 1),
    "stop_to_ready_s": round(int(props["ActiveEnterTimestampMonotonic"]) / 1e6 - stopped, 1)}))
PY
)"
    log "watchdog: $(tail -1 "$summary")"

    # --- 3b. LED with the hub gone; 6a. a power cut while spooling ---
    stop_hub
    # shellcheck disable=SC2016 # expanded on the guest
    vm_wait 60 '[ -n "$(sudo ls /var/lib/camnode/spool)" ]' || die "nothing was spooled within 60 s of the hub stopping"
    # (A motion event the restarted node saw at start-up may still be lit.)
    check led "$qmp" --pin "$led_pin" --seconds 8 --until trouble --timeout 90 >"$vm_dir/led-trouble.json"
    log "LED with the hub down: $(cat "$vm_dir/led-trouble.json")"
    # shellcheck disable=SC2016 # expanded on the guest
    vm_wait 120 '[ "$(sudo find /var/lib/camnode/spool -name "*.msg" | wc -l)" -ge 20 ]' ||
        die "fewer than 20 messages spooled in 120 s with the hub down"
    note service_active "\"$(vm_ssh systemctl is-active camnode)\""
    note rss_kb "$(vm_ssh "sudo awk '/^VmRSS:/ { print \$2 }' /proc/\$(systemctl show -p MainPID --value camnode)/status")"
    vm_cut
    read_spool spool-cut1
    log "power cut 1 (hub down, spooling): $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(len(d["messages"]), "whole messages spooled,", len(d["damaged"]), "damaged,", len(d["unfinished"]), "unfinished")' "$vm_dir/spool-cut1.json")"

    # --- 6b. a power cut while the hub acknowledges the backlog ---
    start_hub
    local at_cut
    at_cut=$(images_at_hub)
    vm_boot boot2
    note boot2_to_first_image_s "$(wait_image_after "$at_cut" 600)"
    # Cut once a quarter of the backlog is through.
    local backlog
    backlog=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["messages"]))' "$vm_dir/spool-cut1.json")
    until [ $(($(images_at_hub) - at_cut)) -ge $((backlog / 4)) ]; do
        vm_alive || die "QEMU exited during boot 2"
        sleep 0.2
    done
    vm_cut
    read_spool spool-cut2
    log "power cut 2 (hub acknowledging): $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(len(d["messages"]), "whole messages still spooled,", len(d["damaged"]), "damaged")' "$vm_dir/spool-cut2.json")"

    # --- boot 3: everything delivered ---
    at_cut=$(images_at_hub)
    vm_boot boot3
    note boot3_to_first_image_s "$(wait_image_after "$at_cut" 600)"
    # Until every whole message either cut left on the card is at the hub.
    local deadline=$((SECONDS + 300))
    until check hub "$vm_dir"/hub-*.jsonl >"$vm_dir/hub.json" &&
        check missing "$vm_dir/spool-cut1.json" "$vm_dir/hub.json" >"$vm_dir/missing-cut1.json" &&
        check missing "$vm_dir/spool-cut2.json" "$vm_dir/hub.json" >"$vm_dir/missing-cut2.json" &&
        [ "$(cat "$vm_dir/missing-cut1.json" "$vm_dir/missing-cut2.json")" = $'[]\n[]' ]; do
        vm_alive || die "QEMU exited during boot 3"
        [ $SECONDS -lt $deadline ] || break
        sleep 2
    done
    # Everything is at the hub (or the summary says what is not): the power
    # goes as it went before.
    vm_cut
    stop_hub
    check hub "$vm_dir"/hub-*.jsonl >"$vm_dir/hub.json"
    check missing "$vm_dir/spool-cut1.json" "$vm_dir/hub.json" >"$vm_dir/missing-cut1.json"
    check missing "$vm_dir/spool-cut2.json" "$vm_dir/hub.json" >"$vm_dir/missing-cut2.json"
    test_summary "$json_out" $((SECONDS - test_start))
}

jq_string() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }

# Checks every result and writes the summary.
test_summary() {
    local json_out=$1 seconds=$2
    python3 - "$vm_dir" "$json_out" "$seconds" <<'PY'
import json, sys
from pathlib import Path

d, out, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
notes = {}
for line in (d / "summary.env").read_text().splitlines():
    key, _, value = line.partition("=")
    notes[key] = json.loads(value)
hub = json.loads((d / "hub.json").read_text())
running = json.loads((d / "led-running.json").read_text())
trouble = json.loads((d / "led-trouble.json").read_text())
cuts = [json.loads((d / f"spool-cut{i}.json").read_text()) for i in (1, 2)]
fsck = [(d / f"spool-cut{i}.fsck.log").read_text().strip().splitlines() for i in (1, 2)]
missing = [json.loads((d / f"missing-cut{i}.json").read_text()) for i in (1, 2)]
bad = sum(json.loads(p.read_text()).get("bad", 0) for p in d.glob("hub-*.summary.json"))
summary = {
    "machine": notes["machine"],
    "service_active": notes["service_active"] == "active",
    "capture": notes["capture"],
    "frames_delivered": hub["images"],
    "frames_scored_by_motion_detection": hub["scored_images"],
    "led_toggles": running["toggles"] + trouble["toggles"],
    "led_patterns": {"hub_up": running["pattern"], "hub_down": trouble["pattern"]},
    "watchdog_restarts": notes["watchdog_restarts"],
    "watchdog": notes["watchdog"],
    "power_cut_lost": len(missing[0]) + len(missing[1]),
    "power_cuts": [
        {"when": "spooling, hub down", "spooled": len(cuts[0]["messages"]), "damaged": len(cuts[0]["damaged"]),
         "unfinished": len(cuts[0]["unfinished"]), "lost": len(missing[0]), "fsck": fsck[0]},
        {"when": "hub acknowledging the backlog", "still_spooled": len(cuts[1]["messages"]),
         "damaged": len(cuts[1]["damaged"]), "unfinished": len(cuts[1]["unfinished"]), "lost": len(missing[1]),
         "fsck": fsck[1]},
    ],
    "corrupt_delivered": len(hub["broken_images"]) + bad,
    "upgrade": notes["upgrade"],
    "boot_to_first_image_s": notes["boot_to_first_image_s"],
    "later_boots_to_first_image_s": [notes["boot2_to_first_image_s"], notes["boot3_to_first_image_s"]],
    "rss_kb": notes["rss_kb"],
    "usb_replugs": len((d / "replugs").read_text().split()) if (d / "replugs").exists() else 0,
    "test_s": seconds,
    "note": "times and CPU are those of QEMU's emulated Pi 3 (TCG) on this x86 machine, not of a Pi",
}
text = json.dumps(summary, indent=2)
print(text)
if out:
    Path(out).write_text(text + "\n")
problems = []
if "Raspberry Pi 3" not in summary["machine"]:
    problems.append(f"machine is {summary['machine']!r}")
if not summary["service_active"]:
    problems.append("camnode.service was not active")
if summary["frames_delivered"] == 0:
    problems.append("no frame reached the hub")
if summary["frames_scored_by_motion_detection"] == 0:
    problems.append("no image at the hub carries the motion detector's score")
if running["pattern"] != "running" or trouble["pattern"] != "trouble":
    problems.append(f"LED showed {running['pattern']!r} with the hub up and {trouble['pattern']!r} with it down")
watchdog = notes["watchdog"]
if summary["watchdog_restarts"] < 1:
    problems.append("the watchdog did not restart camnode")
# systemd's own timers run late on a loaded emulated Pi by a second or two.
if watchdog["stop_to_restart_s"] > watchdog["watchdog_sec"] + watchdog["restart_sec"] + 3:
    problems.append(f"camnode was restarted {watchdog['stop_to_restart_s']} s after it hung, later than WatchdogSec + RestartSec")
if summary["power_cut_lost"]:
    problems.append(f"{summary['power_cut_lost']} spooled messages never reached the hub: {missing}")
if summary["corrupt_delivered"]:
    problems.append(f"damaged images delivered: {hub['broken_images']}, hub bad count {bad}")
if problems:
    sys.exit("pi-vm.sh: error: " + "; ".join(problems))
PY
}

# --- main --------------------------------------------------------------------------

# What a run leaves behind when it stops, on success or not: the image
# root's /proc mount, QEMU, the hub.
mounted_proc=
vm_pid=
hub_pid=
cleanup() {
    [ -z "$mounted_proc" ] || umount "$mounted_proc" 2>/dev/null || true
    [ -z "$vm_pid" ] || vm_cut
    [ -z "$hub_pid" ] || stop_hub
}
trap cleanup EXIT

command=${1:-}
[ $# -gt 0 ] && shift
need_packages qemu-user-static mmdebstrap arch-test dosfstools mtools e2fsprogs fdisk \
    gcc-aarch64-linux-gnu make libelf1 libssl3 xz-utils binutils-aarch64-linux-gnu
register_binfmt qemu-aarch64
case $command in
image)
    ensure_image
    echo "$run_dir/camnode-pi.img"
    ;;
run) run_vm "$@" ;;
test)
    json=
    while [ $# -gt 0 ]; do
        case $1 in
        --json) json=${2:?--json needs a file}; shift ;;
        *) die "unknown test option '$1'" ;;
        esac
        shift
    done
    test_vm "$json"
    ;;
*) die "usage: scripts/pi-vm.sh image | run [FILE...] | test [--json FILE]" ;;
esac
