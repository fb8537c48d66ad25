#!/usr/bin/env bash
# Install Debian's chromium for the explorer's browser test (tests/test_explorer_browser.py,
# driven by playwright with executable_path=/usr/bin/chromium; no browser is downloaded).
# Idempotent: does nothing when it is already installed. Needs root.
set -euo pipefail

PACKAGES=(chromium)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-chromium: already installed: ${PACKAGES[*]}"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "install-chromium: need root to install: ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-chromium: installing ${missing[*]}"
# Retry: a mirror hiccup or a dpkg lock held for a moment should not fail CI.
retry() {
    local attempt
    for attempt in 1 2 3; do
        "$@" && return 0
        echo "install-chromium: '$*' failed (attempt $attempt), retrying" >&2
        sleep 10
    done
    "$@"
}
retry apt-get update -q
retry apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-chromium: done"
