#!/usr/bin/env bash
# Prints the path of a Python interpreter that has the real imagezmq peer and
# its companions (tests/python/requirements.txt) installed, creating the venv
# first if needed, so that tests and benchmarks can do
#
#     PY=$(scripts/python-env.sh)
#
# The venv lives in ~/.cache/camnode/venv-<key>, where <key> hashes the
# requirements file together with the interpreter's version and machine, so a
# changed pin or a different Python gets its own venv and an unchanged one is
# reused in milliseconds. It is built on Debian's /usr/bin/python3 rather than
# whatever `python3` is first on PATH (a pyenv shim on the dev machines): the
# system interpreter is the same on every machine of this kind, fresh or not,
# and is what a Raspberry Pi OS user has. Debian splits venv support into
# python3-venv, which is installed here when missing.
#
# stdout carries only the interpreter path (the last and only line); progress
# and pip's output go to stderr. Concurrent callers (parallel tests) are
# serialised with flock, and a venv counts as built only once its imports have
# been checked, so an interrupted build is rebuilt instead of half-used.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
requirements="$repo/tests/python/requirements.txt"
python=/usr/bin/python3
cache="${XDG_CACHE_HOME:-$HOME/.cache}/camnode"

log() { echo "python-env: $*" >&2; }

die() {
    log "error: $*"
    exit 1
}
# need_packages
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

# Debian's python3 ships without ensurepip; python3-venv brings it back.
ensure_system_venv() {
    if [[ -x "$python" ]] && "$python" -c 'import ensurepip, venv' 2>/dev/null; then
        return
    fi
    need_packages python3 python3-venv
    "$python" -c 'import ensurepip, venv' || die "python3-venv is installed but $python still cannot create venvs"
}

[[ -f "$requirements" ]] || die "requirements file $requirements not found"
ensure_system_venv

interpreter=$("$python" -c 'import platform, sys; print(sys.version.split()[0], platform.machine())')
key=$({ cat "$requirements"; echo "$interpreter"; } | sha256sum | cut -c1-16)
venv="$cache/venv-$key"
ready="$venv/.camnode-ready"

if [[ ! -f "$ready" ]]; then
    mkdir -p "$cache"
    exec 9>"$cache/venv-$key.lock"
    flock 9
    # Another caller may have finished the build while this one waited.
    if [[ ! -f "$ready" ]]; then
        started=$SECONDS
        log "creating $venv (Python $interpreter)"
        rm -rf "$venv"
        "$python" -m venv "$venv" >&2
        # --only-binary: a source build would need a compiler and minutes; a
        # missing wheel should fail loudly here instead.
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
            --only-binary=:all: -r "$requirements" >&2 ||
            die "pip could not install $requirements into $venv (is PyPI reachable?)"
        "$venv/bin/python" -c 'import cv2, imagezmq, numpy, zmq, selenium, prometheus_client' ||
            die "the packages installed into $venv do not import"
        echo "$interpreter" >"$ready"
        log "venv ready in $((SECONDS - started)) s"
    fi
    exec 9>&-
fi

echo "$venv/bin/python"
