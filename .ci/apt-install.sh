#!/usr/bin/env bash
# apt_install LABEL PACKAGE...: install the Debian packages that are missing, for the
# test setup (.ci/install-slurm.sh, .ci/install-chromium.sh). Idempotent: does nothing
# when every package is already installed. Needs root. Sourced, not run.

apt_install() {
    local label=$1
    shift
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "$label: already installed: $*"
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "$label: need root to install: ${missing[*]}" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    echo "$label: installing ${missing[*]}"
    _apt_retry "$label" apt-get update -q
    # policy-rc.d keeps the packages' init scripts from starting daemons during the
    # install: the tests start their own, with their own configuration.
    local policy=/usr/sbin/policy-rc.d created_policy=0 status=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    _apt_retry "$label" apt-get install -y -q --no-install-recommends "${missing[@]}" || status=$?
    [ "$created_policy" = 1 ] && rm -f "$policy"
    [ "$status" = 0 ] && echo "$label: done"
    return "$status"
}

# Retry: a mirror hiccup or a dpkg lock held for a moment should not fail CI.
_apt_retry() {
    local label=$1 attempt
    shift
    for attempt in 1 2 3; do
        "$@" && return 0
        echo "$label: '$*' failed (attempt $attempt), retrying" >&2
        sleep 10
    done
    "$@"
}
