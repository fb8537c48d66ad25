#!/usr/bin/env bash
# Install the Debian packages for the one-node Slurm test cluster (tests/slurm/cluster.sh).
# Idempotent; needs root.
set -euo pipefail
source "$(dirname "$0")/apt-install.sh"
apt_install install-slurm munge slurmctld slurmd slurm-client
