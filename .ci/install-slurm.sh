#!/usr/bin/env bash
# Install the Debian packages for the one-node Slurm test cluster (tests/slurm/cluster.sh).
# Idempotent: does nothing when every package is already installed. Needs root.
set -euo pipefail

PACKAGES=(munge slurmctld slurmd slurm-client)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-slurm: already installed: ${PACKAGES[*]}"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "install-slurm: need root to install: ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-slurm: installing ${missing[*]}"
# Retry: a mirror hiccup or a dpkg lock held for a moment should not fail CI.
retry() {
    local attempt
    for attempt in 1 2 3; do
        "$@" && return 0
        echo "install-slurm: '$*' failed (attempt $attempt), retrying" >&2
        sleep 10
    done
    "$@"
}
retry apt-get update -q
# policy-rc.d keeps the packages' init scripts from starting daemons during the install:
# the test starts its own, with its own configuration.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
retry apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-slurm: done"
