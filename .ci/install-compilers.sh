#!/usr/bin/env bash
# Best effort: make clang available next to gcc, so that tests/test_c_sources.py compiles csrc/
# under both (strict C99, -Werror, with and without OpenMP). Called by .ci/run before the tests.
#
#   bash .ci/install-compilers.sh
#
# When clang is missing and we are root on a system with apt-get, it runs
# `apt-get install -y --no-install-recommends clang` (after `apt-get update` if the first try
# fails), each under a time limit (INSTALL_TIMEOUT seconds, default 90). It never fails the CI:
# no network, no root, no apt-get or a timeout only print a note, and the clang tests then skip.
# PYLLM_SKIP_COMPILER_INSTALL=1 turns it off. It always exits 0 and ends by listing the compilers.
set -u
LIMIT=${INSTALL_TIMEOUT:-90}  # three steps at most: CI stays well under 10 minutes

note() { echo "install-compilers: $*"; }

with_timeout() {  # run "$@" under the time limit when timeout(1) exists
    if command -v timeout >/dev/null 2>&1; then timeout "$LIMIT" "$@"; else "$@"; fi
}

try_install_clang() {
    if [ "${PYLLM_SKIP_COMPILER_INSTALL:-0}" = 1 ]; then
        note "clang not found; PYLLM_SKIP_COMPILER_INSTALL=1, not installing"; return
    fi
    if [ "$(id -u 2>/dev/null)" != 0 ]; then
        note "clang not found; not root, not installing (the clang tests will skip)"; return
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        note "clang not found; no apt-get here, not installing (the clang tests will skip)"; return
    fi
    note "clang not found; installing it with apt-get (limit ${LIMIT}s per step)"
    export DEBIAN_FRONTEND=noninteractive
    local apt=(apt-get -q -y -o Dpkg::Use-Pty=0)
    if with_timeout "${apt[@]}" install --no-install-recommends clang >/dev/null 2>&1 ||
       { # stale or missing package lists (fresh containers ship without them): update, retry
         with_timeout "${apt[@]}" update >/dev/null 2>&1 &&
         with_timeout "${apt[@]}" install --no-install-recommends clang >/dev/null 2>&1; }; then
        if command -v clang >/dev/null 2>&1; then note "installed clang"; return; fi
    fi
    note "could not install clang (no network, no package, or timed out); the clang tests will skip"
}

if ! command -v clang >/dev/null 2>&1; then
    try_install_clang
fi

for cc in gcc clang; do
    if command -v "$cc" >/dev/null 2>&1; then
        note "$cc: $("$cc" --version 2>/dev/null | { read -r line; echo "$line"; })"
    else
        note "$cc: not found"
    fi
done
exit 0
