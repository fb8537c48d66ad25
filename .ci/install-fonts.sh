#!/usr/bin/env bash
# A Japanese font for the probability plots' CJK test (the plots fall back without one).
# Idempotent; needs root.
set -euo pipefail
if dpkg-query -W -f='${Status}' fonts-ipafont-gothic 2>/dev/null | grep -q "install ok installed"; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || true
apt-get install -y -qq --no-install-recommends fonts-ipafont-gothic
