#!/usr/bin/env bash
# Install Debian's chromium for the browser tests (tests/test_explorer_browser.py,
# tests/test_report_workflow.py), driven by playwright with
# executable_path=/usr/bin/chromium: no browser is downloaded. Idempotent; needs root.
set -euo pipefail
source "$(dirname "$0")/apt-install.sh"
apt_install install-chromium chromium
